"""The Compare page and the tables and figures behind it."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore")


def _entry(model: str, category: str, image_auroc: float, pixel_auroc: float, steps: int | None) -> dict:
    return {
        "model": model,
        "category": category,
        "image_auroc": image_auroc,
        "pixel_auroc": pixel_auroc,
        "image_f1": 0.9,
        "pixel_f1": 0.5,
        "aupro": 0.8,
        "false_alarm_rate": 0.05,
        "latency_ms": 12.5,
        "peak_memory_mb": 900.0,
        "eval_device": "cpu",
        "n_test": 40,
        "threshold_source": "20% of train/good held out",
        "per_defect_type": {"crack": {"n": 10, "image_auroc": 0.95, "detection_rate": 0.9}},
        "roc": {"fpr": [0.0, 0.1, 1.0], "tpr": [0.0, 0.8, 1.0]},
        "training": {
            "backbone": "efficientnet_lite0",
            "device": "cpu (2 threads)",
            "steps": steps,
            "train_time_s": 30.0,
            "n_train_images": 100,
        },
    }


RESULTS = {
    "version": 1,
    "models": {
        "patchcore/bottle": _entry("patchcore", "bottle", 1.0, 0.98, None),
        "patchcore/tile": _entry("patchcore", "tile", 0.9, 0.85, None),
        "efficientad/bottle": _entry("efficientad", "bottle", 0.99, 0.97, 2000),
        "efficientad/tile": _entry("efficientad", "tile", 0.8, 0.9, 2000),
    },
    "retrieval": {"patchcore/tile": {"k": 5, "defect": {"same_defect_type": 0.6, "chance": 0.2}}},
}


@pytest.fixture
def results_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(RESULTS))
    monkeypatch.setenv("INSPECT_RESULTS", str(path))
    return path


def test_compare_page_renders_charts_and_tables(app_test, results_file):
    at = app_test()
    at.run()
    at.switch_page("pages/model_comparison.py").run()
    assert not at.exception, [e.value for e in at.exception]
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # AUROC bars and the ROC curves
    bars = json.loads(charts[0].proto.spec)
    names = {t.get("name") for t in bars["data"]}
    assert {"PatchCore", "EfficientAD", "published figure"} <= names
    # Each model's bars: bottle, tile and the average.
    pc = next(t for t in bars["data"] if t.get("name") == "PatchCore")
    assert pc["x"] == ["bottle", "tile", "average"]
    assert pc["y"][-1] == pytest.approx((1.0 + 0.9) / 2)
    assert len(at.dataframe) >= 3  # all metrics, per defect type, retrieval
    at.selectbox(key="compare_roc_category").set_value("tile").run()
    assert not at.exception
    roc = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert any("EfficientAD" in (t.get("name") or "") for t in roc["data"])


def test_empty_results_say_which_command_to_run(app_test, tmp_path, monkeypatch):
    monkeypatch.setenv("INSPECT_RESULTS", str(tmp_path / "none.json"))
    at = app_test()
    at.run()
    at.switch_page("pages/model_comparison.py").run()
    assert not at.exception
    assert "python -m core evaluate" in at.info[0].value
    assert not at.get("plotly_chart")


def test_results_table_has_every_metric_and_training_facts():
    from core.services import comparison

    table = comparison.results_table(RESULTS)
    for col in (
        "image AUROC",
        "pixel AUROC",
        "image F1",
        "pixel F1",
        "AUPRO",
        "latency (ms)",
        "peak memory (MB)",
        "steps",
        "train device",
        "backbone",
        "train time (s)",
        "threshold source",
        "input",
    ):
        assert col in table.columns
    assert set(table["model"]) == {"PatchCore", "EfficientAD"}
    assert table.loc[table["model"] == "PatchCore", "steps"].iloc[0] == "one pass"
    assert comparison.model_input({"image_size": 256}) == "whole image at 256 px"
    assert comparison.model_input({"image_size": 256, "tile": 512, "stride": 448}) == "tiles 512 px, stride 448, at 256 px"
    per_type = comparison.per_defect_table(RESULTS)
    assert list(per_type.columns) == ["model", "category", "defect type", "images", "image AUROC", "detection rate"]


def test_published_figures_only_for_bottle():
    from core.services import comparison
    from pages._figures import auroc_bar_figure

    assert {c for _, c in comparison.published_figures()} == {"bottle"}
    only_tile = {"models": {"patchcore/tile": RESULTS["models"]["patchcore/tile"]}}
    fig = auroc_bar_figure(only_tile)
    assert "published figure" not in {t.name for t in fig.data}
    fig = auroc_bar_figure(RESULTS)
    published = [t for t in fig.data if t.name == "published figure"]
    assert published and all(set(t.x) == {"bottle"} for t in published)
    # Image AUROC: PatchCore 1.000 and EfficientAD 1.000; pixel AUROC: PatchCore 0.986 only.
    by_axis: dict[str, list] = {}
    for t in published:
        by_axis.setdefault(t.xaxis or "x", []).extend((t.offsetgroup, y) for y in t.y)
    assert sorted(by_axis["x"]) == [("EfficientAD", 1.0), ("PatchCore", 1.0)]
    assert by_axis["x2"] == [("PatchCore", 0.986)]


@pytest.mark.parametrize(
    "raw", ['{"version": 1, "models": {', '["not", "an", "object"]', '{"models": {"patchcore/tile": {"roc": 3}}}']
)
def test_corrupt_results_show_a_warning_instead_of_crashing(app_test, tmp_path, monkeypatch, raw):
    path = tmp_path / "results.json"
    path.write_text(raw)
    monkeypatch.setenv("INSPECT_RESULTS", str(path))
    at = app_test()
    at.run()
    at.switch_page("pages/model_comparison.py").run()
    assert not at.exception, [e.value for e in at.exception]
    [warning] = [w.value for w in at.warning if "results.json" in w.value]
    assert warning.startswith("results.json is unreadable (") and "python -m core evaluate" in warning
    assert "No evaluation results yet" in at.info[0].value
    assert path.read_text() == raw  # the page only reads: the file is kept for the next evaluate


def test_background_efficientad_progress_and_validation_curves(app_test, results_file, monkeypatch):
    """Where EfficientAD's bar is missing the page shows the queue's progress and time left; the
    validation curves of trained models (and of the training in progress) are drawn."""
    from core import jobs
    from core.autotrain import QueueRow
    from core.services import comparison

    job = jobs.Job(id="q", kind="autotrain", title="queue", args=[], log_path="/tmp/q.log")
    rows = [
        QueueRow("tile", "done"),
        QueueRow("leather", "training", fraction=0.25, remaining_s=600.0, step=300, val_auroc=0.93),
        QueueRow("grid", "queued", remaining_s=900.0),
    ]
    curve = [{"step": 100, "elapsed_s": 50.0, "image_auroc": 0.9, "loss": 0.4}, {"step": 200, "image_auroc": 0.95, "loss": 0.3}]
    monkeypatch.setattr(comparison, "background_queue", lambda: (rows, job))
    monkeypatch.setattr(comparison, "resume_background_queue", lambda: None)
    monkeypatch.setattr(comparison, "validation_curves", lambda trained: {"EfficientAD/bottle": curve})
    at = app_test()
    at.run()
    at.switch_page("pages/model_comparison.py").run()
    assert not at.exception, [e.value for e in at.exception]
    texts = " ".join(str(getattr(e, "value", "")) for e in at.caption) + " ".join(p.proto.text for p in at.get("progress"))
    assert "EfficientAD/leather: training, step 300, validation AUROC 0.930; at most 10 min left" in texts
    assert "EfficientAD/grid: queued, up to 15 min" in texts
    assert "EfficientAD/tile" not in texts  # done and evaluated: its bar is there
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    curves = charts[-1]
    assert {t["name"] for t in curves["data"]} == {"EfficientAD/bottle"}
    assert curves["data"][0]["x"] == [100, 200]


def test_validation_curves_come_from_model_metadata(monkeypatch):
    from types import SimpleNamespace

    from core.services import comparison

    monkeypatch.setattr("core.autotrain.queue_view", lambda: ([], None))
    curve = [{"step": 100, "image_auroc": 0.9, "loss": 0.4}]
    trained = {
        ("efficientad", "tile"): SimpleNamespace(extra={"validation_curve": curve}),
        ("patchcore", "tile"): SimpleNamespace(extra={}),
    }
    assert comparison.validation_curves(trained) == {"EfficientAD/tile": curve}
