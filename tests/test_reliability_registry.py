"""Broken models never crash: one-line errors in the CLI and on the pages; saves are one rename.

Every test works on a copy of the session's tiny PatchCore in its own models folder
(INSPECT_MODELS_DIR), so breaking it never touches the model the other tests use.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import TINY_CATEGORY

from core import registry
from core.errors import ModelNotTrainedError, ModelUnreadableError

pytestmark = pytest.mark.filterwarnings("ignore")

RETRAIN = f"retrain with `python -m core train --model patchcore --category {TINY_CATEGORY}`"


@pytest.fixture
def models(tiny_patchcore, inspect_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the trained models folder, made the current one."""
    copy = tmp_path / "models"
    shutil.copytree(inspect_home / "models", copy)
    monkeypatch.setenv("INSPECT_MODELS_DIR", str(copy))
    return copy


def current() -> registry.ModelFiles:
    return registry.current_files("patchcore", TINY_CATEGORY)


def edit_meta(change: Callable[[dict], object]) -> None:
    meta = json.loads(current().meta_file.read_text())
    change(meta)
    current().meta_file.write_text(json.dumps(meta))


def string_meta() -> None:
    current().meta_file.write_text('"a string"')


def image_size_big() -> None:
    edit_meta(lambda m: m["config"].update(image_size="big"))


def other_checkpoint() -> None:
    """model.pt from another save (what the old two-rename save left after a crash)."""
    state = torch.load(current().checkpoint, weights_only=True)
    state["model.memory_bank"] = state["model.memory_bank"][:7]
    torch.save(state, current().checkpoint)


