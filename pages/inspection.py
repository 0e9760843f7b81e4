"""Inspect page: one image in, a verdict, a heatmap and the defect region out; several in, a table.

Widgets and layout only. The model runs once per (file, model version): the Prediction is kept in
``st.session_state["inspections"]`` and every slider move re-judges it (``Prediction.verdict``)
without running the model again. Each inspection is written to the history once; when the history
cannot be written (damaged, locked) the verdict is still shown, with a warning that it was not
recorded. File names are shown as text (``ui.plain_text``), never rendered as Markdown.

Several images (uploaded together, or picked from a test folder) go through the model in batches
(``inspection.inspect_images``, one forward pass per batch) into the same per-session cache; a
table lists their verdicts with thumbnails and a CSV download (``core.services.batch``), and
selecting a row opens the one-image view of that image without running the model again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import streamlit as st

from core.errors import InspectError
from core.services import batch, catalog, history_view, inspection
from pages import _common as ui
from pages._drift import drift_panel

if TYPE_CHECKING:
    from collections.abc import Iterator

    from core.inference.detector import Detector
    from core.registry import ModelMeta

MAX_KEPT = 16  # inspections kept per browser session (images included), beyond the batch on screen
MAX_BATCH = 32  # images per batch on the page; folders of any size: `python -m core inspect`

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


def pick_images(category: str) -> list[Source]:
    """The image source radio and its upload or test-set pickers; empty until an image is chosen."""
    source = st.radio("Image source", ["Upload", "Test set"], horizontal=True, key="inspect_source")
    if source == "Upload":
        return _uploaded()
    return _from_test_set(category)


def _uploaded() -> list[Source]:
    uploads = st.file_uploader(
        "Upload images (PNG, JPEG, BMP or TIFF): one, or several for a batch",
        type=list(inspection.IMAGE_TYPES),
        accept_multiple_files=True,
        key="inspect_upload",
    )
    return [Source(upload.getvalue(), upload.name) for upload in uploads or []]


def _from_test_set(category: str) -> list[Source]:
    items = catalog.test_images(category)
    if not items:
        st.info(f"The dataset has no test images for '{category}'.")
        return []
    types = list(dict.fromkeys(i.defect_type for i in items))
    c1, c2 = st.columns(2)
    dtype = c1.selectbox("Test folder (good or defect type)", types, key=f"inspect_test_type:{category}")
    by_name = {i.path.name: i for i in items if i.defect_type == dtype}
    names = list(by_name)
    picks = c2.multiselect(
        "Images", names, default=names[:1], key=f"inspect_test_image:{category}:{dtype}", help="Several make a batch."
    )
    return [Source(by_name[n].path.read_bytes(), f"{category}/test/{by_name[n].label}", dtype) for n in picks]


# --- Run the model once per (file, model version) ----------------------------------------------


@dataclass
class Shown:
    """One image of this session: the service's typed result (or why there is none) and what the
    page adds to it (the name shown, the model and category chosen, a thumbnail for the table)."""

    name: str
    model: str
    category: str
    result: inspection.Inspected | None = None
    error: str | None = None
    retry: bool = False  # the loader was busy: shown, not kept, so the next run tries again
    not_recorded: str | None = None  # why the history could not take it
    thumb: str | None = None


def inspect_once(source: Source, model: str, category: str) -> tuple[str, Shown]:
    """This session's inspection of ``source`` (judged, recorded and indexed on first sight): (key, shown)."""
    key, shown, _ = inspect_many([source], model, category)[0]
    return key, shown


def shown_error(key: str, shown: Shown) -> bool:
    """Show the inspection's error, if it has one (a retryable one is forgotten); True if shown."""
    if shown.error is None:
        return False
    if shown.retry:
        st.session_state["inspections"].pop(key, None)
    st.error(ui.plain_names(shown.error, shown.name))
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


def show_verdict(judgement: inspection.Judgement, shown: Shown, detector: Detector) -> None:
    """The verdict badge, the not-recorded warning, the score metrics and the raw numbers."""
    ui.verdict_badge(judgement.verdict)
    if shown.not_recorded:
        st.warning(f"This inspection was not recorded in the history: {shown.not_recorded}", icon=":material/warning:")
    if shown.result.wrong_category_note:
        st.warning(shown.result.wrong_category_note, icon=":material/help:")
    m1, m2, m3 = st.columns(3)
    m1.metric("Anomaly score", f"{judgement.score:.3f}", help="Normalised: 0.5 = the calibrated threshold.")
    m2.metric("Threshold", f"{judgement.threshold:.2f}", help="Normalised threshold the score is compared with.")
    m3.metric("Inference", f"{judgement.latency_ms:.0f} ms", help=f"On {detector.device}.")
    st.caption(
        f"Raw score {judgement.raw_score:.6g} vs raw threshold {judgement.raw_threshold:.6g} "
        f"(calibrated: {judgement.calibrated_raw_threshold:.6g}). "
        f"{catalog.model_label(shown.model)} on '{shown.category}'. Threshold calibrated on: {judgement.calibration_source}."
    )


