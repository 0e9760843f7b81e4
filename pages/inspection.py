"""Inspect page: one image in, a verdict, a heatmap and the defect region out.

Widgets and layout only. The model runs once per (file, model version): the Prediction is kept in
``st.session_state["inspections"]`` and every slider move re-judges it (``Prediction.verdict``)
without running the model again. Each inspection is written to the history once; when the history
cannot be written (damaged, locked) the verdict is still shown, with a warning that it was not
recorded. File names are shown as text (``ui.plain_text``), never rendered as Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import streamlit as st

from core.errors import BusyError, InspectError
from core.services import catalog, history_view, inspection
from pages import _common as ui

if TYPE_CHECKING:
    from core.inference.detector import Detector, Prediction
    from core.registry import ModelMeta

MAX_KEPT = 16  # inspections kept per browser session (images included)

NO_DATA = (
    "No dataset or trained model found. Prepare the demo with `python -m core setup`, or point "
    "`INSPECT_DATA_ROOT` at a folder in the MVTec AD layout and train with "
    "`python -m core train --model patchcore --category <name>`."
)


@dataclass(frozen=True)
class Source:
    """The image to inspect: its bytes, the name shown for it, its test folder (None for an upload)."""

    data: bytes
    name: str
    known_type: str | None = None


# --- Category and model ------------------------------------------------------------------------


def _models_here(category: str, trained: dict[tuple[str, str], ModelMeta], unreadable: dict[tuple[str, str], str]) -> list[str]:
    return [m for m in catalog.MODEL_NAMES if (m, category) in trained or (m, category) in unreadable]


def pick_model(
    categories: list[str], trained: dict[tuple[str, str], ModelMeta], unreadable: dict[tuple[str, str], str]
) -> tuple[str, str | None]:
    """The category and model selectors; returns (category, model or None when nothing can run)."""
    col_cat, col_model = st.columns(2)
    # Open on a category that has a trained model, so the first screen can inspect straight away.
    first_ready = next((i for i, c in enumerate(categories) if any((m, c) in trained for m in catalog.MODEL_NAMES)), 0)
    category = col_cat.selectbox("Category", categories, index=first_ready, key="inspect_category")
    models_here = _models_here(category, trained, unreadable)
    model = None
    if models_here:
        model = col_model.selectbox("Model", models_here, format_func=catalog.model_label, key=f"inspect_model:{category}")
    else:
        col_model.selectbox("Model", ["no trained model"], disabled=True, key="inspect_model_none")
    if model is not None and (model, category) in unreadable:
        st.error(unreadable[(model, category)])
        model = None  # nothing to run; the expander below retrains it
    return category, model


def offer_training(category: str, trained: dict[tuple[str, str], ModelMeta], unreadable: dict[tuple[str, str], str]) -> None:
    """Models not trained for this category: how to train them, and a button that does it in the background."""
    models_here = _models_here(category, trained, unreadable)
    for missing in (m for m in catalog.MODEL_NAMES if (m, category) not in trained):
        label = catalog.model_label(missing)
        broken = (missing, category) in unreadable
        title = (
            f"{label} for '{category}' is unreadable: retrain it" if broken else f"{label} is not trained for '{category}' yet"
        )
        with st.expander(title, expanded=not models_here or broken):
            _training_offer(missing, label, category)


def _training_offer(model: str, label: str, category: str) -> None:
    st.markdown(
        f"Train it from a terminal with `{catalog.train_command(model, category)}`, or start it here: "
        "it runs in the background and the other pages stay usable."
    )
    note = catalog.training_note(model, category)
    if note:
        st.caption(note)
    job = ui.job_panel("train", model, category)
    if job is None or job.done:
        ui.start_job_button(
            f"Train {label} on '{category}'", "train", model=model, category=category, key=f"train:{model}:{category}"
        )


# --- The image ---------------------------------------------------------------------------------


def pick_image(category: str) -> Source | None:
    """The image source radio and its upload or test-set pickers; None until an image is chosen."""
    source = st.radio("Image source", ["Upload", "Test set"], horizontal=True, key="inspect_source")
    if source == "Upload":
        return _uploaded()
    return _from_test_set(category)


def _uploaded() -> Source | None:
    upload = st.file_uploader("Upload an image (PNG, JPEG, BMP or TIFF)", type=list(inspection.IMAGE_TYPES), key="inspect_upload")
    return Source(upload.getvalue(), upload.name) if upload is not None else None


def _from_test_set(category: str) -> Source | None:
    items = catalog.test_images(category)
    if not items:
        st.info(f"The dataset has no test images for '{category}'.")
        return None
    types = list(dict.fromkeys(i.defect_type for i in items))
    c1, c2 = st.columns(2)
    dtype = c1.selectbox("Test folder (good or defect type)", types, key=f"inspect_test_type:{category}")
    names = [i.path.name for i in items if i.defect_type == dtype]
    pick = c2.selectbox("Image", names, key=f"inspect_test_image:{category}:{dtype}")
    chosen = next(i for i in items if i.defect_type == dtype and i.path.name == pick)
    return Source(chosen.path.read_bytes(), f"{category}/test/{chosen.label}", dtype)


# --- Run the model once per (file, model version) ----------------------------------------------


def inspect_once(source: Source, model: str, category: str) -> tuple[str, dict[str, Any]]:
    """This session's inspection of ``source`` (run, recorded and indexed on first sight): (key, entry)."""
    sha = inspection.sha256_of(source.data)
    key = inspection.inspection_key(sha, model, category, catalog.checkpoint_mtime(model, category))
    kept: dict = st.session_state.setdefault("inspections", {})
    entry = kept.get(key)
    if entry is None:
        entry = _run(source, sha, model, category)
        kept[key] = entry
        while len(kept) > MAX_KEPT:
            kept.pop(next(iter(kept)))
    return key, entry


