"""Export and the OpenVINO runtime on the tiny PatchCore: parity, dynamic batch, the runtime switch,
the version's runtime choice, and one-line errors for a missing OpenVINO or export."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CATEGORY

pytest.importorskip("openvino")
pytest.importorskip("onnxscript")


@pytest.fixture(scope="module")
def exported(tiny_patchcore) -> Iterator[Path]:
    """The tiny PatchCore exported to OpenVINO through the command line (with ``--use``)."""
    from core import registry
    from core.cli import main

    assert main(["export", "--model", "patchcore", "--category", TINY_CATEGORY, "--precision", "fp32", "--use"]) == 0
    folder = registry.current_files("patchcore", TINY_CATEGORY).folder
    yield folder
    # The other test files share this model: leave its version folder as it was (no export, torch).
    shutil.rmtree(folder / "export", ignore_errors=True)


def _images(n: int = 6) -> list[np.ndarray]:
    from core.data.image_io import load_image
    from core.data.layout import category_images

    items = category_images(None, TINY_CATEGORY, splits=("test",))
    return [load_image(item.path) for item in items[:n]]


def test_export_lives_in_its_version_and_passed_parity(exported: Path) -> None:
    folder = exported / "export" / "openvino"
    assert (folder / "model.xml").is_file() and (folder / "model.bin").is_file()
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["version"] == exported.name and manifest["precision"] == "fp32"
    assert manifest["checkpoint_sha256"] == json.loads((exported / "meta.json").read_text())["checkpoint"]["sha256"]
    parity = manifest["parity"]
    assert parity["passed"] and parity["n_images"] > 0
    assert parity["max_score_diff"] <= 1e-3 and parity["bound"] == 1e-3 and parity["differing"] == []
    assert not [p for p in (exported / "export").iterdir() if p.name.startswith(".")]  # no leftovers


def test_openvino_runtime_matches_torch_with_a_dynamic_batch(exported: Path) -> None:
    from core.inference.detector import load_detector

    torch_det = load_detector("patchcore", TINY_CATEGORY, runtime="torch")
    ov_det = load_detector("patchcore", TINY_CATEGORY, runtime="openvino")
    assert (torch_det.runtime, ov_det.runtime) == ("torch", "openvino")
    images = _images(6)
    images[1] = images[1][:100, :90]  # another size: resized like the torch pre-processor does
    ref = torch_det.predict_batch(images, with_features=True)
    for batch in (images[:1], images[:3], images):  # batch sizes 1, 3, 6 on one export
        got = ov_det.predict_batch(batch, with_features=True)
        for r, g in zip(ref, got, strict=False):
            assert abs(r.score - g.score) <= 1e-3 and r.verdict() == g.verdict()
            assert abs(r.raw_score - g.raw_score) <= 1e-3 * max(1.0, abs(r.raw_score))
            assert g.anomaly_map.shape == r.anomaly_map.shape
            assert g.patch_features.shape == r.patch_features.shape


def test_the_versions_choice_picks_the_runtime(exported: Path) -> None:
    from core.services import inspection

    assert inspection.load_detector("patchcore", TINY_CATEGORY).runtime == "openvino"  # chosen with --use
    assert inspection.load_detector("patchcore", TINY_CATEGORY, "torch").runtime == "torch"


def test_inspect_command_runs_on_openvino(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.cli import main
    from core.settings import get_settings

    folder = get_settings().demo_data_root / TINY_CATEGORY / "test" / "good"
    status = main(["inspect", str(folder), "--category", TINY_CATEGORY, "--runtime", "openvino", "--no-record"])
    assert status == 0
    assert "GOOD" in capsys.readouterr().out


def test_missing_openvino_is_one_line(exported: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from core.cli import main
    from core.inference.detector import load_detector
    from core.inference.runtime import RuntimeUnavailableError
    from core.settings import get_settings

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(RuntimeUnavailableError, match="OpenVINO is not installed"):
        load_detector("patchcore", TINY_CATEGORY, runtime="openvino")
    # The version's choice falls back to torch (the app keeps showing the model).
    assert load_detector("patchcore", TINY_CATEGORY, runtime=None).runtime == "torch"
    capsys.readouterr()
    folder = str(get_settings().demo_data_root / TINY_CATEGORY / "test" / "good")
    assert main(["inspect", folder, "--category", TINY_CATEGORY, "--runtime", "openvino", "--no-record"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: OpenVINO is not installed")


def test_missing_export_names_the_command(tmp_path: Path) -> None:
    from core.inference.runtime import ExportMissingError, load_engine

    with pytest.raises(ExportMissingError, match="no OpenVINO export"):
        load_engine(tmp_path, image_size=128, checkpoint_sha256=None)


def test_an_export_that_disagrees_is_refused_and_not_kept(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A drifting export (here: every score shifted by 0.01) fails with the difference named."""
    from core.export import exporter
    from core.inference.runtime import OpenVINOEngine

    def copy_export(_module, _model, fmt, out: Path, _size) -> Path:  # reuse the file: no second export
        for part in (exported / "export" / "openvino").glob("model.*"):
            shutil.copy(part, out / part.name)
        return out / "model.xml"

    class Drifting(OpenVINOEngine):
        def infer(self, images, *, with_features=False):
            out = super().infer(images, with_features=with_features)
            return out._replace(pred_score=out.pred_score + 0.01)

    monkeypatch.setattr(exporter, "_write_file", copy_export)
    monkeypatch.setattr(exporter, "OpenVINOEngine", Drifting)
    with pytest.raises(exporter.ExportParityError, match=r"max score difference 1\.00e-02 > 0\.001"):
        exporter.export_model("patchcore", TINY_CATEGORY, fmt="onnx")
    assert not (exported / "export" / "onnx").exists()
    assert not [p for p in (exported / "export").iterdir() if p.name.startswith(".")]