def truncated_checkpoint() -> None:
    data = current().checkpoint.read_bytes()
    current().checkpoint.write_bytes(data[: len(data) // 2])


def layers_do_not_fit() -> None:
    """Metadata whose layers give other features than the stored memory bank (seen only on load)."""
    edit_meta(lambda m: m["config"].update(layers=["blocks.1", "blocks.4"]))


BREAKAGES = {
    "string meta": (string_meta, "meta.json: expected an object, got 'a string'"),
    "image_size big": (image_size_big, "meta.json: image_size must be an integer, got 'big'"),
    "other checkpoint": (other_checkpoint, "model.pt is not the one meta.json was saved with"),
    "truncated checkpoint": (truncated_checkpoint, "model.pt is not the one meta.json was saved with"),
    "layers do not fit": (layers_do_not_fit, "model.pt does not fit meta.json: memory bank"),
}
#: Caught by listing the models (cheap checks), so every page says so without loading the model.
LISTED = ["string meta", "image_size big", "other checkpoint", "truncated checkpoint"]


def test_the_reference_copy_is_healthy(models: Path) -> None:
    from core.inference.detector import load_detector

    assert registry.list_trained_with_problems() == (registry.list_trained(), {})
    assert load_detector("patchcore", TINY_CATEGORY).meta.checkpoint["sha256"]


@pytest.mark.parametrize("case", BREAKAGES, ids=list(BREAKAGES))
def test_broken_model_raises_one_line_unreadable_error(models: Path, case: str) -> None:
    from core.inference.detector import load_detector

    breakage, reason = BREAKAGES[case]
    breakage()
    with pytest.raises(ModelUnreadableError) as info:
        load_detector("patchcore", TINY_CATEGORY)
    message = str(info.value)
    assert message.startswith(f"model patchcore/{TINY_CATEGORY} is unreadable (") and "\n" not in message
    assert reason in message and message.endswith(RETRAIN)
    assert isinstance(info.value, ModelNotTrainedError)  # `setup` retrains it like a missing one


@pytest.mark.parametrize("case", LISTED)
def test_listing_reports_a_broken_model_instead_of_hiding_it(models: Path, case: str) -> None:
    BREAKAGES[case][0]()
    metas, problems = registry.list_trained_with_problems()
    assert metas == [] and registry.list_trained() == []
    assert list(problems) == [("patchcore", TINY_CATEGORY)]
    assert BREAKAGES[case][1] in problems[("patchcore", TINY_CATEGORY)]


@pytest.mark.parametrize("case", BREAKAGES, ids=list(BREAKAGES))
def test_evaluate_cli_prints_one_line_and_exits_2(models: Path, case: str, capsys, tmp_path, monkeypatch) -> None:
    from core.cli import main

    monkeypatch.setenv("INSPECT_RESULTS", str(tmp_path / "results.json"))
    BREAKAGES[case][0]()
    assert main(["evaluate", "--model", "patchcore", "--category", TINY_CATEGORY, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: model patchcore/{TINY_CATEGORY} is unreadable (") and err[0].endswith(RETRAIN)
    assert "no trained model matches" not in err[0]


def test_evaluate_keeps_going_past_a_broken_model_and_a_corrupt_results_file(models: Path, capsys, tmp_path, monkeypatch) -> None:
    """One broken model and a corrupt results.json: the good model is evaluated and written anyway."""
    from core.cli import main

    broken = models / "patchcore" / "leather"
    shutil.copytree(models / "patchcore" / TINY_CATEGORY, broken)
    for meta_file in broken.glob("*/meta.json"):
        meta_file.write_text('"a string"')
    results = tmp_path / "results.json"
    corrupt = b'{"version": 1, "models": {"patchcore/old": {"image_auroc": 0.5'
    results.write_bytes(corrupt)
    monkeypatch.setenv("INSPECT_RESULTS", str(results))

    assert main(["evaluate", "--model", "patchcore", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert f"patchcore/{TINY_CATEGORY}" in out and "results written to" in out
    lines = [line for line in err.splitlines() if line.strip() and "Evaluating" not in line]  # not the progress bar
    assert len(lines) == 2, lines
    [aside] = list(tmp_path.glob("results.json.corrupt-*"))
    assert lines[0].startswith("warning: results.json was unreadable (not JSON: ")
    assert lines[0].endswith(f"; kept it as {aside} and wrote a fresh one")
    assert lines[1].startswith("error: model patchcore/leather is unreadable (meta.json: expected an object")
    assert aside.read_bytes() == corrupt
    assert list(json.loads(results.read_text())["models"]) == [f"patchcore/{TINY_CATEGORY}"]


# --- Saving: one version folder, renamed once ------------------------------------------------


def resave(data_hash: str) -> Path:
    from core.inference.detector import load_detector

    detector = load_detector("patchcore", TINY_CATEGORY)
    detector.meta.data_hash = data_hash
    return registry.save(detector.module, detector.meta)


def test_save_publishes_a_new_version_with_one_rename(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.services import catalog

    before_key = catalog.detector_cache_key("patchcore", TINY_CATEGORY)
    renames = []
    real_rename = os.rename
    monkeypatch.setattr(os, "rename", lambda src, dst: (renames.append((Path(src), Path(dst))), real_rename(src, dst)))
    folder = resave("new-data")
    assert len(renames) == 1 and renames[0][1] == folder and renames[0][0].name.startswith(registry.SAVING_PREFIX)
    assert folder.name == "v0002" and sorted(os.listdir(folder)) == ["meta.json", "model.pt"]
    assert registry.load_meta("patchcore", TINY_CATEGORY).data_hash == "new-data"
    assert catalog.detector_cache_key("patchcore", TINY_CATEGORY) != before_key  # the app loads the new model


def test_a_save_that_dies_before_its_rename_leaves_the_previous_version(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.inference.detector import load_detector

    old_hash = registry.load_meta("patchcore", TINY_CATEGORY).data_hash

    def crash(src, dst):
        raise OSError("simulated crash at the rename")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="simulated crash"):
        resave("never-published")
    monkeypatch.undo()
    category = models / "patchcore" / TINY_CATEGORY
    assert sorted(p.name for p in category.iterdir()) == ["v0001"]  # no half version, no temp folder
    assert load_detector("patchcore", TINY_CATEGORY).meta.data_hash == old_hash


def test_every_version_is_kept(models: Path) -> None:
    # versions are restorable (core.learning.versions), so a save never prunes one
    for n in range(3):
        resave(f"hash-{n}")
    category = models / "patchcore" / TINY_CATEGORY
    assert sorted(p.name for p in category.iterdir()) == ["v0001", "v0002", "v0003", "v0004"]
    assert registry.load_meta("patchcore", TINY_CATEGORY).data_hash == "hash-2"


def test_a_leftover_temp_folder_or_incomplete_version_is_ignored(models: Path) -> None:
    category = models / "patchcore" / TINY_CATEGORY
    (category / f"{registry.SAVING_PREFIX}crashed").mkdir()
    (category / "v0009").mkdir()  # no files: not a complete version
    (category / "v0009" / "meta.json").write_text("{}")
    assert current().version == "v0001"
    assert [m.category for m in registry.list_trained()] == [TINY_CATEGORY]


def test_the_old_flat_layout_still_loads(models: Path) -> None:
    from core.inference.detector import load_detector

    category = models / "patchcore" / TINY_CATEGORY
    version = current().folder
    for name in ("model.pt", "meta.json"):
        (version / name).rename(category / name)
    version.rmdir()
    assert current().version == "flat"
    assert [m.category for m in registry.list_trained()] == [TINY_CATEGORY]
    assert load_detector("patchcore", TINY_CATEGORY).meta.category == TINY_CATEGORY
    folder = resave("after-upgrade")  # the next save starts the versioned layout
    assert folder.name == "v0001" and registry.load_meta("patchcore", TINY_CATEGORY).data_hash == "after-upgrade"


# --- The pages --------------------------------------------------------------------------------


def page_messages(at) -> str:
    return " | ".join(e.value for e in [*at.error, *at.warning])


@pytest.fixture
def broken_app(app_test, models: Path):
    """An AppTest factory whose models folder is the private copy (set after app_env)."""
    return app_test


@pytest.mark.parametrize("case", LISTED)
def test_pages_say_the_model_is_unreadable(broken_app, case: str) -> None:
    BREAKAGES[case][0]()
    expected = f"model patchcore/{TINY_CATEGORY} is unreadable ("
    at = broken_app()
    at.run()
    at.selectbox(key="inspect_category").set_value(TINY_CATEGORY).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key=f"inspect_model:{TINY_CATEGORY}").value == "patchcore"
    assert expected in page_messages(at) and RETRAIN in page_messages(at)
    assert "Train PatchCore on 'tile'" in [b.label for b in at.button]
    for page in ("pages/model_comparison.py", "pages/similar_defects.py"):
        at.switch_page(page).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert expected in page_messages(at), page


def test_inspect_page_says_so_when_the_checkpoint_does_not_fit(broken_app, tiny_data_root: Path) -> None:
    layers_do_not_fit()
    image = next((tiny_data_root / TINY_CATEGORY / "test").glob("*/*.png"))
    at = broken_app()
    at.run()
    at.selectbox(key="inspect_category").set_value(TINY_CATEGORY).run()
    at.file_uploader(key="inspect_upload").upload(image.name, image.read_bytes(), "image/png")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert "model.pt does not fit meta.json" in page_messages(at)


def test_similar_page_says_so_when_the_checkpoint_does_not_fit(broken_app, app_index) -> None:
    layers_do_not_fit()
    at = broken_app()
    at.run()
    at.switch_page("pages/similar_defects.py").run()
    buttons = [b for b in at.button if (b.key or "").startswith("similar:")]
    assert buttons, "the gallery of the indexed tiny model"
    buttons[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "model.pt does not fit meta.json" in page_messages(at)


def test_evaluate_keeps_going_past_a_broken_dataset(models: Path, tiny_data_root: Path, capsys, tmp_path, monkeypatch) -> None:
    """A category whose test set is gone is reported in one line; the others are still written."""
    from core.cli import main

    broken_root = tmp_path / "broken_data"
    shutil.copytree(tiny_data_root / TINY_CATEGORY / "train", broken_root / "leather" / "train")  # no test/
    broken = models / "patchcore" / "leather"
    shutil.copytree(models / "patchcore" / TINY_CATEGORY, broken)
    for meta_file in broken.glob("*/meta.json"):
        meta = json.loads(meta_file.read_text())
        meta.update(category="leather", data_root=str(broken_root))
        meta_file.write_text(json.dumps(meta))
    monkeypatch.setenv("INSPECT_RESULTS", str(tmp_path / "results.json"))

    assert main(["evaluate", "--model", "patchcore", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert f"patchcore/{TINY_CATEGORY}" in out and "results written to" in out
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: patchcore/leather not evaluated: ") and "test" in errors[0]
    assert list(json.loads((tmp_path / "results.json").read_text())["models"]) == [f"patchcore/{TINY_CATEGORY}"]


def test_index_names_an_unreadable_model_instead_of_hiding_it(models: Path, capsys, tmp_path, monkeypatch) -> None:
    from core.cli import main

    broken = models / "patchcore" / "leather"
    shutil.copytree(models / "patchcore" / TINY_CATEGORY, broken)
    for meta_file in broken.glob("*/meta.json"):
        meta_file.write_text('"a string"')
    monkeypatch.setenv("INSPECT_QDRANT_PATH", str(tmp_path / "qdrant"))
    monkeypatch.setenv("INSPECT_HISTORY_DB", str(tmp_path / "history.sqlite"))
    assert main(["index", "--model", "patchcore", "--category", "leather"]) == 2  # nothing usable left
    out, _ = capsys.readouterr()
    assert "skipped: model patchcore/leather is unreadable (meta.json" in out
