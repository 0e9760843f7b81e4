"""The REST API (core/api/) through FastAPI's TestClient, against the tiny trained PatchCore.

Each test gets a private workspace (history, thumbnails, users, Qdrant copy) with the session's
models and dataset, so the API's writes never reach the other tests' workspace.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import TINY_CATEGORY, TINY_SIZE

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_detectors():
    """One model cache for the module: each test's app loads through it (a model load per test is slow)."""
    from core.api.detectors import DetectorCache

    return DetectorCache()


@pytest.fixture(scope="module")
def indexed_store(app_home: Path, app_index, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the session's similar-defect store (built by app_index) for this module to write into."""
    copy = tmp_path_factory.mktemp("api_qdrant") / "qdrant"
    shutil.copytree(app_home / "qdrant", copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


@pytest.fixture
def api_env(app_env: Path, indexed_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private workspace at tmp_path with the session's models and dataset; no API key."""
    home = tmp_path / "home"
    store = tmp_path / "qdrant"
    shutil.copytree(indexed_store, store)
    monkeypatch.setenv("INSPECT_HOME", str(home))
    monkeypatch.setenv("INSPECT_MODELS_DIR", str(app_env / "models"))
    monkeypatch.setenv("INSPECT_DATA_ROOT", str(app_env / "demo_data"))
    monkeypatch.setenv("INSPECT_RESULTS", str(tmp_path / "results.json"))
    monkeypatch.setenv("INSPECT_QDRANT_PATH", str(store))
    for name in ("INSPECT_API_KEY", "INSPECT_MAX_UPLOAD_MB", "INSPECT_API_MAX_BATCH", "INSPECT_MAX_PIXELS"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def make_client(api_env: Path, shared_detectors):
    """A factory of TestClients of a fresh app (settings such as upload limits are read when it is built)."""
    from fastapi.testclient import TestClient

    from core.api.app import create_api

    def make(host: str = "127.0.0.1") -> TestClient:
        return TestClient(create_api(host=host, load=shared_detectors.get))

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def _image(app_home: Path, kind: str, index: int = 0) -> Path:
    return sorted((app_home / "demo_data" / TINY_CATEGORY / "test" / kind).glob("*.png"))[index]


@pytest.fixture
def defect_png(app_home: Path) -> bytes:
    return _image(app_home, "crack").read_bytes()


@pytest.fixture
def good_png(app_home: Path) -> bytes:
    return _image(app_home, "good").read_bytes()


def _history_count(home: Path) -> int:
    from core.history import History

    return History(home / "history.sqlite").count()


def _post(client, data: bytes, name: str = "part.png", **fields):
    form = {"category": TINY_CATEGORY, **{k: str(v) for k, v in fields.items()}}
    return client.post("/v1/inspect", files={"image": (name, data, "image/png")}, data=form)


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert list(body) == ["error"] and body["error"], body
    assert "\n" not in body["error"]
    return body["error"]


# --------------------------------------------------------------------------------------------
# Health and documentation
# --------------------------------------------------------------------------------------------


def test_health_checks(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert f"patchcore/{TINY_CATEGORY}" in ready.json()["loadable"]


def test_readyz_is_503_without_any_model(make_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECT_MODELS_DIR", str(tmp_path / "no_models"))
    assert "no trained model" in _error(make_client().get("/readyz"), 503)


def test_openapi_documents_every_endpoint_with_response_models(client) -> None:
    spec = client.get("/openapi.json").json()
    expected = {
        ("post", "/v1/inspect"): "InspectResult",
        ("post", "/v1/inspect/batch"): "BatchResult",
        ("get", "/v1/models"): "ModelsOut",
        ("get", "/v1/inspections/{inspection_id}"): "InspectionOut",
        ("post", "/v1/inspections/{inspection_id}/feedback"): "InspectionOut",
        ("get", "/v1/similar/{inspection_id}"): "SimilarOut",
        ("get", "/healthz"): "Health",
        ("get", "/readyz"): "Ready",
    }
    for (method, path), model in expected.items():
        ok = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].endswith(f"/{model}"), (path, ok)
    inspect_errors = spec["paths"]["/v1/inspect"]["post"]["responses"]
    assert {"404", "409", "413", "422", "503"} <= set(inspect_errors)
    assert inspect_errors["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut")
    form = spec["components"]["schemas"]
    fields = next(s for name, s in form.items() if name.startswith("Body_inspect_one"))["properties"]
    assert set(fields) == {"image", "category", "model", "threshold", "overlay"}
    assert client.get("/docs").status_code == 200


# --------------------------------------------------------------------------------------------
# POST /v1/inspect
# --------------------------------------------------------------------------------------------


def _readme_section() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return text[text.index("## Inspect from the line") :]


def test_readme_curl_fields_are_the_form_fields(client) -> None:
    """The README's curl example names exactly the form fields the endpoint takes (and this file posts)."""
    curl = re.search(r"```bash\ncurl .*?```", _readme_section(), re.S).group(0)
    documented = set(re.findall(r"-F (\w+)=", curl))
    assert documented == {"image", "category", "model", "threshold", "overlay"}
    assert "/v1/inspect" in curl and "Authorization: Bearer" in curl


def test_inspect_records_and_answers_everything(client, api_env: Path, defect_png: bytes) -> None:
    before = _history_count(api_env)
    # Exactly the README's curl fields.
    response = client.post(
        "/v1/inspect",
        files={"image": ("part.png", defect_png, "image/png")},
        data={"category": TINY_CATEGORY, "model": "patchcore", "threshold": "0.5", "overlay": "true"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["verdict"] == "DEFECT" and body["score"] >= 0.5
    assert body["model"] == "patchcore" and body["category"] == TINY_CATEGORY
    assert re.fullmatch(r"v\d{4}", body["model_version"])
    assert body["threshold"] == 0.5 and body["raw_threshold"] > 0
    stats = body["map"]
    assert 0 <= stats["mean"] <= stats["max"] <= 1 and 0 < stats["defect_area"] <= 1
    regions = body["regions"]  # boxes in the image's pixels, highest first
    assert regions and [r["peak"] for r in regions] == sorted((r["peak"] for r in regions), reverse=True)
    for r in regions:
        assert 0 <= r["x"] < r["x"] + r["width"] <= TINY_SIZE and 0 <= r["y"] < r["y"] + r["height"] <= TINY_SIZE
        assert 0.5 <= r["peak"] <= stats["max"] + 1e-6
    assert _history_count(api_env) == before + 1
    assert body["point_id"] and body["similar"] == f"/v1/similar/{body['inspection_id']}"
    assert body["notes"] == []
    overlay = Image.open(io.BytesIO(base64.b64decode(body["overlay_png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (TINY_SIZE, TINY_SIZE)


def test_threshold_changes_the_verdict_and_is_recorded(client, api_env: Path, good_png: bytes) -> None:
    strict = _post(client, good_png, threshold=0).json()
    assert strict["verdict"] == "DEFECT" and strict["threshold"] == 0
    lenient = _post(client, good_png, threshold=1).json()
    assert lenient["score"] < 1 and lenient["verdict"] == "GOOD" and lenient["point_id"] is None
    assert lenient["similar"] is None and lenient["overlay_png_base64"] is None
    row = client.get(f"/v1/inspections/{lenient['inspection_id']}").json()
    assert row["threshold"] == 1 and row["verdict"] == "GOOD"


def test_damaged_history_is_a_note_not_an_error(client, api_env: Path, defect_png: bytes) -> None:
    api_env.mkdir(parents=True, exist_ok=True)
    (api_env / "history.sqlite").write_bytes(b"this is not a database" * 100)
    body = _post(client, defect_png).json()
    assert body["verdict"] == "DEFECT" and body["inspection_id"] is None
    assert any("not recorded" in note and "history" in note for note in body["notes"])
    assert "history" in _error(client.get("/v1/inspections/1"), 503)


def test_unavailable_store_is_a_note_not_an_error(client, api_env: Path, defect_png: bytes, monkeypatch) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")  # nothing listens there
    body = _post(client, defect_png).json()
    assert body["verdict"] == "DEFECT" and body["inspection_id"] and body["point_id"] is None
    assert any("queued" in note for note in body["notes"]), body["notes"]


# --------------------------------------------------------------------------------------------
# Bad input: 4xx with {"error": ...}
# --------------------------------------------------------------------------------------------


def test_not_an_image_and_truncated(client, api_env: Path, defect_png: bytes) -> None:
    before = _history_count(api_env)
    assert "not an image" in _error(_post(client, b"hello, I am text", name="fake.png"), 422)
    assert "truncated" in _error(_post(client, defect_png[: len(defect_png) // 2]), 422)
    assert "empty" in _error(_post(client, b""), 422).lower()
    assert _history_count(api_env) == before


def test_oversized_upload_is_413_while_reading(make_client, monkeypatch: pytest.MonkeyPatch, defect_png: bytes) -> None:
    monkeypatch.setenv("INSPECT_MAX_UPLOAD_MB", "0.2")
    client = make_client()
    message = _error(_post(client, b"\x89PNG" + b"0" * 400_000), 413)
    assert "0.2 MB" in message and "INSPECT_MAX_UPLOAD_MB" in message
    assert _post(client, defect_png).status_code == 200  # below the limit: fine


def _post_chunked(client, path: str, files: list[tuple[str, str, bytes | None]], *, filler: int):
    """A multipart POST sent without Content-Length, part by part: the category, then each file
    (its bytes, or for None ``filler`` chunks of 64 kB, as a client streaming a huge file would)."""
    boundary = "inspectboundary"

    def body():
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="category"\r\n\r\n{TINY_CATEGORY}'.encode()
        for field, name, data in files:
            yield f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'.encode()
            yield b"Content-Type: image/png\r\n\r\n"
            if data is not None:
                yield data
            else:
                for _ in range(filler):
                    yield b"0" * 64_000
        yield f"\r\n--{boundary}--\r\n".encode()

    return client.post(path, content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})


def test_oversized_chunked_upload_is_413_while_reading(make_client, monkeypatch: pytest.MonkeyPatch) -> None:
    """No Content-Length (chunked): the bytes are counted as they arrive and the upload is cut off."""
    monkeypatch.setenv("INSPECT_MAX_UPLOAD_MB", "0.2")
    client = make_client()
    # 6.4 MB if it were all read
    response = _post_chunked(client, "/v1/inspect", [("image", "big.png", None)], filler=100)
    assert "INSPECT_MAX_UPLOAD_MB" in _error(response, 413)


def test_too_many_pixels(client, monkeypatch: pytest.MonkeyPatch, defect_png: bytes) -> None:
    monkeypatch.setenv("INSPECT_MAX_PIXELS", "1000")
    assert "pixels" in _error(_post(client, defect_png), 422)


def test_busy_decoding_is_503_with_retry_after(client, monkeypatch: pytest.MonkeyPatch, defect_png: bytes) -> None:
    from core.data import image_io

    monkeypatch.setenv("INSPECT_LARGE_DECODE_PIXELS", "100")  # every image counts as large
    monkeypatch.setenv("INSPECT_MAX_LARGE_DECODES", "1")
    monkeypatch.setenv("INSPECT_DECODE_WAIT_S", "0")
    with image_io.large_decode_slot(10**9):  # another request is decoding a large image
        response = _post(client, defect_png)
    assert "busy" in _error(response, 503)
    assert response.headers["Retry-After"]
    assert _post(client, defect_png).status_code == 200  # the slot is free again


def test_unknown_category_and_model(client, defect_png: bytes) -> None:
    assert "unknown category 'nope'" in _error(_post(client, defect_png, category="nope"), 404)
    assert "unknown model 'resnet'" in _error(_post(client, defect_png, model="resnet"), 404)
    assert _error(_post(client, defect_png, category="../etc"), 422)


def test_untrained_model_says_how_to_train(client, defect_png: bytes) -> None:
    message = _error(_post(client, defect_png, model="efficientad"), 404)
    assert f"python -m core train --model efficientad --category {TINY_CATEGORY}" in message


@pytest.fixture
def broken_models(api_env: Path, app_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The session's models plus a 'leather' PatchCore whose metadata is damaged."""
    models = tmp_path / "models"
    shutil.copytree(app_home / "models", models)
    broken = models / "patchcore" / "leather" / "v0001"
    broken.mkdir(parents=True)
    (broken / "meta.json").write_text("{not json", encoding="utf-8")
    (broken / "model.pt").write_bytes(b"0" * 100)
    monkeypatch.setenv("INSPECT_MODELS_DIR", str(models))
    return models


def test_unreadable_model_is_409_and_listed(broken_models: Path, client, defect_png: bytes) -> None:
    message = _error(_post(client, defect_png, category="leather"), 409)
    assert "unreadable" in message and "retrain" in message
    listed = client.get("/v1/models").json()
    assert [(u["model"], u["category"]) for u in listed["unreadable"]] == [("patchcore", "leather")]
    assert "unreadable" in listed["unreadable"][0]["problem"]
    assert "patchcore/leather" in client.get("/readyz").json()["unreadable"]


def test_bad_threshold_and_missing_fields(client, defect_png: bytes) -> None:
    assert "between 0 and 1" in _error(_post(client, defect_png, threshold=1.5), 422)
    assert "between 0 and 1" in _error(_post(client, defect_png, threshold="nan"), 422)
    assert "threshold" in _error(_post(client, defect_png, threshold="high"), 422)
    assert "overlay" in _error(_post(client, defect_png, overlay="perhaps"), 422)
    missing = _error(client.post("/v1/inspect", data={"category": TINY_CATEGORY}), 422)
    assert missing.startswith("image:")
    assert "category" in _error(client.post("/v1/inspect", files={"image": ("a.png", defect_png)}), 422)


def test_unknown_endpoint_and_method(client) -> None:
    assert "no such endpoint" in _error(client.get("/v1/nothing"), 404)
    response = client.get("/v1/inspect")
    assert "GET is not allowed" in _error(response, 405) and response.headers["allow"] == "POST"


def test_ids_past_sqlites_range_are_422_not_500(client) -> None:
    huge = 2**63
    assert "inspection_id" in _error(client.get(f"/v1/inspections/{huge}"), 422)
    assert "inspection_id" in _error(client.get(f"/v1/similar/{huge}"), 422)
    assert "inspection_id" in _error(client.post(f"/v1/inspections/{huge}/feedback", json={"feedback": None}), 422)
    assert "there is no inspection" in _error(client.get(f"/v1/inspections/{huge - 1}"), 404)


def test_errors_name_no_server_path(make_client, api_env: Path, defect_png: bytes) -> None:
    from core.api.errors import without_server_paths

    message = _error(_post(make_client(), defect_png, model="efficientad"), 404)  # names the models folder in the core
    assert "/" + api_env.parts[1] not in message and "[server path]" in message
    api_env.mkdir(parents=True, exist_ok=True)
    (api_env / "users.json").write_text("{damaged", encoding="utf-8")
    message = _error(make_client().get("/v1/models"), 503)
    assert "users file" in message and str(api_env) not in message
    assert without_server_paths("no such endpoint: GET /v1/nothing") == "no such endpoint: GET /v1/nothing"
    assert without_server_paths(f"cannot read {api_env}/users.json.") == "cannot read [server path]."


def test_openapi_describes_the_security_configured(make_client, monkeypatch: pytest.MonkeyPatch) -> None:
    """A keyless loopback server asks for no Authorization; with a key every /v1 call needs it."""
    open_doc = make_client().get("/openapi.json").json()
    ops = [op for path, item in open_doc["paths"].items() if path.startswith("/v1") for op in item.values()]
    assert ops and not any("security" in op or "401" in op["responses"] for op in ops)
    assert "securitySchemes" not in open_doc.get("components", {})
    monkeypatch.setenv("INSPECT_API_KEY", "k" * 32)
    keyed = make_client().get("/openapi.json").json()
    ops = [op for path, item in keyed["paths"].items() if path.startswith("/v1") for op in item.values()]
    assert all(op["security"] and "401" in op["responses"] for op in ops)


# --------------------------------------------------------------------------------------------
# POST /v1/inspect/batch
# --------------------------------------------------------------------------------------------


def test_batch_is_one_forward_pass_with_a_result_or_error_per_file(
    client, api_env: Path, app_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.inference.detector import Detector

    calls: list[int] = []
    original = Detector.predict_batch

    def counting(self, images, **kwargs):
        calls.append(len(images))
        return original(self, images, **kwargs)

    client.get("/readyz")
    _post(client, _image(app_home, "good").read_bytes())  # load and warm the model before counting
    monkeypatch.setattr(Detector, "predict_batch", counting)
    before = _history_count(api_env)
    files = [
        ("images", ("good.png", _image(app_home, "good", 1).read_bytes(), "image/png")),
        ("images", ("notes.png", b"not an image at all", "image/png")),
        ("images", ("crack.png", _image(app_home, "crack", 1).read_bytes(), "image/png")),
    ]
    response = client.post("/v1/inspect/batch", files=files, data={"category": TINY_CATEGORY, "overlay": "true"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert calls == [2]  # ONE forward pass for the two readable files
    assert (body["inspected"], body["failed"]) == (2, 1)
    names = [item["file_name"] for item in body["items"]]
    assert names == ["good.png", "notes.png", "crack.png"]
    good, bad, crack = body["items"]
    assert bad["status"] == 422 and "not an image" in bad["error"] and bad["result"] is None
    assert crack["status"] == 200 and crack["result"]["verdict"] == "DEFECT" and crack["result"]["overlay_png_base64"]
    assert good["result"]["inspection_id"] and good["error"] is None
    assert _history_count(api_env) == before + 2


def test_batch_limits(make_client, monkeypatch: pytest.MonkeyPatch, defect_png: bytes) -> None:
    monkeypatch.setenv("INSPECT_API_MAX_BATCH", "2")
    monkeypatch.setenv("INSPECT_MAX_UPLOAD_MB", "0.2")
    client = make_client()
    three = [("images", (f"{i}.png", defect_png, "image/png")) for i in range(3)]
    assert "at most 2 images" in _error(client.post("/v1/inspect/batch", files=three, data={"category": TINY_CATEGORY}), 413)
    many = [("images", (f"{i}.png", b"\x89PNG", "image/png")) for i in range(40)]  # past the parser's own limit
    assert _error(client.post("/v1/inspect/batch", files=many, data={"category": TINY_CATEGORY}), 413) == (
        "a batch holds at most 2 images (INSPECT_API_MAX_BATCH)"
    )
    assert _error(client.post("/v1/inspect/batch", data={"category": TINY_CATEGORY}), 422).startswith("images:")


def test_an_oversized_file_in_a_batch_is_413_while_reading(
    make_client, monkeypatch: pytest.MonkeyPatch, defect_png: bytes
) -> None:
    """The per-file limit holds inside a batch too, while the bytes arrive (not after spooling them)."""
    monkeypatch.setenv("INSPECT_MAX_UPLOAD_MB", "0.2")
    client = make_client()
    # the big file: 1 MB, under the batch's 16 x 0.2 MB, over one image's 0.2 MB
    response = _post_chunked(
        client, "/v1/inspect/batch", [("images", "ok.png", defect_png), ("images", "big.png", None)], filler=16
    )
    assert "0.2 MB per image" in _error(response, 413)
    files = [("images", ("a.png", defect_png, "image/png")), ("images", ("b.png", defect_png, "image/png"))]
    assert client.post("/v1/inspect/batch", files=files, data={"category": TINY_CATEGORY}).status_code == 200


# --------------------------------------------------------------------------------------------
# GET /v1/models
# --------------------------------------------------------------------------------------------


def test_models_with_calibration_and_metrics(client, api_env: Path, defect_png: bytes) -> None:
    import json

    from core.settings import get_settings

    results = {"version": 1, "models": {f"patchcore/{TINY_CATEGORY}": {"image_auroc": 0.93, "n_test": 14}}, "retrieval": {}}
    get_settings().results_file.write_text(json.dumps(results), encoding="utf-8")
    _post(client, defect_png)  # loaded in this process now
    body = client.get("/v1/models").json()
    (entry,) = [m for m in body["models"] if (m["model"], m["category"]) == ("patchcore", TINY_CATEGORY)]
    assert entry["label"] == "PatchCore" and re.fullmatch(r"v\d{4}", entry["version"])
    assert entry["image_size"] == TINY_SIZE and entry["loaded"] is True
    cal = entry["calibration"]
    assert cal["image_min"] <= cal["image_threshold"] <= cal["image_max"] and "held out" in cal["source"]
    assert entry["metrics"]["image_auroc"] == pytest.approx(0.93) and entry["metrics"]["n_test"] == 14
    assert entry["metrics"]["pixel_auroc"] is None
    assert body["unreadable"] == [] and body["results_problem"] is None
    assert str(api_env) not in json.dumps(body)  # no server paths


def test_models_with_a_corrupt_results_file(client, api_env: Path) -> None:
    from core.settings import get_settings

    get_settings().results_file.write_text("{broken", encoding="utf-8")
    body = client.get("/v1/models").json()
    assert "unreadable" in body["results_problem"]
    assert all(m["metrics"] is None for m in body["models"])


# --------------------------------------------------------------------------------------------
# Inspections and feedback
# --------------------------------------------------------------------------------------------


def test_get_inspection_and_feedback(client, defect_png: bytes) -> None:
    iid = _post(client, defect_png).json()["inspection_id"]
    row = client.get(f"/v1/inspections/{iid}").json()
    assert row["id"] == iid and row["verdict"] == "DEFECT" and row["feedback"] is None
    assert "thumbnail_path" not in row
    given = client.post(f"/v1/inspections/{iid}/feedback", json={"feedback": "false_alarm", "comment": "dust on the lens"})
    assert given.status_code == 200
    assert (given.json()["feedback"], given.json()["comment"]) == ("false_alarm", "dust on the lens")
    assert client.get(f"/v1/inspections/{iid}").json()["feedback"] == "false_alarm"
    cleared = client.post(f"/v1/inspections/{iid}/feedback", json={"feedback": None}).json()
    assert cleared["feedback"] is None and cleared["comment"] is None


def test_feedback_and_inspection_errors(client, defect_png: bytes) -> None:
    iid = _post(client, defect_png).json()["inspection_id"]
    assert "'correct', 'false_alarm' or 'missed_defect'" in _error(
        client.post(f"/v1/inspections/{iid}/feedback", json={"feedback": "maybe"}), 422
    )
    assert "feedback" in _error(client.post(f"/v1/inspections/{iid}/feedback", json={"comment": "x"}), 422)
    assert _error(client.post(f"/v1/inspections/{iid}/feedback", content=b"{", headers={"content-type": "application/json"}), 422)
    assert "no inspection 999999" in _error(client.get("/v1/inspections/999999"), 404)
    assert "no inspection 999999" in _error(client.post("/v1/inspections/999999/feedback", json={"feedback": "correct"}), 404)
    assert "inspection_id" in _error(client.get("/v1/inspections/abc"), 422)


# --------------------------------------------------------------------------------------------
# GET /v1/similar/{id}
# --------------------------------------------------------------------------------------------


def test_similar_cases_of_a_defect_upload(client, defect_png: bytes) -> None:
    body = _post(client, defect_png).json()
    similar = client.get(body["similar"], params={"k": 3})
    assert similar.status_code == 200, similar.text
    out = similar.json()
    assert out["inspection_id"] == body["inspection_id"] and out["k"] == 3
    assert 1 <= len(out["cases"]) <= 3
    scores = [case["similarity"] for case in out["cases"]]
    assert scores == sorted(scores, reverse=True)
    assert all(case["label"] in ("good", "anomalous") for case in out["cases"])
    assert all(case["source"].startswith(("train/", "test/", "inspected upload")) for case in out["cases"])
    assert body["point_id"] not in [case["point_id"] for case in out["cases"]]  # never the query itself


def test_similar_errors(client, good_png: bytes) -> None:
    good = _post(client, good_png, threshold=1).json()
    assert "not in the similar-defect index" in _error(client.get(f"/v1/similar/{good['inspection_id']}"), 404)
    assert "no inspection 999999" in _error(client.get("/v1/similar/999999"), 404)
    assert "k" in _error(client.get(f"/v1/similar/{good['inspection_id']}", params={"k": 0}), 422)


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def test_shared_key(make_client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECT_API_KEY", "line-secret-1234")
    client = make_client()
    missing = client.get("/v1/models")
    assert "Authorization: Bearer" in _error(missing, 401) and missing.headers["WWW-Authenticate"] == "Bearer"
    assert "not valid" in _error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert _error(client.get("/v1/models", headers={"Authorization": "Basic line-secret-1234"}), 401)
    assert client.get("/v1/models", headers={"Authorization": "Bearer line-secret-1234"}).status_code == 200
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_stored_keys_with_roles(make_client, monkeypatch: pytest.MonkeyPatch, defect_png: bytes) -> None:
    from core import auth

    inspector = auth.add_api_key("line3", auth.INSPECTOR)
    engineer = auth.add_api_key("lab", auth.ENGINEER)
    client = make_client(host="0.0.0.0")  # a key exists: the API may serve the network
    assert _error(client.get("/v1/models"), 401)
    for key in (inspector, engineer):
        headers = {"Authorization": f"Bearer {key}"}
        body = client.post(
            "/v1/inspect", files={"image": ("p.png", defect_png)}, data={"category": TINY_CATEGORY}, headers=headers
        ).json()
        assert body["verdict"] == "DEFECT"
        iid = body["inspection_id"]
        assert client.get(f"/v1/inspections/{iid}", headers=headers).status_code == 200
        fb = client.post(f"/v1/inspections/{iid}/feedback", json={"feedback": "correct"}, headers=headers)
        assert fb.status_code == 200
    monkeypatch.setenv("INSPECT_API_KEY", "shared-key-5678")  # both kinds work side by side
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {inspector}"}).status_code == 200
    assert client.get("/v1/models", headers={"Authorization": "Bearer shared-key-5678"}).status_code == 200
    auth.remove_api_key("line3")
    assert "not valid" in _error(client.get("/v1/models", headers={"Authorization": f"Bearer {inspector}"}), 401)


def test_unauthorised_upload_is_refused_before_it_is_read(make_client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INSPECT_API_KEY", "line-secret-1234")
    monkeypatch.setenv("INSPECT_MAX_UPLOAD_MB", "0.1")
    client = make_client()
    big = _post(client, b"\x89PNG" + b"0" * 500_000)
    assert _error(big, 401)  # not 413: the key is checked first


def test_open_api_only_on_loopback(make_client) -> None:
    from core.api.security import check_bind

    remote = make_client(host="0.0.0.0")
    assert "no API key exists" in _error(remote.get("/v1/models"), 403)
    assert remote.get("/healthz").status_code == 200
    assert make_client(host="127.0.0.1").get("/v1/models").status_code == 200
    with pytest.raises(Exception, match="refusing to serve the API on 0.0.0.0"):
        check_bind("0.0.0.0")
    check_bind("127.0.0.1")
    check_bind("localhost")


def test_damaged_users_file_refuses_everyone(make_client, api_env: Path) -> None:
    api_env.mkdir(parents=True, exist_ok=True)
    (api_env / "users.json").write_text("{damaged", encoding="utf-8")
    client = make_client()
    assert "users file" in _error(client.get("/v1/models"), 503)
    assert client.get("/healthz").status_code == 200


# --------------------------------------------------------------------------------------------
# The model cache
# --------------------------------------------------------------------------------------------


def test_cache_loads_once_and_serialises_calls(api_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.api import detectors

    loads: list[tuple[str, str]] = []
    original = detectors.load_warm

    def counting(model: str, category: str):
        loads.append((model, category))
        return original(model, category)

    monkeypatch.setattr(detectors, "load_warm", counting)
    cache = detectors.DetectorCache(max_entries=1)
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(cache.get("patchcore", TINY_CATEGORY))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == [("patchcore", TINY_CATEGORY)] and len({id(d) for d in got}) == 1
    assert cache.loaded() == [f"patchcore/{TINY_CATEGORY}@{got[0].version}"]


def test_api_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from core import settings
    from core.errors import ConfigError

    for name in ("INSPECT_API_KEY", "INSPECT_MAX_UPLOAD_MB", "INSPECT_API_MAX_BATCH"):
        monkeypatch.delenv(name, raising=False)
    assert settings.api_key() is None
    assert settings.max_upload_bytes() == 50_000_000 and settings.api_max_batch() == 16
    monkeypatch.setenv("INSPECT_API_KEY", "  k-123  ")
    monkeypatch.setenv("INSPECT_MAX_UPLOAD_MB", "2.5")
    monkeypatch.setenv("INSPECT_API_MAX_BATCH", "4")
    assert settings.api_key() == "k-123"
    assert settings.max_upload_bytes() == 2_500_000 and settings.api_max_batch() == 4
    monkeypatch.setenv("INSPECT_MAX_UPLOAD_MB", "big")
    with pytest.raises(ConfigError, match="INSPECT_MAX_UPLOAD_MB must be a number"):
        settings.max_upload_bytes()
    monkeypatch.setenv("INSPECT_API_MAX_BATCH", "0")
    with pytest.raises(ConfigError, match="INSPECT_API_MAX_BATCH must be at least 1"):
        settings.api_max_batch()


def test_part_sizes_are_counted_across_chunks_and_within_one() -> None:
    from core.api.middleware import PartSizes

    whole = PartSizes(b"bnd", 10)
    assert not whole.feed(b"--bnd\r\nsmall\r\n--bnd\r\n" + b"x" * 20 + b"\r\n--bnd--")  # the big part is not the last
    split = PartSizes(b"bnd", 16)
    assert split.feed(b"--bnd\r\n12345") and split.feed(b"6\r\n--b") and split.feed(b"nd\r\nabc")  # boundary split in two
    assert split.current == 5 and split.feed(b"x" * 11) and not split.feed(b"x")


def test_station_and_metrics(
    make_client, api_env: Path, monkeypatch: pytest.MonkeyPatch, defect_png: bytes, good_png: bytes
) -> None:
    """A line station records itself with every inspection and says so; /metrics counts what it did."""
    from core.history import History

    monkeypatch.setenv("INSPECT_STATION", "line-3")
    client = make_client()
    answers = [_post(client, defect_png).json(), _post(client, good_png).json()]
    assert [a["station"] for a in answers] == ["line-3", "line-3"]
    assert History(api_env / "history.sqlite").get(answers[0]["inspection_id"]).station == "line-3"
    assert client.get("/v1/models").json()["station"] == "line-3"
    assert client.get(f"/v1/inspections/{answers[0]['inspection_id']}").json()["station"] == "line-3"
    client.get("/v1/nothing")
    text = client.get("/metrics").text
    for a in answers:
        labels = f'category="{TINY_CATEGORY}",model="patchcore",station="line-3",verdict="{a["verdict"]}"'  # sorted
        assert f"inspect_inspections_total{{{labels}}} {1.0 + (answers[0]['verdict'] == answers[1]['verdict'])}" in text
    assert 'inspect_inspection_seconds_count{model="patchcore"} 2.0' in text
    assert 'inspect_http_responses_total{status="4xx"} 1.0' in text and "inspect_index_waiting 0.0" in text
    monkeypatch.setenv("INSPECT_STATION", "../line")
    from core.errors import ConfigError

    with pytest.raises(ConfigError, match="station '../line': use letters"):
        make_client()


def test_readyz_checks_the_history_and_reports_the_store(make_client, api_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ready means a model loads and inspections can be recorded; an unavailable similar-defect store
    is reported (uploads wait in the queue meanwhile) but does not take the station out."""
    from core.services import similar

    client = make_client()
    body = client.get("/readyz").json()
    assert body["status"] == "ready" and body["similar_store"] == "ok"
    monkeypatch.setattr(similar, "store_problem", lambda: "the similarity store is held by another process")
    assert client.get("/readyz").json()["similar_store"] == "the similarity store is held by another process"
    api_env.mkdir(parents=True, exist_ok=True)
    (api_env / "history.sqlite").write_bytes(b"not a database, just bytes" * 100)
    assert "inspections cannot be recorded" in _error(client.get("/readyz"), 503)


def test_a_retry_with_the_same_idempotency_key_is_not_recorded_twice(client, api_env: Path, defect_png: bytes) -> None:
    """A line PC that timed out sends the upload again: the answer names the inspection already
    recorded, and the history holds it once, also when the two requests arrive together."""
    before = _history_count(api_env)
    first = _post_keyed(client, defect_png, "part-0001")
    again = _post_keyed(client, defect_png, "part-0001")
    assert again["inspection_id"] == first["inspection_id"] and again["verdict"] == first["verdict"]
    assert again["point_id"] == first["point_id"] and "not recorded again" in again["notes"][-1]
    assert _history_count(api_env) == before + 1
    assert _post_keyed(client, defect_png, "part-0002")["inspection_id"] != first["inspection_id"]  # another upload
    together: list[dict] = []
    threads = [threading.Thread(target=lambda: together.append(_post_keyed(client, defect_png, "part-0003"))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({a["inspection_id"] for a in together}) == 1 and _history_count(api_env) == before + 3
    files = [("images", (f"{i}.png", defect_png, "image/png")) for i in range(2)]
    batch = [
        client.post("/v1/inspect/batch", files=files, data={"category": TINY_CATEGORY}, headers={"Idempotency-Key": "tray-7"})
        for _ in range(2)
    ]
    ids = [[item["result"]["inspection_id"] for item in b.json()["items"]] for b in batch]
    assert ids[0] == ids[1] and len(set(ids[0])) == 2 and _history_count(api_env) == before + 5


def _post_keyed(client, data: bytes, key: str) -> dict:
    response = client.post(
        "/v1/inspect",
        files={"image": ("part.png", data, "image/png")},
        data={"category": TINY_CATEGORY},
        headers={"Idempotency-Key": key},
    )
    assert response.status_code == 200, response.text
    return response.json()