def _run(source: Source, sha: str, model: str, category: str) -> dict[str, Any]:
    try:
        image = inspection.load_image(source.data, source.name)
        detector = ui.get_detector(model, category)
        with st.spinner("Inspecting…"):
            prediction = inspection.predict(detector, image)
    except InspectError as exc:
        # "busy" passes in moments: such an error is shown but not kept, so a rerun tries again.
        return {"error": str(exc), "name": source.name, "retry": isinstance(exc, BusyError)}
    entry = {
        "image": image,
        "prediction": prediction,
        "name": source.name,
        "sha": sha,
        "model": model,
        "category": category,
        "defect_type": source.known_type,
        "history_id": None,
        "point_id": None,
        "notes": [],
        "not_recorded": None,
    }
    _record(entry, detector)
    return entry


def _record(entry: dict[str, Any], detector: Detector) -> None:
    """Write the new inspection to the history and, for an upload judged DEFECT, to the index."""
    threshold_now = float(st.session_state.get("inspect_threshold", inspection.CALIBRATED))
    # A history that cannot be written (damaged, locked) costs the record, not the verdict:
    # the reason is shown beside the verdict instead of stopping the page.
    history, entry["not_recorded"] = ui.open_history()
    if history is not None:
        try:
            entry["history_id"] = inspection.record_inspection(
                history,
                file_name=entry["name"],
                sha256=entry["sha"],
                image_rgb=entry["image"],
                model=entry["model"],
                category=entry["category"],
                prediction=entry["prediction"],
                threshold=threshold_now,
                defect_type=entry["defect_type"],
            )
        except InspectError as exc:
            entry["not_recorded"] = str(exc)
    if entry["prediction"].verdict(threshold_now) == "DEFECT" and entry["defect_type"] is None:
        # An upload judged DEFECT joins the past cases that later searches can find.
        point, note = inspection.index_inspection(
            detector,
            entry["image"],
            entry["prediction"],
            sha256=entry["sha"],
            inspection_id=entry["history_id"],
            history=history,
        )
        entry["point_id"] = point
        if note:
            entry["notes"].append(note)


def shown_error(key: str, entry: dict[str, Any]) -> bool:
    """Show the inspection's error, if it has one (a retryable one is forgotten); True if shown."""
    if "error" not in entry:
        return False
    if entry.get("retry"):
        st.session_state["inspections"].pop(key, None)
    st.error(ui.plain_names(entry["error"], entry.get("name", "")))
    return True


def ready_detector(model: str, category: str) -> Detector | None:
    """The detector, or None after saying why it cannot be loaded (e.g. the checkpoint was deleted meanwhile)."""
    try:
        return ui.get_detector(model, category)
    except InspectError as exc:
        st.error(str(exc))
        return None


# --- Verdict and controls ----------------------------------------------------------------------


def threshold_controls() -> tuple[float, float]:
    """The threshold and opacity sliders and the reset button; returns (threshold, opacity)."""
    threshold = st.slider(
        "Decision threshold (normalised score)",
        min_value=0.0,
        max_value=1.0,
        value=inspection.CALIBRATED,
        step=0.01,
        key="inspect_threshold",
        help="0.50 is the calibrated threshold. Moving it re-judges this image at once; the model is not run again.",
    )
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="inspect_opacity")
    st.button(
        "Reset to the calibrated threshold",
        on_click=lambda: st.session_state.update(inspect_threshold=inspection.CALIBRATED),
        disabled=threshold == inspection.CALIBRATED,
    )
    return threshold, opacity


