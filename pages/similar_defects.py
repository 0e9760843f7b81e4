"""Similar defects page: a gallery of past defects and, for one of them, its five nearest cases.

Past defects are the test set's anomalous images and the uploads judged DEFECT, as indexed in
Qdrant (``python -m core index``); a warning says when the index is damaged or has outgrown the
embedded store. Clicking "Similar cases" under a thumbnail shows that case with
its heatmap and the five most similar past cases, each with its similarity, label, defect type and
heatmap. The Inspect page links here for a fresh DEFECT verdict (query parameters ``model``,
``category``, ``sha`` and ``inspection``). Nothing is ever made up: without an index the page says
how to build one. File names and defect types are shown as text (``ui.plain_text``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import streamlit as st

from core.errors import InspectError
from core.services import catalog, history_view, similar
from pages import _common as ui

if TYPE_CHECKING:
    from streamlit.delta_generator import DeltaGenerator

    from core.history import InspectionRecord
    from core.registry import ModelMeta

K = 5
PER_PAGE = 24
COLUMNS = 6


@dataclass
class View:
    """The (model, category) shown, its checkpoint's mtime, and whether heatmaps can be drawn."""

    model: str
    category: str
    mtime: float
    heatmaps_ok: bool = True  # False once the model failed to load: cases are shown without heatmaps


# --- Cached pictures ---------------------------------------------------------------------------


@st.cache_data(max_entries=512, show_spinner=False)
def _thumb(path: str, file_mtime: float) -> bytes | None:
    return similar.case_thumbnail_png(path)


@st.cache_data(max_entries=256, show_spinner=False)
def _heatmap(model: str, category: str, model_mtime: float, path: str, file_mtime: float) -> tuple[bytes, float] | None:
    return similar.case_heatmap_png(path, lambda: ui.get_detector(model, category))


def show_case(view: View, payload: dict[str, Any], similarity: float | None, title: str) -> None:
    """One case: title, thumbnail, heatmap, caption and source."""
    path = str(payload.get("image_path") or "")
    mtime = history_view.file_mtime(path)
    st.markdown(f"**{title}**")
    thumb = _thumb(path, mtime) if path else None
    heat = _heatmap(view.model, view.category, view.mtime, path, mtime) if path and view.heatmaps_ok else None
    if thumb is None:
        st.caption("(image file no longer available)")
    else:
        st.image(thumb, width="stretch")
        if heat is not None:
            st.image(heat[0], width="stretch")
    st.caption(ui.plain_text(similar.case_caption(payload, similarity)))
    st.caption(ui.plain_text(similar.case_source(payload)))


# --- Model, category and index -----------------------------------------------------------------


def incoming_link(trained: dict[tuple[str, str], ModelMeta]) -> dict[str, str | None] | None:
    """A link from the Inspect page carries its query in the URL (and the image in the session)."""
    params = st.query_params
    if not (params.get("model") and params.get("category") and (params["model"], params["category"]) in trained):
        return None
    incoming = {k: params.get(k) for k in ("model", "category", "sha", "inspection")}
    st.session_state["similar_category"] = incoming["category"]
    st.session_state[f"similar_model:{incoming['category']}"] = incoming["model"]
    return incoming


def pick_pair(trained: dict[tuple[str, str], ModelMeta]) -> tuple[str, str, DeltaGenerator]:
    """The category and model selectors; returns (model, category, the column left for the toggle)."""
    categories = sorted({c for _, c in trained})
    c1, c2, c3 = st.columns(3)
    category = c1.selectbox("Category", categories, key="similar_category")
    models_here = [m for m in catalog.MODEL_NAMES if (m, category) in trained]
    model = c2.selectbox("Model", models_here, format_func=catalog.model_label, key=f"similar_model:{category}")
    return model, category, c3


def build_index_controls(model: str, category: str) -> None:
    job = ui.job_panel("index", model, category)
    if job is None or job.done:
        ui.start_job_button(
            f"Build the index for {catalog.model_label(model)}/{category}",
            "index",
            model=model,
            category=category,
            key=f"index:{model}:{category}",
            before=similar.hand_over_index,  # the embedded store admits one process at a time: the run
        )


def load_gallery(model: str, category: str) -> list[dict[str, Any]] | None:
    """The past defects, or None after saying why there are none (with a button that builds the index)."""
    try:
        gallery = similar.gallery(model, category)
    except InspectError as exc:
        st.error(str(exc))
        build_index_controls(model, category)
        return None
    # An emptied store or a killed index run only looks like a short gallery: say what happened.
    problem = similar.index_problem(model, category)
    if problem:
        st.warning(problem)
        build_index_controls(model, category)
    outgrown = similar.outgrown(model, category)  # past the size the embedded store searches fast
    if outgrown:
        st.warning(outgrown[0].upper() + outgrown[1:] + ".", icon=":material/storage:")
    if not gallery:
        if not problem:
            st.info(
                f"The similar-defect index for {catalog.model_label(model)}/{category} is not built yet: "
                f"run `{similar.index_command(model, category)}`."
            )
            build_index_controls(model, category)
        return None
    return gallery


# --- The query ---------------------------------------------------------------------------------


def _shared_record(incoming: dict[str, str | None]) -> InspectionRecord | None:
    """Another browser session's inspection (a shared link): the history knows its point."""
    if not str(incoming.get("inspection") or "").isdigit():
        return None
    history = ui.get_history()
    return history.get(int(incoming["inspection"])) if history is not None else None