def show_pictures(shown: Shown, opacity: float) -> None:
    """The image, its heatmap and the predicted defect region, side by side."""
    image = shown.result.image
    pics = inspection.pictures(image, shown.result.prediction, opacity)
    c1, c2, c3 = st.columns(3)
    size = f"{image.shape[1]}×{image.shape[0]}"
    c1.image(pics.shown, caption=f"{ui.plain_text(shown.name)} ({size})", width="stretch")
    c2.image(pics.heatmap, caption="Anomaly heatmap (fixed scale: blue normal, red above threshold)", width="stretch")
    c3.image(pics.region, caption="Predicted defect region (calibrated pixel threshold)", width="stretch")
    if pics.zoom is not None:
        top = pics.zoom.top
        where = f"{top.width}×{top.height} px at x {top.x}, y {top.y}"
        z1, z2, _ = st.columns(3)
        z1.image(pics.zoom.heatmap, caption=f"Highest region at the camera's pixels ({where})", width="stretch")
        z2.image(pics.zoom.region, caption="Its outline at the camera's pixels", width="stretch")


# --- Actions -----------------------------------------------------------------------------------


def download_and_link(shown: Shown, opacity: float, verdict: str) -> None:
    """The overlay download and, for a DEFECT, the link to its similar past defects."""
    result = shown.result
    st.download_button(
        "Download overlay (PNG)",
        data=lambda: inspection.overlay_png(result.image, result.prediction, opacity),
        file_name=f"{inspection.file_stem(shown.name)}_overlay.png",
        mime="image/png",
        icon=":material/download:",
        key="inspect_download",
    )
    if verdict == "DEFECT":
        params = {"model": shown.model, "category": shown.category, "sha": result.sha256}
        if result.inspection_id:
            params["inspection"] = str(result.inspection_id)
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


# --- Several images: a batch ------------------------------------------------------------------


@dataclass(frozen=True)
class BatchItem:
    """One chosen image of a batch: its cache key, its inspection (or error) and its CSV row."""

    key: str
    entry: Shown
    row: dict[str, Any]


def inspect_many(sources: list[Source], model: str, category: str) -> list[tuple[str, Shown, Source]]:
    """This session's inspections of ``sources``; the new ones run in batches, each image once."""
    mtime = catalog.checkpoint_mtime(model, category)
    keys = [inspection.inspection_key(inspection.sha256_of(s.data), model, category, mtime) for s in sources]
    kept: dict = st.session_state.setdefault("inspections", {})
    pending = {k: s for k, s in zip(keys, sources, strict=True) if k not in kept}  # a repeated file runs once
    if pending:
        kept.update(_run_many(pending, model, category))
        _trim(kept, keep=set(keys))
    return [(k, kept[k], s) for k, s in zip(keys, sources, strict=True)]


def _trim(kept: dict[str, Any], keep: set[str]) -> None:
    """Forget the oldest inspections beyond MAX_KEPT, never those of the batch on screen."""
    extra = len(kept) - max(MAX_KEPT, len(keep))
    for key in [k for k in kept if k not in keep][: max(0, extra)]:
        kept.pop(key)