def test_the_single_image_path_is_checked_too(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The runtime runs single images on a static batch-1 compilation: a drift there alone is refused."""
    from core.export import exporter
    from core.inference.runtime import OpenVINOEngine

    def copy_export(_module, _model, fmt, out: Path, _size) -> Path:
        for part in (exported / "export" / "openvino").glob("model.*"):
            shutil.copy(part, out / part.name)
        return out / "model.xml"

    class DriftingAlone(OpenVINOEngine):
        def infer(self, images, *, with_features=False):
            out = super().infer(images, with_features=with_features)
            return out._replace(pred_score=out.pred_score + 0.01) if images.shape[0] == 1 else out

    monkeypatch.setattr(exporter, "_write_file", copy_export)
    monkeypatch.setattr(exporter, "OpenVINOEngine", DriftingAlone)
    with pytest.raises(exporter.ExportParityError, match=r"one image at a time: max score difference 1\.00e-02 > 0\.001"):
        exporter.export_model("patchcore", TINY_CATEGORY, fmt="onnx", precision="fp32", max_images=8)


def test_auto_precision_keeps_fp32_when_the_rule_refuses_bf16(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` on a bf16 CPU tries bf16 first; refused (here: scores drift by 0.05 in bf16), fp32 is kept, the refusal recorded."""
    from core.export import exporter
    from core.inference import device
    from core.inference.runtime import OpenVINOEngine

    def copy_export(_module, _model, fmt, out: Path, _size) -> Path:
        for part in (exported / "export" / "openvino").glob("model.*"):
            shutil.copy(part, out / part.name)
        return out / "model.xml"

    class DriftingInBf16(OpenVINOEngine):
        def infer(self, images, *, with_features=False):
            out = super().infer(images, with_features=with_features)
            return out._replace(pred_score=out.pred_score + 0.05) if self.precision == "bf16" else out

    monkeypatch.setattr(device, "native_bf16", lambda: True)
    monkeypatch.setattr(exporter, "_write_file", copy_export)
    monkeypatch.setattr(exporter, "OpenVINOEngine", DriftingInBf16)
    result = exporter.export_model("patchcore", TINY_CATEGORY, fmt="onnx", max_images=6)
    assert result.precision == "fp32" and result.parity.passed
    assert [r.precision for r in result.declined] == ["bf16"] and "max score difference 5.00e-02 > 0.02" in result.declined[
        0
    ].problem()
    manifest = json.loads((result.path.parent / "export.json").read_text())
    assert manifest["precision"] == "fp32" and manifest["declined"][0]["precision"] == "bf16"
    shutil.rmtree(result.path.parent)
    monkeypatch.setattr(device, "native_bf16", lambda: False)
    assert exporter._candidates("auto") == ["fp32"] and exporter._candidates("int8") == ["int8"]


def test_onnx_export_passes_parity(exported: Path) -> None:
    from core.export.exporter import export_model

    result = export_model("patchcore", TINY_CATEGORY, fmt="onnx", max_images=6)
    assert result.path == exported / "export" / "onnx" / "model.onnx" and result.path.is_file()
    assert result.parity.passed and result.parity.max_score_diff <= 1e-3


def test_compare_table_says_which_runtime_measured_latency() -> None:
    from core.services import comparison

    results = {
        "models": {
            "patchcore/tile": {"model": "patchcore", "category": "tile", "latency_ms": 9.0, "latency_runtime": "openvino"},
            "patchcore/grid": {"model": "patchcore", "category": "grid", "latency_ms": 20.0},
        }
    }
    table = comparison.results_table(results).set_index("category")
    assert table.loc["tile", "latency runtime"] == "openvino"
    assert table.loc["grid", "latency runtime"] == "torch"  # entries from before exports


def test_int8_quantisation_runs_and_is_judged_by_the_int8_criteria(exported: Path, tmp_path: Path) -> None:
    """NNCF int8 on training images only; judged by the parity rule at int8's bound."""
    pytest.importorskip("nncf")
    import torch

    from core.data.layout import category_images
    from core.export.exporter import _quantise
    from core.export.parity import check_parity
    from core.inference.detector import Detector, load_detector
    from core.inference.runtime import OpenVINOEngine
    from core.settings import get_settings

    for part in (exported / "export" / "openvino").glob("model.*"):
        shutil.copy(part, tmp_path / part.name)
    _quantise(tmp_path / "model.xml", get_settings().demo_data_root, TINY_CATEGORY, 128)
    reference = load_detector("patchcore", TINY_CATEGORY, runtime="torch")
    engine = OpenVINOEngine(tmp_path / "model.xml", image_size=128, precision="int8")
    candidate = Detector(reference.module, reference.meta, torch.device("cpu"), reference.version, engine=engine)
    images = category_images(None, TINY_CATEGORY, splits=("test",))
    report = check_parity(reference, candidate, images, precision="int8")
    rule = report.rule
    assert rule.n_images == len(images) and rule.auroc_candidate is not None and rule.bound == 0.02
    within = rule.max_score_diff <= 0.02 and abs(rule.auroc_delta) <= 0.002
    assert report.passed == (within and all(d.inside_bound for d in rule.differing))


@pytest.mark.parametrize("k", [1, 9])
def test_exported_search_finds_anomalibs_neighbours(k: int) -> None:
    """The one-matrix search traced for export gives anomalib's neighbours and distances."""
    import torch
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from core.export.graph import WholeSearchPatchcore

    generator = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(1500, 64, generator=generator), torch.randn(2000, 64, generator=generator)
    model = object.__new__(WholeSearchPatchcore)
    torch.nn.Module.__init__(model)
    model.register_buffer("memory_bank", bank)
    want = PatchcoreModel.nearest_neighbors(model, queries, k)  # anomalib's chunked search
    got = model.nearest_neighbors(queries, k)
    assert torch.equal(got[1], want[1]) and torch.allclose(got[0], want[0], atol=1e-4)


def test_the_export_blurs_the_map_in_two_1d_passes(exported: Path) -> None:
    """PatchCore's 33 x 33 map blur is exported as a 33 x 1 and a 1 x 33 pass, not anomalib's 2-D kernel."""
    import openvino as ov

    graph = ov.Core().read_model(str(exported / "export" / "openvino" / "model.xml"))
    kernels = [
        tuple(op.input(1).get_partial_shape().to_shape())[-2:]
        for op in graph.get_ordered_ops()
        if op.get_type_name() in ("Convolution", "GroupConvolution")
    ]
    assert (33, 1) in kernels and (1, 33) in kernels and (33, 33) not in kernels
    assert {out.get_any_name() for out in graph.outputs} >= {"pred_score", "anomaly_map", "raw_score", "raw_anomaly_map"}
    assert not {out.get_any_name() for out in graph.outputs} & {"pred_label", "pred_mask"}


def test_the_exported_separable_blur_equals_anomalibs_2d_blur() -> None:
    """The two exported 1-D passes, run by OpenVINO in f32, give anomalib's 2-D blur to float rounding."""
    import openvino as ov
    import torch
    from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator

    from core.models.patchcore.blur import SeparableGaussianBlur2d

    blur = AnomalyMapGenerator().blur
    maps = torch.rand(2, 1, 96, 96, generator=torch.Generator().manual_seed(3)) * 40
    reference = blur(maps)
    blur.__class__ = SeparableGaussianBlur2d
    assert blur.factors() is not None
    model = ov.convert_model(blur, example_input=maps)
    got = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(maps.numpy())[0]
    assert np.abs(got - reference.numpy()).max() <= 1e-4 * float(reference.abs().max())


def test_blocked_argmin_is_argmin_first_on_ties() -> None:
    """The exported two-level arg-min (padded blocks) answers as ``argmin``, ties and ragged sizes included."""
    import torch

    from core.export.graph import _blocked_argmin

    generator = torch.Generator().manual_seed(1)
    for n in (1, 7, 100, 2003):
        bank = torch.randint(-3, 4, (n, 5), generator=generator).float()  # small integers: many exact ties
        queries = torch.randint(-3, 4, (300, 5), generator=generator).float()
        want = torch.cdist(queries, bank).pow(2).argmin(dim=1)
        assert torch.equal(_blocked_argmin(queries, bank), want)


@pytest.mark.parametrize(
    ("low", "high", "threshold"),
    [(1.0, 9.0, 4.0), (1.0, 9.0, float("nan")), (3.0, 3.0, 3.0), (float("nan"), 9.0, 4.0), (2.0, 2.5, 7.0)],
)
def test_the_traced_normalisation_equals_anomalibs(low: float, high: float, threshold: float) -> None:
    """Normalisation with its case picked at trace time: anomalib's numbers in every case it handles."""
    import torch
    from anomalib.post_processing import PostProcessor

    from core.export.graph import Normalisation

    stats = [torch.tensor(v) for v in (low, high, threshold)]
    preds = torch.cat([torch.linspace(-5, 15, 401), torch.tensor([3.0, 4.0])]).reshape(1, 1, 1, -1)
    want = PostProcessor._normalize(preds, *stats)  # noqa: SLF001 - the reference
    got = Normalisation.of(*stats)(preds)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.allclose(got, want, atol=1e-6, equal_nan=True)


def test_the_exported_normalisation_has_no_full_map_selects(exported: Path) -> None:
    """The normalised map is a clamp of an affine map in the file, not anomalib's case analysis per pixel."""
    import openvino as ov

    graph = ov.Core().read_model(str(exported / "export" / "openvino" / "model.xml"))
    kinds = {op.get_type_name() for op in graph.get_ordered_ops()}
    assert "Clamp" in kinds
    assert not kinds & {"Select", "Less", "Greater"}


def _train_cli(tiny_data_root: Path, *extra: str) -> int:
    from core.cli import main

    return main(
        ["train", "--model", "patchcore", "--category", TINY_CATEGORY, "--data-root", str(tiny_data_root)]
        + ["--image-size", "128", "--coreset-ratio", "0.1", *extra]
    )


def test_a_trained_version_runs_with_its_export(
    tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """By default training exports the new version and, the parity rule accepting it, runs it with OpenVINO."""
    from core import registry
    from core.inference.detector import load_detector
    from core.inference.runtime import runtime_choice

    monkeypatch.setenv("INSPECT_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.delenv("INSPECT_EXPORT_AFTER_TRAINING")
    assert _train_cli(tiny_data_root) == 0
    printed = capsys.readouterr().out
    choice = runtime_choice(registry.current_files("patchcore", TINY_CATEGORY).folder)
    assert choice.runtime == "openvino" and "export, parity:" in choice.reason
    assert f"v0001 runs with openvino: {choice.reason}" in printed
    assert load_detector("patchcore", TINY_CATEGORY, runtime=None).runtime == "openvino"


def test_a_failed_export_leaves_the_trained_version_on_torch(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export the rule refuses (or that cannot run) costs the new version its speed, never the version."""
    from core import registry
    from core.auth import COMMAND_LINE
    from core.export import exporter
    from core.inference.detector import load_detector
    from core.inference.runtime import runtime_choice

    def refuse(*_args, **_kwargs):
        raise exporter.ExportParityError("the export does not match the torch model: 3 of 10 verdicts differ")

    monkeypatch.setattr(exporter, "export_model", refuse)
    version = registry.current_files("patchcore", TINY_CATEGORY).version
    choice = exporter.export_new_version("patchcore", TINY_CATEGORY, version, actor=COMMAND_LINE)
    assert choice.runtime == "torch" and choice.reason.startswith("not exported: the export does not match")
    assert runtime_choice(registry.current_files("patchcore", TINY_CATEGORY).folder) == choice  # recorded
    assert load_detector("patchcore", TINY_CATEGORY, runtime=None).runtime == "torch"


def test_train_no_export_skips_the_export(tiny_patchcore, monkeypatch: pytest.MonkeyPatch) -> None:
    """`train --no-export` reaches training as export=False; without it, the setting decides (None)."""
    import core.training
    from core.cli import main

    asked: list[object] = []

    def fake_train(*_args, export=None, **_kwargs):
        asked.append(export)
        return tiny_patchcore

    monkeypatch.setattr(core.training, "train", fake_train)
    assert main(["train", "--category", TINY_CATEGORY, "--no-export"]) == 0
    assert main(["train", "--category", TINY_CATEGORY]) == 0
    assert asked == [False, None]


def test_choosing_a_runtime_gives_the_cached_detector_a_new_key(models: Path) -> None:
    """The app and API reload a version whose runtime was chosen after they loaded it (the export after
    training ends after the version is published)."""
    import os

    from core import registry
    from core.inference.runtime import CHOICE, choose_runtime
    from core.services import catalog

    before = catalog.detector_cache_key("patchcore", TINY_CATEGORY)
    folder = registry.current_files("patchcore", TINY_CATEGORY).folder
    choose_runtime(folder, "torch", "not exported: no OpenVINO here")
    os.utime(folder / "export" / CHOICE, (1e9, 1e9))  # a distinct mtime whatever the clock's resolution
    assert catalog.detector_cache_key("patchcore", TINY_CATEGORY) != before


def test_a_derived_version_runs_as_its_parent_ran(exported: Path, models: Path) -> None:
    """A threshold change of a version that runs with OpenVINO is exported again (the calibration is
    inside the file) and runs with OpenVINO; a derived version of a torch parent stays on torch."""
    from core import registry
    from core.auth import COMMAND_LINE
    from core.export.exporter import carry_runtime
    from core.inference.detector import load_detector
    from core.inference.runtime import read_manifest
    from core.learning.versions import derived_meta, save_derived
    from core.learning.versions import load_detector as load_version

    parent = load_version("patchcore", TINY_CATEGORY)
    meta = derived_meta(parent, kind="recalibrate", change="threshold up", inspections=[], who="test")
    meta.calibration.image_threshold *= 1.5
    version = save_derived(parent, meta)
    choice = carry_runtime("patchcore", TINY_CATEGORY, parent.version, version, actor=COMMAND_LINE)
    assert choice.runtime == "openvino" and "parity:" in choice.reason
    folder = registry.version_files("patchcore", TINY_CATEGORY, version).folder
    new_meta = registry.read_meta(registry.version_files("patchcore", TINY_CATEGORY, version), "patchcore", TINY_CATEGORY)
    assert read_manifest(folder / "export" / "openvino")["checkpoint_sha256"] == new_meta.checkpoint["sha256"]
    image = _images(1)[0]
    fast, torch_path = load_detector("patchcore", TINY_CATEGORY, runtime=None), load_detector("patchcore", TINY_CATEGORY)
    assert fast.runtime == "openvino" and fast.version == version
    assert abs(fast.predict(image).score - torch_path.predict(image).score) < 1e-3  # the new threshold is in the file
    # a torch parent: nothing exported
    (folder / "export").rename(folder.parent / "set-aside")
    again = derived_meta(load_version("patchcore", TINY_CATEGORY), kind="recalibrate", change="x", inspections=[], who="t")
    newest = save_derived(load_version("patchcore", TINY_CATEGORY), again)
    assert carry_runtime("patchcore", TINY_CATEGORY, version, newest, actor=COMMAND_LINE).runtime == "torch"
    assert not (registry.version_files("patchcore", TINY_CATEGORY, newest).folder / "export").exists()