def show_verdict(judgement: inspection.Judgement, entry: dict[str, Any], detector: Detector) -> None:
    """The verdict badge, the not-recorded warning, the score metrics and the raw numbers."""
    ui.verdict_badge(judgement.verdict)
    if entry.get("not_recorded"):
        st.warning(f"This inspection was not recorded in the history: {entry['not_recorded']}", icon=":material/warning:")
    m1, m2, m3 = st.columns(3)
    m1.metric("Anomaly score", f"{judgement.score:.3f}", help="Normalised: 0.5 = the calibrated threshold.")
    m2.metric("Threshold", f"{judgement.threshold:.2f}", help="Normalised threshold the score is compared with.")
    m3.metric("Inference", f"{judgement.latency_ms:.0f} ms", help=f"On {detector.device}.")
    st.caption(
        f"Raw score {judgement.raw_score:.6g} vs raw threshold {judgement.raw_threshold:.6g} "
        f"(calibrated: {judgement.calibrated_raw_threshold:.6g}). "
        f"{catalog.model_label(entry['model'])} on '{entry['category']}'. Threshold calibrated on: {judgement.calibration_source}."
    )


def show_pictures(entry: dict[str, Any], opacity: float) -> None:
    """The image, its heatmap and the predicted defect region, side by side."""
    pics = inspection.pictures(entry["image"], entry["prediction"], opacity)
    c1, c2, c3 = st.columns(3)
    size = f"{entry['image'].shape[1]}×{entry['image'].shape[0]}"
    c1.image(pics.shown, caption=f"{ui.plain_text(entry['name'])} ({size})", width="stretch")
    c2.image(pics.heatmap, caption="Anomaly heatmap (fixed scale: blue normal, red above threshold)", width="stretch")
    c3.image(pics.region, caption="Predicted defect region (calibrated pixel threshold)", width="stretch")


# --- Actions -----------------------------------------------------------------------------------


def download_and_link(entry: dict[str, Any], prediction: Prediction, opacity: float, verdict: str) -> None:
    """The overlay download and, for a DEFECT, the link to its similar past defects."""
    st.download_button(
        "Download overlay (PNG)",
        data=lambda: inspection.overlay_png(entry["image"], prediction, opacity),
        file_name=f"{inspection.file_stem(entry['name'])}_overlay.png",
        mime="image/png",
        icon=":material/download:",
        key="inspect_download",
    )
    if verdict == "DEFECT":
        params = {"model": entry["model"], "category": entry["category"], "sha": entry["sha"]}
        if entry["history_id"]:
            params["inspection"] = str(entry["history_id"])
        st.page_link(
            "pages/similar_defects.py", label="Similar past defects →", icon=":material/image_search:", query_params=params
        )


def feedback_form(history_id: int) -> None:
    """Was this verdict right? One button per feedback value, with an optional comment."""
    history = ui.get_history()
    record = history.get(history_id) if history is not None else None
    current = record.feedback if record else None
    labels = history_view.FEEDBACK_LABELS
    st.markdown(f"**Was this verdict right?** (inspection #{history_id}; feedback: {labels.get(current or '', 'none yet')})")
    comment = st.text_input("Comment (optional)", value=(record.comment or "") if record else "", key=f"comment:{history_id}")
    cols = st.columns(len(labels))
    for col, (value, label) in zip(cols, labels.items(), strict=True):
        if col.button(label, key=f"feedback:{value}:{history_id}", type="primary" if current == value else "secondary"):
            try:
                history.set_feedback(history_id, value, comment.strip() or None)
            except InspectError as exc:
                st.error(str(exc))
            else:
                st.toast(f"Feedback saved: {label}")
                st.rerun()


# --- The page ----------------------------------------------------------------------------------


def choose() -> tuple[str, str, Source] | None:
    """Category, model and image; None (after saying what is missing) until all three are there."""
    categories = catalog.available_categories()
    if not categories:
        st.info(NO_DATA)
        return None
    trained = catalog.trained_models()
    unreadable = catalog.unreadable_models()  # files there but unusable: selectable, so the page can say why
    category, model = pick_model(categories, trained, unreadable)
    offer_training(category, trained, unreadable)
    if model is None:
        return None
    source = pick_image(category)
    if source is None:
        st.caption("Upload an image or pick one from the test set to inspect it.")
        return None
    return category, model, source


def show_result(entry: dict[str, Any], detector: Detector) -> None:
    """Verdict, controls, pictures, actions and feedback of one inspection."""
    for note in entry["notes"]:
        st.caption(note)
    left, right = st.columns([1, 1], gap="large")
    with right:
        threshold, opacity = threshold_controls()
    judgement = inspection.judge(entry["prediction"], detector, threshold)
    with left:
        show_verdict(judgement, entry, detector)
    show_pictures(entry, opacity)
    a1, a2 = st.columns([1, 2])
    with a1:
        download_and_link(entry, entry["prediction"], opacity, judgement.verdict)
    with a2:
        if entry["history_id"]:
            feedback_form(entry["history_id"])


def render() -> None:
    ui.ensure_app_frame()
    st.title("Inspect a part")
    chosen = choose()
    if chosen is None:
        return
    category, model, source = chosen
    key, entry = inspect_once(source, model, category)
    if shown_error(key, entry):
        return
    detector = ready_detector(model, category)
    if detector is not None:
        show_result(entry, detector)


render()
