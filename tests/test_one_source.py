"""One source for each setting and rule: env reads in settings.py, one file hash, one image listing,
typed similarity payloads and results entries that read and write the JSON of earlier versions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import settings
from core.data.image_io import sha256_of
from core.data.layout import CategoryImage, category_images, check_layout
from core.errors import ImageError
from core.evaluation.results import ModelResult, TrainingInfo
from core.similarity.payload import CasePayload

CORE = Path(__file__).resolve().parents[1] / "core"
#: Files that may touch os.environ: settings.py reads it; the CLI and the job runner set or copy a
#: child process's environment, which is not reading a setting.
ENV_ALLOWED = {"settings.py", "cli.py", "jobs.py"}
ENV_READ = re.compile(r"\bos\.environ\b|\bgetenv\b|\bfrom os import\b.*\benviron\b")


def test_environment_is_read_only_in_settings() -> None:
    offenders = [
        f"{path.relative_to(CORE.parent)}:{number}: {line.strip()}"
        for path in sorted(CORE.rglob("*.py"))
        if not (path.parent == CORE and path.name in ENV_ALLOWED)
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if ENV_READ.search(line)
    ]
    assert offenders == [], "read environment variables in core/settings.py:\n" + "\n".join(offenders)


def test_settings_readers(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("INSPECT_MAX_PIXELS", "QDRANT_URL", "QDRANT_API_KEY", "INSPECT_BACKBONE_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    assert settings.max_pixels() == settings.DEFAULT_MAX_PIXELS == 150_000_000
    assert settings.qdrant_url() == "" and settings.qdrant_api_key() is None and settings.backbone_weights() is None
    monkeypatch.setenv("INSPECT_MAX_PIXELS", "2_000_000")
    monkeypatch.setenv("QDRANT_URL", "  http://localhost:6333 ")
    monkeypatch.setenv("QDRANT_API_KEY", "secret")
    monkeypatch.setenv("INSPECT_BACKBONE_WEIGHTS", "/w.pth")
    assert settings.max_pixels() == 2_000_000
    assert settings.qdrant_url() == "http://localhost:6333" and settings.qdrant_api_key() == "secret"
    assert settings.backbone_weights() == "/w.pth"
    monkeypatch.setenv("INSPECT_MAX_PIXELS", "lots")
    with pytest.raises(ImageError, match="INSPECT_MAX_PIXELS must be a whole number of pixels"):
        settings.max_pixels()
    monkeypatch.setenv("INSPECT_MAX_PIXELS", "0")
    with pytest.raises(ImageError, match="INSPECT_MAX_PIXELS must be positive, not 0"):
        settings.max_pixels()


def test_sha256_of_bytes_and_of_a_file_agree(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # more than one 1 MiB chunk
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_of(path) == sha256_of(str(path)) == sha256_of(data) == sha256_of(memoryview(data))


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(path)


def test_category_images_lists_train_then_good_then_defect_types(tmp_path: Path) -> None:
    cat = tmp_path / "widget"
    for rel in ("train/good/b.png", "train/good/a.PNG", "test/scratch/0.png", "test/good/1.png", "test/crack/0.png"):
        _png(cat / rel)
    for rel in ("ground_truth/scratch/0_mask.png", "ground_truth/crack/0_mask.png"):
        _png(cat / rel)
    (cat / "test" / "crack" / "notes.txt").write_text("not an image")
    (cat / "test" / "crack" / ".hidden.png").write_bytes(b"")
    images = category_images(tmp_path, "widget")
    assert [(i.path.relative_to(cat).as_posix(), i.split, i.defect_type, i.label) for i in images] == [
        ("train/good/a.PNG", "train", "good", "good"),
        ("train/good/b.png", "train", "good", "good"),
        ("test/good/1.png", "test", "good", "good"),
        ("test/crack/0.png", "test", "crack", "anomalous"),
        ("test/scratch/0.png", "test", "scratch", "anomalous"),
    ]
    assert category_images(tmp_path, "widget", ("test",))[0] == CategoryImage(cat / "test/good/1.png", "test", "good")
    assert category_images(tmp_path, "nowhere") == []
    (cat / "test" / "crack" / "notes.txt").unlink()
    (cat / "test" / "crack" / ".hidden.png").unlink()
    report = check_layout(tmp_path, "widget", verify_images=False)  # the strict check counts the same
    assert report.n_train + report.n_test == len(images) and report.defect_types == ["crack", "scratch"]


STORED = {
    "image_path": "/data/tile/test/crack/000.png",
    "category": "tile",
    "split": "test",
    "label": "anomalous",
    "defect_type": "crack",
    "score": 0.93,
    "model": "patchcore",
    "time": "2024-05-01T12:00:00+00:00",
    "inspection_id": None,
    "sha256": "ab" * 32,
}


def test_case_payload_writes_the_stored_json_back_unchanged() -> None:
    case = CasePayload.from_dict(STORED)
    assert case.defect_type == "crack" and case.is_dataset and case.is_anomalous
    assert case.to_dict() == STORED and list(case.to_dict()) == list(STORED)  # same fields, same order
    newer = {**STORED, "operator": "ann"}  # a field this version does not know survives
    assert CasePayload.from_dict(newer).to_dict() == newer


def test_case_payload_reads_older_payloads() -> None:
    case = CasePayload.from_dict({"label": "anomalous", "split": "inspection", "inspection_id": 7})
    assert case.inspection_id == "7" and case.score is None and case.defect_type == "" and not case.is_dataset
    assert CasePayload.from_dict(None) == CasePayload()


def test_store_records_carry_case_payloads() -> None:
    from core.similarity.store import make_record

    record = make_record(
        sha256=STORED["sha256"].upper(),
        model="patchcore",
        category="tile",
        vectors={"global": np.ones(3), "defect": np.ones(3)},
        image_path=STORED["image_path"],
        split="test",
        label="anomalous",
        defect_type="crack",
        score=0.93,
        time=STORED["time"],
    )
    assert record.payload == STORED and list(record.payload) == list(STORED)
    assert record.case == CasePayload.from_dict(STORED)


ENTRY = {
    "n_test": 4,
    "n_test_anomalous": 2,
    "image_auroc": 1.0,
    "image_f1": 0.8,
    "pixel_auroc": 0.9,
    "pixel_f1": 0.5,
    "aupro": 0.7,
    "false_alarm_rate": 0.0,
    "roc": {"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]},
    "per_defect_type": {"crack": {"n": 2, "image_auroc": 1.0, "detection_rate": 1.0}},
    "model": "patchcore",
    "category": "tile",
    "latency_ms": 12.5,
    "eval_time_s": 3.1,
    "peak_memory_mb": 900.0,
    "eval_device": "cpu",
    "threshold_source": "calibration",
    "training": {
        "backbone": "efficientnet_lite0",
        "device": "cpu",
        "steps": None,
        "train_time_s": 10.0,
        "n_train_images": 12,
        "config": {"coreset_ratio": 0.1},
        "data_root": "/data",
        "data_hash": "0123456789abcdef",
        "created_at": "2024-05-01T12:00:00+00:00",
    },
}


def test_model_result_writes_the_entry_back_unchanged() -> None:
    result = ModelResult.from_dict(ENTRY)
    assert result.image_auroc == 1.0 and result.training.backbone == "efficientnet_lite0"
    assert result.to_dict() == ENTRY
    newer = {**ENTRY, "gpu": "H200", "training": {**ENTRY["training"], "seed": 1}}
    assert ModelResult.from_dict(newer).to_dict() == newer


def test_model_result_reads_older_entries() -> None:
    result = ModelResult.from_dict({"image_auroc": 0.75})
    assert result.image_auroc == 0.75 and result.per_defect_type == {} and result.training == TrainingInfo()
    assert ModelResult.from_dict({"training": None}).training == TrainingInfo()


def test_write_atomically_replaces_whole_files_and_leaves_no_temporary(tmp_path: Path) -> None:
    import stat

    from core.files import write_atomically

    target = tmp_path / "out.json"
    write_atomically(target, b"first")
    write_atomically(target, lambda handle: handle.write(b"second"), sync=True)
    assert target.read_bytes() == b"second"
    private = tmp_path / "secret.json"
    write_atomically(private, b"key", private=True)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600

    def fails(handle) -> None:
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(target, fails)
    assert target.read_bytes() == b"second" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "secret.json"]
