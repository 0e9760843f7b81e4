"""Inspect page: one image in, a verdict, a heatmap and the defect region out.

Widgets and layout only. The model runs once per (file, model version): the Prediction is kept in
``st.session_state["inspections"]`` and every slider move re-judges it (``Prediction.verdict``)
without running the model again. Each inspection is written to the history once; when the history
cannot be written (damaged, locked) the verdict is still shown, with a warning that it was not
recorded. File names are shown as text (``ui.plain_text``), never rendered as Markdown.
"""

from __future__ import annotations

import streamlit as st

from core import app_services as svc
from core import registry
from core.errors import BusyError, InspectError
from pages import _common as ui

ui.ensure_app_frame()

MAX_KEPT = 16  # inspections kept per browser session (images included)

st.title("Inspect a part")

try:
    from core.data.image_io import load_image, sha256_of
    from core.inference.overlay import defect_contours, heatmap_overlay, to_png_bytes
except ImportError as exc:  # a checkout without the image modules: say so plainly
    st.error(f"Inspection is unavailable in this installation ({exc}).")
    st.stop()

categories = svc.available_categories()
if not categories:
    st.info(
        "No dataset or trained model found. Prepare the demo with `python -m core setup`, or point "
        "`INSPECT_DATA_ROOT` at a folder in the MVTec AD layout and train with "
        "`python -m core train --model patchcore --category <name>`."
    )
    st.stop()

trained = svc.trained_models()
unreadable = svc.unreadable_models()  # files there but unusable: selectable, so the page can say why
col_cat, col_model = st.columns(2)
# Open on a category that has a trained model, so the first screen can inspect straight away.
first_ready = next((i for i, c in enumerate(categories) if any((m, c) in trained for m in svc.MODEL_NAMES)), 0)
category = col_cat.selectbox("Category", categories, index=first_ready, key="inspect_category")
models_here = [m for m in svc.MODEL_NAMES if (m, category) in trained or (m, category) in unreadable]
model = None
if models_here:
    model = col_model.selectbox("Model", models_here, format_func=svc.model_label, key=f"inspect_model:{category}")
else:
    col_model.selectbox("Model", ["no trained model"], disabled=True, key="inspect_model_none")
if model is not None and (model, category) in unreadable:
    st.error(unreadable[(model, category)])
    model = None  # nothing to run; the expander below retrains it

# Models not trained for this category: how to train them, and a button that does it in the background.
for missing in (m for m in svc.MODEL_NAMES if (m, category) not in trained):
    label = svc.model_label(missing)
    broken = (missing, category) in unreadable
    title = f"{label} for '{category}' is unreadable: retrain it" if broken else f"{label} is not trained for '{category}' yet"
    with st.expander(title, expanded=not models_here or broken):
        st.markdown(
            f"Train it from a terminal with `{registry.train_command(missing, category)}`, or start it here: "
            "it runs in the background and the other pages stay usable."
        )
        note = svc.training_note(missing, category)
        if note:
            st.caption(note)
        job = ui.job_panel("train", missing, category)
        if job is None or job.done:
            ui.start_job_button(
                f"Train {label} on '{category}'", "train", model=missing, category=category, key=f"train:{missing}:{category}"
            )

if model is None:
    st.stop()

# --- The image -----------------------------------------------------------------------------
source = st.radio("Image source", ["Upload", "Test set"], horizontal=True, key="inspect_source")
data: bytes | None = None
name = ""
known_type: str | None = None
if source == "Upload":
    upload = st.file_uploader("Upload an image (PNG, JPEG, BMP or TIFF)", type=list(svc.IMAGE_TYPES), key="inspect_upload")
    if upload is not None:
        data, name = upload.getvalue(), upload.name
else:
    items = svc.test_images(category)
    if not items:
        st.info(f"The dataset has no test images for '{category}'.")
    else:
        types = list(dict.fromkeys(i.defect_type for i in items))
        c1, c2 = st.columns(2)
        dtype = c1.selectbox("Test folder (good or defect type)", types, key=f"inspect_test_type:{category}")
        names = [i.path.name for i in items if i.defect_type == dtype]
        pick = c2.selectbox("Image", names, key=f"inspect_test_image:{category}:{dtype}")
        chosen = next(i for i in items if i.defect_type == dtype and i.path.name == pick)
        data, name, known_type = chosen.path.read_bytes(), f"{category}/test/{chosen.label}", dtype

if data is None:
    st.caption("Upload an image or pick one from the test set to inspect it.")
    st.stop()