def _run_many(pending: dict[str, Source], model: str, category: str) -> dict[str, Shown]:
    """Decode, then judge, record and index the readable ones through ``inspection.inspect_images``:
    the one path the folder command and the API take too."""
    decoded = {k: batch.decode(s.data, s.name) for k, s in pending.items()}
    entries = {k: Shown(d.name, model, category, error=d.error, retry=d.retry) for k, d in decoded.items() if d.error}
    readable = [k for k, d in decoded.items() if d.error is None]
    if not readable:
        return entries
    try:
        detector = ui.get_detector(model, category)
    except InspectError as exc:  # said again below the table by ready_detector; not kept, so a rerun retries
        return entries | {k: Shown(pending[k].name, model, category, error=str(exc), retry=True) for k in readable}
    threshold_now = float(st.session_state.get("inspect_threshold", inspection.CALIBRATED))
    # A history that cannot be written (damaged, locked) costs the record, not the verdict: the
    # reason is shown beside the verdict instead of stopping the page.
    history, not_recorded = ui.open_history()
    bar = st.progress(0.0, text=f"Inspecting {len(readable)} image(s)…")
    for done, group in _groups(readable, pending):
        items = [(pending[k].name, decoded[k].image, decoded[k].sha256) for k in group]
        before = done - len(group)

        def tiles(index: int, tiles_done: int, tiles_total: int, before: int = before) -> None:
            # a tiled model on a large frame: seconds per image, so say how far it is
            share = (before + index + tiles_done / tiles_total) / len(readable)
            bar.progress(
                min(1.0, share), text=f"Image {before + index + 1} of {len(readable)}: tile {tiles_done} of {tiles_total}…"
            )

        results = inspection.inspect_images(
            detector,
            items,
            threshold=threshold_now,
            history=history,
            record=history is not None,
            defect_type=pending[group[0]].known_type,
            progress=tiles if detector.tiled else None,
        )
        for key, result in zip(group, results, strict=True):
            entries[key] = _batch_entry(result, pending[key], model, category, not_recorded)
        bar.progress(done / len(readable), text=f"Inspected {done} of {len(readable)} images…")
    bar.empty()
    return entries


def _groups(keys: list[str], pending: dict[str, Source]) -> Iterator[tuple[int, list[str]]]:
    """Batches of at most ``batch.DEFAULT_BATCH_SIZE`` keys of one test folder (or of uploads), with a running count."""
    by_type: dict[str | None, list[str]] = {}
    for key in keys:
        by_type.setdefault(pending[key].known_type, []).append(key)
    done = 0
    for group in by_type.values():
        for start in range(0, len(group), batch.DEFAULT_BATCH_SIZE):
            chunk = group[start : start + batch.DEFAULT_BATCH_SIZE]
            done += len(chunk)
            yield done, chunk


def _batch_entry(result: inspection.Inspected, source: Source, model: str, category: str, not_recorded: str | None) -> Shown:
    """The cache entry of one result: what the one-image view needs, and a thumbnail for the table."""
    # The descriptors went to the index in the same pass; the session does not keep them.
    kept = replace(result, prediction=replace(result.prediction, patch_features=None))
    return Shown(source.name, model, category, kept, not_recorded=not_recorded, thumb=batch.thumbnail_uri(result.image))


def batch_items(inspected: list[tuple[str, Shown, Source]], detector: Detector, threshold: float) -> list[BatchItem]:
    """Each image's CSV row at ``threshold``, most suspicious first, unreadable files last."""
    items = [BatchItem(key, entry, _row(entry, source, detector, threshold)) for key, entry, source in inspected]
    return sorted(items, key=lambda i: (i.row["score"] is None, -(i.row["score"] or 0.0)))


def _row(shown: Shown, source: Source, detector: Detector, threshold: float) -> dict[str, Any]:
    by = batch.JudgedBy.of(detector)
    result = shown.result
    if result is None:
        return batch.failed_row(batch.Decoded(source.name, error=shown.error), by)
    judgement = inspection.judge(result.prediction, detector, threshold)
    by = by._replace(model_version=result.model_version)
    area = inspection.defect_area(result.prediction, threshold)
    regions = inspection.defect_boxes(result.image, result.prediction, threshold)
    return batch.verdict_row(source.name, result.sha256, by, judgement, area, result.inspection_id, regions=regions)


def batch_summary(items: list[BatchItem]) -> None:
    """How many images, how many judged DEFECT, how many could not be read."""
    m1, m2, m3 = st.columns(3)
    m1.metric("Images", len(items))
    m2.metric("DEFECT", sum(i.row["verdict"] == "DEFECT" for i in items), help="At the threshold on the right.")
    m3.metric("Failed", sum(i.row["error"] is not None for i in items), help="Files that could not be read.")
    problem = next((i.entry.not_recorded for i in items if i.entry.not_recorded), None)
    if problem:
        st.warning(f"These inspections were not recorded in the history: {problem}", icon=":material/warning:")


