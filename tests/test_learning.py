"""Learning from inspectors (issue 13): versions and restore, recalibration arithmetic, memory-bank
growth, drift and the out-of-distribution note, the CLI's refusals and the History page's button."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CATEGORY

from core.auth import COMMAND_LINE as ENGINEER
from core.auth import Actor
from core.learning import drift, recalibration

pytestmark = pytest.mark.filterwarnings("ignore")


# --- Pure arithmetic ---------------------------------------------------------------------------


def test_recalibration_arithmetic_on_a_hand_made_case() -> None:
    # goods 1..4 (calibration) plus reviewed goods 5 and 6 (false alarms at threshold 4.5); defects 9, 10
    reviewed = [(1, 0, 5.0), (2, 0, 6.0), (3, 1, 9.0), (4, 1, 10.0), (5, 0, 5.5)]
    p = recalibration.propose(4.5, reviewed, [1.0, 2.0, 3.0, 4.0])
    assert p.ok and p.proposed == pytest.approx(7.5)  # midway between the highest good (6) and lowest defect (9)
    assert (p.reviewed_before.false_alarms, p.reviewed_before.missed) == (3, 0)
    assert (p.reviewed_after.false_alarms, p.reviewed_after.missed) == (0, 0)
    assert p.inspection_ids == [1, 2, 3, 4, 5]
    # overlapping: the cut with fewest errors, in the widest gap among ties
    assert recalibration.best_threshold([1.0, 2.0, 8.0], [3.0, 9.0, 10.0]) == pytest.approx(2.5)
    # only goods: just above the highest one
    t = recalibration.best_threshold([1.0, 2.0, 6.0], [])
    assert 6.0 < t < 6.0001
    # a missed defect pulls the threshold down below it
    p = recalibration.propose(8.0, [(1, 1, 7.0), (2, 0, 3.0), (3, 0, 2.0), (4, 0, 4.0), (5, 1, 9.0)], [1.0])
    assert p.proposed == pytest.approx(5.5) and p.reviewed_before.missed == 1 and p.reviewed_after.missed == 0


def test_reviews_that_agree_with_the_current_threshold_do_not_move_it() -> None:
    # training's threshold (5.0) sits above the highest calibration good (4.0); five confirmed goods
    # below it: no error to fix, so it stays (it used to drop to just above 4.2 and raise false alarms)
    reviewed = [(i, 0, s) for i, s in enumerate([3.0, 3.5, 4.2, 2.0, 1.5], start=1)]
    p = recalibration.propose(5.0, reviewed, [1.0, 2.0, 4.0])
    assert p.ok and p.proposed == 5.0 and "stays where it is" in p.notes[0]
    # a false alarm at 6.0 does move it, just above that good
    p = recalibration.propose(5.0, [*reviewed, (6, 0, 6.0)], [1.0, 2.0, 4.0])
    assert 6.0 < p.proposed < 6.0001 and p.reviewed_after.false_alarms == 0
    # with defects, the current threshold is kept when it ties with the widest-gap cut
    assert recalibration.best_threshold([1.0, 2.0], [5.0, 6.0], current=4.5) == 4.5
    assert recalibration.best_threshold([1.0, 2.0], [5.0, 6.0], current=5.5) == pytest.approx(3.5)


def test_too_few_reviews_are_refused_plainly() -> None:
    p = recalibration.propose(4.5, [(1, 0, 5.0), (2, 0, 6.0)], [1.0, 2.0])
    assert not p.ok and p.proposed is None and "too few reviews" in p.refusal and "at least 5" in p.refusal


def test_labels_from_feedback() -> None:
    from core.history import InspectionRecord

    def rec(verdict: str, feedback: str | None) -> InspectionRecord:
        return InspectionRecord("a.png", "ab", "tile", "patchcore", 0.6, 0.5, verdict, feedback=feedback)

    assert recalibration.label_of(rec("GOOD", "correct")) == 0
    assert recalibration.label_of(rec("DEFECT", "false_alarm")) == 0
    assert recalibration.label_of(rec("DEFECT", "correct")) == 1
    assert recalibration.label_of(rec("GOOD", "missed_defect")) == 1
    assert recalibration.label_of(rec("GOOD", None)) is None


def test_drift_warns_when_recent_scores_leave_the_calibration() -> None:
    from core.history import InspectionRecord
    from core.registry import Calibration

    cal = Calibration(10.0, 10.0, 0.0, 20.0, 0.0, 20.0)
    goods = [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 9.5, 5.5]

    def rec(raw: float, feedback: str | None = None) -> InspectionRecord:
        return InspectionRecord(
            "a",
            "ab",
            "tile",
            "patchcore",
            0,
            0.5,
            "DEFECT" if raw >= 10 else "GOOD",
            raw_score=raw,
            feedback=feedback,
            model_version="v0002",
        )

    calm = drift.drift_report([rec(6.0) for _ in range(30)], cal, "v0002", goods)
    assert calm.warnings == [] and calm.over_threshold == 0
    drifted = [rec(11.0, "false_alarm") for _ in range(20)] + [rec(6.0) for _ in range(10)]
    report = drift.drift_report(drifted, cal, "v0002", goods)
    assert report.over_threshold == 20 and len(report.warnings) == 2
    assert "20 of the last 30" in report.warnings[0] and "confirmed good" in report.warnings[1]
    other_version = drift.drift_report(drifted, cal, "v0009", goods)
    assert other_version.recent_scores == []  # only the version in use is compared with its calibration


# --- With the tiny trained PatchCore, in a private models folder ------------------------------


def _good_images(root: Path, category: str, n: int) -> list[np.ndarray]:
    from core.data.image_io import load_image

    files = sorted((root / category / "test" / "good").glob("*.png"))[:n]
    return [load_image(f.read_bytes(), str(f)) for f in files]


def test_versions_are_kept_and_restore_gives_byte_identical_scores(models: Path, tiny_data_root: Path) -> None:
    from core.learning import versions
    from core.learning.versions import derived_meta, load_detector, save_derived

    images = _good_images(tiny_data_root, TINY_CATEGORY, 2) + _good_images(tiny_data_root, "grid", 1)
    first = load_detector("patchcore", TINY_CATEGORY)
    before = [(p.raw_score, p.score, p.anomaly_map.tobytes()) for p in first.predict_batch(images)]
    meta = derived_meta(first, kind="recalibrate", change="threshold x2", inspections=[7, 3], who="ann")
    meta.calibration.image_threshold *= 2
    meta.calibration.image_max = max(meta.calibration.image_max, meta.calibration.image_threshold)
    v2 = save_derived(first, meta)
    assert v2 == "v0002"
    changed = load_detector("patchcore", TINY_CATEGORY)
    assert changed.version == "v0002" and changed.meta.lineage["parent"] == "v0001"
    assert changed.meta.lineage["inspections"] == [3, 7] and changed.meta.lineage["who"] == "ann"
    assert [p.score for p in changed.predict_batch(images)] != [s for _, s, _ in before]

    v3 = versions.restore("patchcore", TINY_CATEGORY, "v0001", who="bob")
    infos = versions.list_versions("patchcore", TINY_CATEGORY)
    assert [i.version for i in infos] == ["v0001", "v0002", "v0003"] and v3 == "v0003"  # nothing pruned
    assert infos[-1].kind == "restore" and infos[-1].parent == "v0002" and infos[-1].is_latest
    assert (models / "patchcore" / TINY_CATEGORY / "v0003" / "model.pt").read_bytes() == (
        models / "patchcore" / TINY_CATEGORY / "v0001" / "model.pt"
    ).read_bytes()
    restored = load_detector("patchcore", TINY_CATEGORY)
    after = [(p.raw_score, p.score, p.anomaly_map.tobytes()) for p in restored.predict_batch(images)]
    assert after == before  # byte-identical scores and maps
    assert load_detector("patchcore", TINY_CATEGORY, "v0002").meta.lineage["kind"] == "recalibrate"


def test_bank_growth_keeps_the_old_patches_and_adds_the_coreset_of_the_new(models: Path, tiny_data_root: Path) -> None:
    import torch

    from core.learning import bank_update
    from core.learning.versions import load_detector
    from core.models.patchcore.coreset import greedy_coreset_indices

    det = load_detector("patchcore", TINY_CATEGORY)
    old = det.module.model.memory_bank.clone()
    images = _good_images(tiny_data_root, TINY_CATEGORY, 3)
    growth = bank_update.grow(det, images)
    ratio = det.meta.config["coreset_ratio"]
    flat = bank_update.embed(det, images).rows.reshape(-1, old.shape[1])
    torch.manual_seed(bank_update.CORESET_SEED)
    np.random.seed(bank_update.CORESET_SEED)
    expected = flat[greedy_coreset_indices(flat, ratio, progress=False)]
    assert growth.n_old == old.shape[0]
    assert torch.equal(growth.bank[: old.shape[0]], old)  # the old rows, first and unchanged
    assert torch.allclose(growth.bank[old.shape[0] :], expected)  # then the greedy coreset of the new patches
    assert growth.bank.shape[0] == old.shape[0] + int(flat.shape[0] * ratio)
    # scoring from embeddings equals the model's own forward pass
    raw = [p.raw_score for p in det.predict_batch(images)]
    assert bank_update.score(det, bank_update.embed(det, images))[0] == pytest.approx(raw, rel=1e-5)


def test_leave_one_out_scores_each_new_image_against_the_bank_without_it(models: Path, tiny_data_root: Path) -> None:
    """Each confirmed good's refresh score is its score against the grown bank minus its own rows.

    The reference recomputes every score with the search's cache emptied first; the refresh builds
    one bank per image, which once reused the previous bank's cached norms (scores of 0.0).
    """
    import torch

    from core.learning import bank_update
    from core.learning.versions import load_detector

    det = load_detector("patchcore", TINY_CATEGORY)
    images = _good_images(tiny_data_root, TINY_CATEGORY, 4)
    growth = bank_update.grow(det, images)
    refresh = bank_update.refreshed_calibration(det, growth, None, det.meta.calibration, "test")
    expected = []
    for j in range(len(images)):
        keep = torch.ones(growth.bank.shape[0], dtype=torch.bool)
        keep[growth.n_old :] = growth.source != j
        det.module.model._bank_key = None  # noqa: SLF001 - no cached norms: the reference is computed afresh
        one = bank_update.Embedded(growth.embedded.rows[j : j + 1], growth.embedded.hw, growth.embedded.output_size)
        expected += bank_update.score(det, one, growth.bank[keep].clone())[0]
    assert refresh.new_goods == pytest.approx(expected, rel=1e-5)
    own = bank_update.score(det, growth.embedded, growth.bank)[0]  # with their own rows in the bank
    assert min(expected) > 0 and all(e >= o for e, o in zip(expected, own, strict=True))


def test_a_bank_updates_threshold_stays_under_a_known_defect() -> None:
    from core.learning.bank_update import guarded_threshold

    assert guarded_threshold([1.0, 2.0, 5.0], []) == 5.0  # no known defect: the highest good
    assert guarded_threshold([1.0, 2.0, 5.0], [6.0]) == 5.0  # defects above it: the same
    assert guarded_threshold([1.0, 5.0], [5.0]) == 5.0  # a score at the threshold is DEFECT: still caught
    # a good at 5 above a known defect at 3: midway between that defect and the highest good under it
    assert guarded_threshold([1.0, 2.0, 5.0], [3.0, 6.0]) == pytest.approx(2.5)
    assert guarded_threshold([4.0, 5.0], [3.0]) == 3.0  # every good above it: at the defect


def test_update_bank_keeps_the_known_defects_caught(models: Path, tiny_data_root: Path, tmp_path: Path) -> None:
    """A confirmed "good" that scores like a defect must not lift the threshold over defects inspectors confirmed."""
    from core.history import History
    from core.learning.versions import load_detector
    from core.services import feedback_loop, inspection

    det = load_detector("patchcore", TINY_CATEGORY)
    history = History()
    files = sorted(f for f in (tiny_data_root / TINY_CATEGORY / "test").glob("*/*.png") if f.parent.name != "good")
    items = [(f.name, inspection.load_image(f.read_bytes(), f.name), inspection.sha256_of(f.read_bytes())) for f in files]
    judged = inspection.inspect_images(det, items, history=history)
    caught = [r for r in judged if r.judgement.verdict == "DEFECT"]
    assert caught
    for r in caught:
        history.set_feedback(r.inspection_id, "correct")
    folder = tmp_path / "confirmed"
    folder.mkdir()
    for f in sorted((tiny_data_root / TINY_CATEGORY / "test" / "good").glob("*.png"))[:2]:
        shutil.copy(f, folder / f.name)
    for f in sorted((tiny_data_root / "grid" / "test" / "good").glob("*.png"))[:1]:  # another material
        shutil.copy(f, folder / f"foreign_{f.name}")

    # the grid image is refused by the gate (tested below); --force lets it in to test the guard
    done = feedback_loop.update_bank(TINY_CATEGORY, images=str(folder), history=history, actor=ENGINEER, force=True)
    assert done.defects_known == done.defects_caught_before == done.defects_caught_after == len(caught)
    new = load_detector("patchcore", TINY_CATEGORY)
    assert new.version == done.version and new.meta.calibration.image_threshold == done.threshold_after
    assert "kept under known defects" in new.meta.calibration.source
    assert any("under known defect(s) #" in n and "recalibrate" in n for n in done.notes)
    # the new version itself, run on the defect images, still calls every one of them DEFECT
    raw = [p.raw_score for p in new.predict_batch([r.image for r in caught])]
    assert min(raw) >= done.threshold_after


def test_update_bank_writes_a_version_and_efficientad_is_refused(models: Path, tiny_data_root: Path) -> None:
    from core.errors import ConfigError
    from core.learning.versions import load_detector
    from core.services import feedback_loop

    folder = tiny_data_root / TINY_CATEGORY / "test" / "good"
    done = feedback_loop.update_bank(TINY_CATEGORY, images=str(folder), actor=Actor("ann", "engineer"))
    det = load_detector("patchcore", TINY_CATEGORY)
    assert det.version == done.version == "v0002" and det.meta.lineage["kind"] == "update-bank"
    assert det.module.model.memory_bank.shape[0] == done.n_old + done.n_added > done.n_old
    assert "refreshed after adding" in det.meta.calibration.source
    with pytest.raises(ConfigError, match="EfficientAD has no memory bank"):
        feedback_loop.update_bank(TINY_CATEGORY, model="efficientad", images=str(folder), actor=ENGINEER)


def test_ood_note_on_a_foreign_image(models: Path, tiny_data_root: Path) -> None:
    from core.learning.versions import load_detector
    from core.services import feedback_loop, inspection

    det = load_detector("patchcore", TINY_CATEGORY)
    own = det.predict(_good_images(tiny_data_root, TINY_CATEGORY, 1)[0])
    foreign = det.predict(_good_images(tiny_data_root, "grid", 1)[0])
    assert feedback_loop.ood_note(own.raw_score, inspection.defect_area(own), det) is None
    note = feedback_loop.ood_note(foreign.raw_score, inspection.defect_area(foreign), det)
    assert note and f"does not look like a {TINY_CATEGORY} image" in note and "Wrong category?" in note


def test_cli_refuses_bad_input_with_one_error_line(models: Path, tiny_data_root: Path, capsys) -> None:
    from core.cli import main

    assert main(["recalibrate", "--category", TINY_CATEGORY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: too few reviews to move the threshold safely")
    assert main(["update-bank", "--category", TINY_CATEGORY, "--model", "efficientad", "--from-history"]) == 2
    assert capsys.readouterr().err.startswith("error: EfficientAD has no memory bank")
    assert main(["update-bank", "--category", "nosuch", "--from-history"]) == 2
    assert capsys.readouterr().err.startswith("error: no trained patchcore for 'nosuch'")
    assert main(["versions", "--category", TINY_CATEGORY, "--restore", "v0042"]) == 2
    assert "has no version 'v0042'" in capsys.readouterr().err
    assert sorted(p.name for p in (models / "patchcore" / TINY_CATEGORY).iterdir()) == ["v0001"]  # nothing written


def test_recalibrate_from_history_applies_a_new_version(models: Path, tiny_data_root: Path, capsys) -> None:
    from core.cli import main
    from core.history import History
    from core.learning.versions import load_detector
    from core.services import inspection

    det = load_detector("patchcore", TINY_CATEGORY)
    history = History()
    files = sorted((tiny_data_root / TINY_CATEGORY / "test").glob("*/*.png"))
    items = [(f.name, inspection.load_image(f.read_bytes(), f.name), inspection.sha256_of(f.read_bytes())) for f in files]
    good_names = {f.name for f in files if f.parent.name == "good"}  # names repeat across folders: judged by index
    for f, result in zip(files, inspection.inspect_images(det, items, history=history), strict=True):
        assert history.get(result.inspection_id).model_version == "v0001"
        good, said_good = f.parent.name == "good", result.judgement.verdict == "GOOD"
        feedback = "correct" if good == said_good else ("false_alarm" if good else "missed_defect")
        history.set_feedback(result.inspection_id, feedback)
    assert good_names
    assert main(["recalibrate", "--category", TINY_CATEGORY, "--apply", "--who", "ann"]) == 0
    out = capsys.readouterr().out
    assert "threshold (raw score)" in out and "applied: new version v0002" in out
    new = load_detector("patchcore", TINY_CATEGORY)
    assert new.meta.lineage["kind"] == "recalibrate" and new.meta.lineage["who"] == "ann"
    assert len(new.meta.lineage["inspections"]) == len(files)


# --- The History page ---------------------------------------------------------------------------


def test_history_button_grows_the_memory_bank(app_test, app_env: Path, tiny_data_root: Path, tmp_path: Path, monkeypatch) -> None:
    from core.history import History
    from core.learning.versions import load_detector
    from core.services import inspection

    target = tmp_path / "models"
    shutil.copytree(app_env / "models", target)
    monkeypatch.setenv("INSPECT_MODELS_DIR", str(target))
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(tmp_path / "history.sqlite"))
    monkeypatch.setenv("INSPECT_CACHE", str(tmp_path / "cache"))
    det = load_detector("patchcore", TINY_CATEGORY)
    history = History()
    files = sorted((tiny_data_root / TINY_CATEGORY / "test" / "good").glob("*.png"))
    items = [(f.name, inspection.load_image(f.read_bytes(), f.name), inspection.sha256_of(f.read_bytes())) for f in files]
    ids = []
    for result in inspection.inspect_images(det, items, history=history):
        history.set_feedback(result.inspection_id, "false_alarm" if result.judgement.verdict == "DEFECT" else "correct")
        ids.append(result.inspection_id)

    at = app_test()
    at.run()
    at.switch_page("pages/inspection_history.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.dataframe) == 1
    button = at.button(key="history_update_bank")
    assert not button.disabled
    button.click().run()
    assert not at.exception, [e.value for e in at.exception]
    new = load_detector("patchcore", TINY_CATEGORY)
    assert new.version == "v0002" and new.meta.lineage["kind"] == "update-bank"
    assert new.meta.lineage["inspections"] == sorted(ids)
    assert any("New version v0002" in s.value for s in at.success)
    assert at.button(key="history_update_bank").disabled  # those inspections are in the bank now


# --- Training's threshold floor counts every held-out good ------------------------------------


def test_the_training_floor_is_the_highest_of_every_held_out_good_file(tmp_path: Path) -> None:
    """guard_thresholds scores the files it is given, all of them: the floor is their maximum."""
    import torch
    from PIL import Image

    from core.training import guard_thresholds

    paths = []
    for i, level in enumerate([10, 200, 60, 30]):  # the brightest file is not among the first two
        path = tmp_path / f"good_{i}.png"
        Image.fromarray(np.full((16, 16, 3), level, dtype=np.uint8)).save(path)
        paths.append(str(path))

    class Raw:
        def __init__(self, x: torch.Tensor) -> None:
            self.pred_score = x.mean(dim=(1, 2, 3))  # the score is the image's brightness
            self.anomaly_map = x.mean(dim=1)

    class Post(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._image_threshold = torch.tensor(0.05)
            self._pixel_threshold = torch.tensor(0.05)
            self.image_max, self.pixel_max = torch.tensor(0.1), torch.tensor(0.1)

        @property
        def image_threshold(self) -> torch.Tensor:
            return self._image_threshold

        @property
        def pixel_threshold(self) -> torch.Tensor:
            return self._pixel_threshold

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))  # guard_thresholds reads the device from it

        def forward(self, x: torch.Tensor) -> Raw:
            return Raw(x)

    class Module(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = Model()
            self.post_processor = Post()

        def pre_processor(self, x: torch.Tensor) -> torch.Tensor:
            return x

    module = Module()
    guard_thresholds(module, paths, batch=2)
    assert float(module.post_processor.image_threshold) == pytest.approx(200 / 255, abs=1e-6)
    assert float(module.post_processor.image_max) >= float(module.post_processor.image_threshold)


def test_a_trained_threshold_is_above_every_held_out_good(tiny_patchcore, tiny_data_root: Path) -> None:
    """Both halves of the calibration split are good parts (anomalib gives one half synthetic defects
    for its F1 fit): training's image threshold is at least the raw score of each original."""
    from core.inference.detector import load_detector
    from core.learning import profile

    det = load_detector("patchcore", TINY_CATEGORY)
    goods, _ = profile.reference_images(str(tiny_data_root), TINY_CATEGORY)
    assert len(goods) >= 2
    scores = profile.raw_scores(det, goods)
    assert det.meta.calibration.image_threshold >= max(scores) - 1e-4