# --- Run the model once per (file, model version) ------------------------------------------
sha = sha256_of(data)
mtime = svc.checkpoint_mtime(model, category)
key = svc.inspection_key(sha, model, category, mtime)
kept: dict = st.session_state.setdefault("inspections", {})
entry = kept.get(key)
if entry is None:
    try:
        image = load_image(data, name)
        detector = ui.get_detector(model, category)
        with st.spinner("Inspecting…"):
            prediction = svc.predict(detector, image)
    except InspectError as exc:
        # "busy" passes in moments: such an error is shown but not kept, so a rerun tries again.
        entry = {"error": str(exc), "name": name, "retry": isinstance(exc, BusyError)}
    else:
        st.session_state["predict_calls"] = st.session_state.get("predict_calls", 0) + 1
        entry = {
            "image": image,
            "prediction": prediction,
            "name": name,
            "sha": sha,
            "model": model,
            "category": category,
            "defect_type": known_type,
            "history_id": None,
            "point_id": None,
            "notes": [],
            "not_recorded": None,
        }
        threshold_now = float(st.session_state.get("inspect_threshold", svc.CALIBRATED))
        # A history that cannot be written (damaged, locked) costs the record, not the verdict:
        # the reason is shown beside the verdict instead of stopping the page.
        history, entry["not_recorded"] = ui.open_history()
        if history is not None:
            try:
                entry["history_id"] = svc.record_inspection(
                    history,
                    file_name=name,
                    sha256=sha,
                    image_rgb=image,
                    model=model,
                    category=category,
                    prediction=prediction,
                    threshold=threshold_now,
                    defect_type=known_type,
                )
            except InspectError as exc:
                entry["not_recorded"] = str(exc)
        if prediction.verdict(threshold_now) == "DEFECT" and known_type is None:
            # An upload judged DEFECT joins the past cases that later searches can find.
            point, note = svc.index_inspection(
                detector, image, prediction, sha256=sha, inspection_id=entry["history_id"], history=history
            )
            entry["point_id"] = point
            if note:
                entry["notes"].append(note)
    kept[key] = entry
    while len(kept) > MAX_KEPT:
        kept.pop(next(iter(kept)))

if "error" in entry:
    if entry.get("retry"):
        kept.pop(key, None)
    st.error(ui.plain_names(entry["error"], entry.get("name", "")))
    st.stop()

try:
    detector = ui.get_detector(model, category)
except InspectError as exc:  # e.g. the checkpoint was deleted meanwhile
    st.error(str(exc))
    st.stop()
prediction = entry["prediction"]
for note in entry["notes"]:
    st.caption(note)

# --- Verdict and controls --------------------------------------------------------------------
left, right = st.columns([1, 1], gap="large")
with right:
    threshold = st.slider(
        "Decision threshold (normalised score)",
        min_value=0.0,
        max_value=1.0,
        value=svc.CALIBRATED,
        step=0.01,
        key="inspect_threshold",
        help="0.50 is the calibrated threshold. Moving it re-judges this image at once; the model is not run again.",
    )
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.5, 0.05, key="inspect_opacity")
    st.button(
        "Reset to the calibrated threshold",
        on_click=lambda: st.session_state.update(inspect_threshold=svc.CALIBRATED),
        disabled=threshold == svc.CALIBRATED,
    )

judgement = svc.judge(prediction, detector, threshold)
with left:
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
        f"{svc.model_label(model)} on '{category}'. Threshold calibrated on: {judgement.calibration_source}."
    )

# --- Pictures ----------------------------------------------------------------------------------
shown = svc.display_copy(entry["image"])
overlay = heatmap_overlay(shown, prediction.anomaly_map, opacity=opacity)
region = defect_contours(shown, prediction.anomaly_map, threshold=svc.CALIBRATED)
c1, c2, c3 = st.columns(3)
c1.image(shown, caption=f"{ui.plain_text(entry['name'])} ({entry['image'].shape[1]}×{entry['image'].shape[0]})", width="stretch")
c2.image(overlay, caption="Anomaly heatmap (fixed scale: blue normal, red above threshold)", width="stretch")
c3.image(region, caption="Predicted defect region (calibrated pixel threshold)", width="stretch")

# --- Actions -----------------------------------------------------------------------------------
a1, a2 = st.columns([1, 2])
with a1:
    st.download_button(
        "Download overlay (PNG)",
        data=lambda: to_png_bytes(heatmap_overlay(entry["image"], prediction.anomaly_map, opacity=opacity)),
        file_name=f"{svc.file_stem(entry['name'])}_overlay.png",
        mime="image/png",
        icon=":material/download:",
        key="inspect_download",
    )
    if judgement.verdict == "DEFECT":
        params = {"model": model, "category": category, "sha": sha}
        if entry["history_id"]:
            params["inspection"] = str(entry["history_id"])
        st.page_link(
            "pages/similar_defects.py", label="Similar past defects →", icon=":material/image_search:", query_params=params
        )

history_id = entry["history_id"]
with a2:
    if history_id:
        history = ui.get_history()
        record = history.get(history_id) if history is not None else None
        current = record.feedback if record else None
        st.markdown(
            f"**Was this verdict right?** (inspection #{history_id}; feedback: "
            f"{svc.FEEDBACK_LABELS.get(current or '', 'none yet')})"
        )
        comment = st.text_input("Comment (optional)", value=(record.comment or "") if record else "", key=f"comment:{history_id}")
        cols = st.columns(len(svc.FEEDBACK_LABELS))
        for col, (value, label) in zip(cols, svc.FEEDBACK_LABELS.items(), strict=True):
            if col.button(label, key=f"feedback:{value}:{history_id}", type="primary" if current == value else "secondary"):
                try:
                    history.set_feedback(history_id, value, comment.strip() or None)
                except InspectError as exc:
                    st.error(str(exc))
                else:
                    st.toast(f"Feedback saved: {label}")
                    st.rerun()