def batch_table(items: list[BatchItem]) -> BatchItem | None:
    """The verdicts with thumbnails (sortable by any column); returns the selected row's item."""
    rows = [
        {
            "image": i.entry.thumb,
            "file": i.row["file"],
            "verdict": i.row["verdict"] or "FAILED",
            "score": i.row["score"],
            "defect area": i.row["defect area share"],
            "inference ms": i.row["inference ms"],
            "inspection": i.row["inspection id"],
            "error": i.row["error"] or "",
        }
        for i in items
    ]
    # A new set of images is a new table: a selection never carries over to another image.
    digest = hashlib.sha1("|".join(sorted(i.key for i in items)).encode()).hexdigest()[:12]
    event = st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "image": st.column_config.ImageColumn("image", width="small"),
            "score": st.column_config.NumberColumn("score", format="%.3f", help="Normalised: 0.5 = calibrated threshold"),
            "defect area": st.column_config.NumberColumn(
                "defect area", format="percent", help="Share of the map at or above the threshold"
            ),
            "inference ms": st.column_config.NumberColumn("inference ms", format="%.0f"),
            "inspection": st.column_config.NumberColumn("inspection", format="%d", help="Its id in the history"),
        },
        row_height=56,
        on_select="rerun",
        selection_mode="single-row",
        key=f"inspect_batch:{digest}",
    )
    picked = event.selection.rows
    return items[picked[0]] if picked and picked[0] < len(items) else None


def show_batch(sources: list[Source], model: str, category: str) -> None:
    """The batch view: summary, threshold, the table and its CSV; the selected row's one-image view below."""
    inspected = inspect_many(sources, model, category)
    for key, entry, _ in inspected:  # "busy" passes in moments: shown now, not kept, so a rerun tries again
        if entry.retry:
            st.session_state["inspections"].pop(key, None)
    detector = ready_detector(model, category)
    if detector is None:
        return
    left, right = st.columns([1, 1], gap="large")
    with right:
        controls = threshold_controls()
    items = batch_items(inspected, detector, controls[0])
    with left:
        batch_summary(items)
    for item in items:
        if item.row["error"]:
            st.error(ui.plain_names(item.row["error"], item.row["file"]))
    picked = batch_table(items)
    st.download_button(
        "Download the table (CSV)",
        data=batch.csv_of(i.row for i in items),
        file_name="inspect_batch.csv",
        mime="text/csv",
        icon=":material/download:",
        key="inspect_batch_csv",
    )
    if picked is None:
        st.caption("Select a row to see its heatmap, defect region and feedback.")
        return
    st.subheader(ui.plain_text(picked.row["file"]), divider="gray")
    if picked.entry.result is None:
        st.error(ui.plain_names(picked.row["error"], picked.row["file"]))
    else:
        show_result(picked.entry, detector, controls)


# --- The page ----------------------------------------------------------------------------------


def choose() -> tuple[str, str, list[Source]] | None:
    """Category, model and images; None (after saying what is missing) until all three are there."""
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
    sources = pick_images(category)
    if not sources:
        st.caption("Upload an image or pick one from the test set to inspect it.")
        return None
    if len(sources) > MAX_BATCH:
        st.warning(
            f"{len(sources)} images chosen: the first {MAX_BATCH} are inspected here. For whole folders use "
            "`python -m core inspect FOLDER --category ...` (any number of images, CSV and overlays)."
        )
    return category, model, sources[:MAX_BATCH]


def show_result(shown: Shown, detector: Detector, controls: tuple[float, float] | None = None) -> None:
    """Verdict, controls, pictures, actions and feedback of one inspection.

    ``controls``: the (threshold, opacity) of sliders already drawn (the batch view draws them
    above its table, so that one slider judges the table and the selected image alike).
    """
    result = shown.result
    for note in result.notes:
        st.caption(note)
    left, right = st.columns([1, 1], gap="large")
    if controls is None:
        with right:
            threshold, opacity = threshold_controls()
    else:
        threshold, opacity = controls
    judgement = inspection.judge(result.prediction, detector, threshold)
    with left:
        show_verdict(judgement, shown, detector)
    show_pictures(shown, opacity)
    a1, a2 = st.columns([1, 2])
    with a1:
        download_and_link(shown, opacity, judgement.verdict)
    with a2:
        if result.inspection_id:
            feedback_form(result.inspection_id)
    with st.expander("Recent scores against the calibration (drift)"):
        drift_panel(detector, ui.open_history()[0], compute=False, key="inspect_drift")


def show_one(source: Source, model: str, category: str) -> None:
    """The one-image view: run (once), then verdict, heatmap, controls and feedback."""
    key, shown = inspect_once(source, model, category)
    if shown_error(key, shown):
        return
    detector = ready_detector(model, category)
    if detector is not None:
        show_result(shown, detector)


def render() -> None:
    ui.ensure_app_frame()
    st.title("Inspect a part")
    chosen = choose()
    if chosen is None:
        return
    category, model, sources = chosen
    if len(sources) == 1:
        show_one(sources[0], model, category)
    else:
        show_batch(sources, model, category)


render()