def find_query(view: View, incoming: dict[str, str | None] | None, only_defects: bool) -> similar.SimilarQuery | None:
    """The query: a gallery case picked here, else the inspection the Inspect page linked to."""
    model, category = view.model, view.category
    selected = st.session_state.get("similar_selected")
    if selected and selected.get("model") == model and selected.get("category") == category:
        return similar.similar_cases(model, category, point=selected["payload"], k=K, only_defects=only_defects)
    if not (incoming and incoming["model"] == model and incoming["category"] == category):
        return None
    entry = similar.find_session_inspection(st.session_state.get("inspections", {}), incoming.get("sha"), model, category)
    record = _shared_record(incoming) if entry is None else None
    query = similar.similar_cases(
        model,
        category,
        entry=entry,
        record=record,
        get_detector=lambda: ui.get_detector(model, category),
        k=K,
        only_defects=only_defects,
    )
    if query is None:
        st.info("Open this page from a DEFECT verdict on the Inspect page, or pick a past defect below.")
    return query


def show_query_case(view: View, query: similar.SimilarQuery) -> None:
    """The query itself: the session's image and heatmap, or the stored case; and the Clear button."""
    if query.entry is not None:
        shown, heatmap = similar.query_pictures(query.entry)
        st.markdown(f"**Query: {ui.plain_text(query.entry.name)}**")
        st.image(shown, width="stretch")
        st.image(heatmap, width="stretch")
        st.caption(ui.plain_text(similar.case_caption(query.payload)))
        if query.payload.get("split") in ("train", "test"):
            st.caption(f"Same file as the dataset's {ui.plain_text(similar.case_source(query.payload))}")
    else:
        show_case(view, query.payload, None, "Query")
    if st.button("Clear", key="similar_clear", icon=":material/close:"):
        st.session_state.pop("similar_selected", None)
        st.query_params.clear()
        st.rerun()


def show_hits(view: View, query: similar.SimilarQuery) -> None:
    st.markdown(f"**The {K} most similar past cases**")
    if not query.hits:
        st.info("No similar past case in the index (is it built for this model and category?).")
        return
    st.caption(similar.ranking_note(view.model, view.category))
    cols = st.columns(len(query.hits))
    for i, (col, hit) in enumerate(zip(cols, query.hits, strict=True), start=1):
        with col:
            show_case(view, hit.payload, hit.score, f"#{i}")


def show_query(view: View, query: similar.SimilarQuery) -> None:
    """The query and its nearest past cases, in one bordered box."""
    try:
        ui.get_detector(view.model, view.category)  # the heatmaps need it: a broken model is said once, not per case
    except InspectError as exc:
        st.error(str(exc))
        view.heatmaps_ok = False
    with st.container(border=True):
        top = st.columns([1, 3])
        with top[0]:
            show_query_case(view, query)
        with top[1]:
            show_hits(view, query)
        st.session_state["similar_hits"] = [h.id for h in query.hits or []]


# --- The gallery -------------------------------------------------------------------------------


def _select_button(view: View, payload: dict[str, Any]) -> None:
    if st.button("Similar cases", key=f"similar:{payload['id']}", width="stretch"):
        st.session_state["similar_selected"] = {
            "id": payload["id"],
            "model": view.model,
            "category": view.category,
            "payload": payload,
        }
        st.query_params.clear()
        st.rerun()


def _gallery_item(view: View, payload: dict[str, Any]) -> None:
    path = str(payload.get("image_path") or "")
    thumb = _thumb(path, history_view.file_mtime(path)) if path else None
    if thumb is not None:
        st.image(thumb, width="stretch")
    st.caption(ui.plain_text(f"{payload.get('defect_type') or 'unknown'} · {similar.case_source(payload)}"))
    _select_button(view, payload)


def show_gallery(view: View, gallery: list[dict[str, Any]]) -> None:
    """Past defects, filterable by defect type, a page of thumbnails at a time."""
    st.subheader("Past defects")
    model, category = view.model, view.category
    types = sorted({similar.case_type(p) for p in gallery})
    f1, f2 = st.columns([2, 1])
    dtype = f1.selectbox("Defect type", ["All", *types], key=f"similar_type:{model}:{category}")
    items = [p for p in gallery if dtype == "All" or similar.case_type(p) == dtype]
    pages = max(1, -(-len(items) // PER_PAGE))
    page = f2.number_input("Page", 1, pages, 1, key=f"similar_page:{model}:{category}:{dtype}") if pages > 1 else 1
    st.caption(f"{len(items)} past defect(s); test-set defects and inspected uploads judged DEFECT.")
    chunk = items[(page - 1) * PER_PAGE : page * PER_PAGE]
    for start in range(0, len(chunk), COLUMNS):
        cols = st.columns(COLUMNS)
        for col, payload in zip(cols, chunk[start : start + COLUMNS], strict=False):
            with col:
                _gallery_item(view, payload)


# --- The page ----------------------------------------------------------------------------------


def render() -> None:
    ui.ensure_app_frame()
    st.title("Similar past defects")
    trained = catalog.trained_models()
    for problem in catalog.unreadable_models().values():  # files there but unusable: say so, do not hide them
        st.warning(problem)
    if not trained:
        st.info("No trained model yet: `python -m core setup` prepares the demo models and the index.")
        return
    incoming = incoming_link(trained)
    model, category, toggle_column = pick_pair(trained)
    gallery = load_gallery(model, category)
    if gallery is None:
        return
    view = View(model, category, catalog.checkpoint_mtime(model, category))
    only_defects = toggle_column.toggle(
        "Only past defects", key="similar_only_defects", help="Leave good parts out of the similar cases."
    )
    try:
        query = find_query(view, incoming, only_defects)
    except (InspectError, LookupError) as exc:
        st.error(str(exc))
        query = None
    if query is not None:
        show_query(view, query)
    show_gallery(view, gallery)


render()
