"""Learning can never break a model: the gate on images that teach it, engineers only, and
compare-and-set on versions (no change silently lost, also between two processes)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CATEGORY

from core.auth import COMMAND_LINE as ENGINEER
from core.auth import Actor
from core.errors import ConfigError, PermissionDeniedError, VersionConflictError

pytestmark = pytest.mark.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]
INSPECTOR = Actor("ivy", "inspector")


def _folder(tmp_path: Path, name: str, sources: list[Path]) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for f in sources:
        shutil.copy(f, folder / f"{f.parent.parent.parent.name}_{f.name}")
    return folder


def _goods(root: Path, category: str, sl: slice) -> list[Path]:
    return sorted((root / category / "test" / "good").glob("*.png"))[sl]


def _versions(models: Path) -> list[str]:
    return sorted(p.name for p in (models / "patchcore" / TINY_CATEGORY).iterdir() if p.name.startswith("v"))


# --- The gate -----------------------------------------------------------------------------------


def test_another_categorys_images_are_refused_by_name_and_nothing_is_written(
    models: Path, tiny_data_root: Path, tmp_path: Path, capsys
) -> None:
    """The grid-into-tile update: refused, both grid images named; --force lets it through and reports."""
    from core.cli import main

    folder = _folder(
        tmp_path, "offered", _goods(tiny_data_root, "grid", slice(0, 2)) + _goods(tiny_data_root, TINY_CATEGORY, slice(0, 1))
    )
    assert main(["update-bank", "--category", TINY_CATEGORY, "--images", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: 2 of 3 image(s) do not look like {TINY_CATEGORY}")
    assert err[0].count("grid_") == 2 and "tile_" not in err[0] and "--force" in err[0]
    assert _versions(models) == ["v0001"]  # nothing written

    assert main(["update-bank", "--category", TINY_CATEGORY, "--images", str(folder), "--force"]) == 0
    out = capsys.readouterr().out
    assert "new version v0002" in out and "held-out goods of the calibration split flagged:" in out
    assert "added on --force although they do not look like tile: grid_" in out
    from core.learning.versions import load_detector

    assert "foreign-looking image(s) added on --force" in load_detector("patchcore", TINY_CATEGORY).meta.lineage["change"]


def test_the_gate_passes_own_goods_and_confirmed_false_alarms(models: Path, tiny_data_root: Path) -> None:
    """Goods of the category (and its defects: a confirmed false alarm is what an update is for) pass."""
    from core.data.image_io import load_image
    from core.learning import gate
    from core.learning.versions import load_detector

    det = load_detector("patchcore", TINY_CATEGORY)
    own = sorted((tiny_data_root / TINY_CATEGORY / "test").glob("*/*.png"))
    foreign = _goods(tiny_data_root, "grid", slice(0, 2)) + _goods(tiny_data_root, "leather", slice(0, 2))
    screened = gate.screen(det, [(str(f), load_image(f.read_bytes(), str(f))) for f in own + foreign])
    assert [s.foreign for s in screened] == [False] * len(own) + [True] * len(foreign)
    assert any(det.raw_to_normalised(s.raw_score) >= 0.5 for s in screened[: len(own)])  # some own images are DEFECT
    assert gate.refusal(screened[: len(own)], TINY_CATEGORY) is None


def test_update_from_history_is_gated_too(models: Path, tiny_data_root: Path) -> None:
    from core.history import History
    from core.learning.versions import load_detector
    from core.services import feedback_loop, inspection

    det = load_detector("patchcore", TINY_CATEGORY)
    history = History()
    files = _goods(tiny_data_root, "grid", slice(0, 1)) + _goods(tiny_data_root, TINY_CATEGORY, slice(0, 2))
    items = [(f.name, inspection.load_image(f.read_bytes(), f.name), inspection.sha256_of(f.read_bytes())) for f in files]
    for r in inspection.inspect_images(det, items, history=history):
        history.set_feedback(r.inspection_id, "false_alarm" if r.judgement.verdict == "DEFECT" else "correct")
    with pytest.raises(ConfigError, match=f"1 of 3 image\\(s\\) do not look like {TINY_CATEGORY}"):
        feedback_loop.update_bank(TINY_CATEGORY, from_history=True, actor=ENGINEER, history=history)
    assert _versions(models) == ["v0001"]


# --- Engineers only -----------------------------------------------------------------------------


def test_an_inspector_cannot_change_a_model_in_the_service_layer(models: Path, tiny_data_root: Path) -> None:
    from core.learning.versions import derived_meta, load_detector, save_derived
    from core.services import feedback_loop

    det = load_detector("patchcore", TINY_CATEGORY)
    meta = derived_meta(det, kind="recalibrate", change="threshold x2", inspections=[], who="eng")
    meta.calibration.image_threshold *= 2
    save_derived(det, meta)
    folder = str(tiny_data_root / TINY_CATEGORY / "test" / "good")
    for actor in (INSPECTOR, Actor("nobody", None)):
        with pytest.raises(PermissionDeniedError, match="engineer"):
            feedback_loop.update_bank(TINY_CATEGORY, images=folder, actor=actor)
        with pytest.raises(PermissionDeniedError, match="engineer"):
            feedback_loop.apply_recalibration("patchcore", TINY_CATEGORY, actor=actor)
        with pytest.raises(PermissionDeniedError, match="engineer"):
            feedback_loop.restore_version("patchcore", TINY_CATEGORY, "v0001", actor=actor)
    assert _versions(models) == ["v0001", "v0002"]
    assert feedback_loop.restore_version("patchcore", TINY_CATEGORY, "v0001", actor=Actor("eng", "engineer")) == "v0003"
    assert load_detector("patchcore", TINY_CATEGORY).meta.lineage["who"] == "eng"


def test_choosing_an_exports_runtime_is_an_engineers_action() -> None:
    from core.export.exporter import use_export

    with pytest.raises(PermissionDeniedError, match="choosing the runtime a model version runs with"):
        use_export(None, actor=INSPECTOR)  # refused before the export is even looked at


def test_no_api_route_changes_a_model(app_env) -> None:
    """The API's writes are inspections and feedback; a model changes through an engineer's CLI or page only."""
    from core.api.app import create_api

    paths = create_api().openapi()["paths"]
    writes = sorted((path, method) for path, ops in paths.items() for method in ops if method not in {"get", "head", "options"})
    assert len(paths) >= 6 and writes == [
        ("/v1/inspect", "post"),
        ("/v1/inspect/batch", "post"),
        ("/v1/inspections/{inspection_id}/feedback", "post"),
    ]


# --- Compare-and-set ----------------------------------------------------------------------------


def test_a_change_from_a_version_that_is_no_longer_the_newest_is_refused(models: Path) -> None:
    from core.learning.versions import derived_meta, load_detector, restore, save_derived

    a = load_detector("patchcore", TINY_CATEGORY)
    b = load_detector("patchcore", TINY_CATEGORY)
    assert save_derived(a, derived_meta(a, kind="recalibrate", change="first", inspections=[], who="ann")) == "v0002"
    with pytest.raises(VersionConflictError, match=r"computed from v0001: v0002 \(recalibrate by ann at .*: first\)"):
        save_derived(b, derived_meta(b, kind="recalibrate", change="second", inspections=[], who="bob"))
    assert _versions(models) == ["v0001", "v0002"]
    with pytest.raises(ConfigError, match="nothing to restore"):  # the version in use: no redundant copy
        restore("patchcore", TINY_CATEGORY, "v0002", who="ann")
    assert _versions(models) == ["v0001", "v0002"]


def test_a_bank_update_that_loses_the_race_is_computed_again_on_the_winner(
    models: Path, tiny_data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.learning import versions
    from core.learning.versions import derived_meta, load_detector
    from core.services import feedback_loop

    real = versions.save_derived
    raced: list[str] = []

    def other_change_first(detector, meta, models_dir=None):
        if not raced:  # another station publishes a threshold while this update was computed
            other = load_detector("patchcore", TINY_CATEGORY)
            raced.append(real(other, derived_meta(other, kind="recalibrate", change="meanwhile", inspections=[], who="bob")))
        return real(detector, meta, models_dir)

    monkeypatch.setattr(versions, "save_derived", other_change_first)
    folder = _folder(tmp_path, "goods", _goods(tiny_data_root, TINY_CATEGORY, slice(0, 2)))
    done = feedback_loop.update_bank(TINY_CATEGORY, images=str(folder), actor=ENGINEER)
    assert raced == ["v0002"] and done.version == "v0003"
    assert done.notes[0].startswith("v0002 (recalibrate by bob") and "computed again on it" in done.notes[0]
    new = load_detector("patchcore", TINY_CATEGORY)
    assert new.meta.lineage["parent"] == "v0002" and new.meta.lineage["kind"] == "update-bank"


def test_two_concurrent_update_bank_processes_lose_neither(models: Path, tiny_data_root: Path, tmp_path: Path) -> None:
    """Two `update-bank` commands at once: the newest version holds both sets of images, or one refused."""
    import torch

    from core.learning.versions import load_detector

    n_old = load_detector("patchcore", TINY_CATEGORY).module.model.memory_bank.shape[0]
    a = _folder(tmp_path, "a", _goods(tiny_data_root, TINY_CATEGORY, slice(0, 2)))
    b = _folder(tmp_path, "b", _goods(tiny_data_root, TINY_CATEGORY, slice(2, 4)))
    env = dict(os.environ)  # INSPECT_MODELS_DIR and the history of this test
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "core", "update-bank", "--category", TINY_CATEGORY, "--images", str(f), "--who", f.name],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for f in (a, b)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    ok = [r for r in results if r[0] == 0]
    assert ok, results
    for code, _, err in results:
        assert code == 0 or "run the change again on the newest version" in err, err
    newest = load_detector("patchcore", TINY_CATEGORY)
    chain = [newest.meta.lineage]
    while chain[-1].get("parent") not in (None, "v0001"):
        chain.append(load_detector("patchcore", TINY_CATEGORY, chain[-1]["parent"]).meta.lineage)
    succeeded = sorted(f.name for (code, _, _), f in zip(results, (a, b), strict=True) if code == 0)
    assert sorted(lin["who"] for lin in chain) == succeeded  # every run that said "done" is in the newest version
    added = sum(
        int(lin["change"].split(" -> ")[1].split()[0]) - int(lin["change"].split("memory bank ")[1].split()[0]) for lin in chain
    )
    assert newest.module.model.memory_bank.shape[0] == n_old + added
    assert torch.equal(
        newest.module.model.memory_bank[:n_old], load_detector("patchcore", TINY_CATEGORY, "v0001").module.model.memory_bank
    )