def test_recalibrate_without_reviews_refuses_before_scoring_anything(models: Path, monkeypatch) -> None:
    from core.learning import profile
    from core.services import feedback_loop

    def never(*_a, **_k):
        raise AssertionError("the calibration split was scored for a proposal that is refused anyway")

    monkeypatch.setattr(profile, "profile", never)
    proposal, _ = feedback_loop.propose_recalibration("patchcore", TINY_CATEGORY)
    assert not proposal.ok and proposal.refusal.startswith("too few reviews")


def test_drift_is_measured_per_line_station(models: Path, tmp_path: Path) -> None:
    """One camera drifting while the other does not: the station filter shows which one."""
    from core.history import History, InspectionRecord
    from core.learning.versions import load_detector
    from core.services import feedback_loop

    det = load_detector("patchcore", TINY_CATEGORY)
    cal = det.meta.calibration
    history = History(tmp_path / "stations.sqlite")
    for i in range(20):
        for station, raw in (("line-1", cal.image_threshold * 0.5), ("line-2", cal.image_threshold * 1.5)):
            verdict = "DEFECT" if raw >= cal.image_threshold else "GOOD"
            history.add(
                InspectionRecord(
                    f"{i}.png",
                    f"{i:064x}",
                    TINY_CATEGORY,
                    "patchcore",
                    0.5,
                    0.5,
                    verdict,
                    raw_score=raw,
                    model_version=det.version,
                    station=station,
                )
            )
    calm = feedback_loop.drift(det, history, compute=False, station="line-1")
    drifting = feedback_loop.drift(det, history, compute=False, station="line-2")
    both = feedback_loop.drift(det, history, compute=False)
    assert (calm.over_threshold, len(calm.recent_scores), calm.warnings) == (0, 20, [])
    assert drifting.over_threshold == 20 and drifting.warnings
    assert len(both.recent_scores) == 40 and both.over_threshold == 20  # both stations mixed
