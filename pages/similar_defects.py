"""Similar defects page: a gallery of past defects and, for one of them, its five nearest cases.

Past defects are the test set's anomalous images and the uploads judged DEFECT, as indexed in
Qdrant (``python -m core index``). Clicking "Similar cases" under a thumbnail shows that case with
its heatmap and the five most similar past cases, each with its similarity, label, defect type and
heatmap. The Inspect page links here for a fresh DEFECT verdict (query parameters ``model``,
``category``, ``sha`` and ``inspection``). Nothing is ever made up: without an index the page says
how to build one. File names and defect types are shown as text (``ui.plain_text``).
"""

from __future__ import annotations

import os

import streamlit as st

from core import app_services as svc
from core.errors import InspectError
from pages import _common as ui

ui.ensure_app_frame()

K = 5
PER_PAGE = 24
COLUMNS = 6

st.title("Similar past defects")

service = svc.similarity_service()
trained = svc.trained_models()
for problem in svc.unreadable_models().values():  # files there but unusable: say so, do not hide them
    st.warning(problem)
if not trained:
    st.info("No trained model yet: `python -m core setup` prepares the demo models and the index.")
    st.stop()

# A link from the Inspect page carries its query in the URL (and the image in the session).
params = st.query_params
incoming = None
if params.get("model") and params.get("category") and (params["model"], params["category"]) in trained:
    incoming = {k: params.get(k) for k in ("model", "category", "sha", "inspection")}
    st.session_state["similar_category"] = incoming["category"]
    st.session_state[f"similar_model:{incoming['category']}"] = incoming["model"]

categories = sorted({c for _, c in trained})
c1, c2, c3 = st.columns(3)
category = c1.selectbox("Category", categories, key="similar_category")
models_here = [m for m in svc.MODEL_NAMES if (m, category) in trained]
model = c2.selectbox("Model", models_here, format_func=svc.model_label, key=f"similar_model:{category}")

index_cmd = f"{svc.INDEX_COMMAND} --model {model} --category {category}"
if service is None:
    st.info(f"The similar-defect index is not available in this installation. Build it with `{index_cmd}`.")
    st.stop()


def build_index_controls() -> None:
    job = ui.job_panel("index", model, category)
    if job is None or job.done:
        ui.start_job_button(
            f"Build the index for {svc.model_label(model)}/{category}",
            "index",
            model=model,
            category=category,
            key=f"index:{model}:{category}",
        )


try:
    gallery = service.gallery(model, category)
except InspectError as exc:
    st.error(str(exc))
    build_index_controls()
    st.stop()

# An emptied store or a killed index run only looks like a short gallery: say what happened.
problem = svc.index_problem(model, category)
if problem:
    st.warning(problem)
    build_index_controls()
if not gallery:
    if not problem:
        st.info(f"The similar-defect index for {svc.model_label(model)}/{category} is not built yet: run `{index_cmd}`.")
        build_index_controls()
    st.stop()

mtime = svc.checkpoint_mtime(model, category)
heatmaps_ok = True  # False once the model failed to load: cases are shown without heatmaps


@st.cache_data(max_entries=512, show_spinner=False)
def _thumb(path: str, file_mtime: float) -> bytes | None:
    image = svc.load_case_image({"image_path": path})
    if image is None:
        return None
    from core.inference.overlay import thumbnail, to_png_bytes

    return to_png_bytes(thumbnail(image, 192))


@st.cache_data(max_entries=256, show_spinner=False)
def _heatmap(model: str, category: str, model_mtime: float, path: str, file_mtime: float) -> tuple[bytes, float] | None:
    image = svc.load_case_image({"image_path": path})
    if image is None:
        return None
    from core.inference.overlay import heatmap_overlay, thumbnail, to_png_bytes

    prediction = svc.predict(ui.get_detector(model, category), image)
    small = svc.display_copy(image, 256)
    return to_png_bytes(thumbnail(heatmap_overlay(small, prediction.anomaly_map, opacity=0.5), 256)), prediction.score


def _mtime(path: str | None) -> float:
    return os.path.getmtime(path) if path and os.path.isfile(path) else 0.0


def show_case(payload: dict, similarity: float | None, title: str) -> None:
    path = str(payload.get("image_path") or "")
    st.markdown(f"**{title}**")
    thumb = _thumb(path, _mtime(path)) if path else None
    heat = _heatmap(model, category, mtime, path, _mtime(path)) if path and heatmaps_ok else None
    if thumb is None:
        st.caption("(image file no longer available)")
    else:
        st.image(thumb, width="stretch")
        if heat is not None:
            st.image(heat[0], width="stretch")
    st.caption(ui.plain_text(svc.case_caption(payload, similarity)))
    st.caption(ui.plain_text(svc.case_source(payload)))


# --- The query ------------------------------------------------------------------------------
only_defects = c3.toggle("Only past defects", key="similar_only_defects", help="Leave good parts out of the similar cases.")
selected = st.session_state.get("similar_selected")
query = None
try:
    if selected and selected.get("model") == model and selected.get("category") == category:
        query = svc.similar_cases(model, category, point=selected["payload"], k=K, only_defects=only_defects)
    elif incoming and incoming["model"] == model and incoming["category"] == category:
        entry = svc.find_session_inspection(st.session_state.get("inspections", {}), incoming.get("sha"), model, category)
        record = None
        if entry is None and str(incoming.get("inspection") or "").isdigit():
            # Another browser session (a shared link): the history knows the inspection's point.
            history = ui.get_history()
            record = history.get(int(incoming["inspection"])) if history is not None else None
        query = svc.similar_cases(
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
except (InspectError, LookupError) as exc:
    st.error(str(exc))

if query is not None:
    try:
        ui.get_detector(model, category)  # the heatmaps need it: a broken model is said once, not per case
    except InspectError as exc:
        st.error(str(exc))
        heatmaps_ok = False
    with st.container(border=True):
        top = st.columns([1, 3])
        with top[0]:
            if query.entry is not None:
                from core.inference.overlay import heatmap_overlay

                shown = svc.display_copy(query.entry["image"], 384)
                st.markdown(f"**Query: {ui.plain_text(query.entry['name'])}**")
                st.image(shown, width="stretch")
                st.image(heatmap_overlay(shown, query.entry["prediction"].anomaly_map, opacity=0.5), width="stretch")
                st.caption(ui.plain_text(svc.case_caption(query.payload)))
                if query.payload.get("split") in ("train", "test"):
                    st.caption(f"Same file as the dataset's {ui.plain_text(svc.case_source(query.payload))}")
            else:
                show_case(query.payload, None, "Query")
            if st.button("Clear", key="similar_clear", icon=":material/close:"):
                st.session_state.pop("similar_selected", None)
                st.query_params.clear()
                st.rerun()
        with top[1]:
            st.markdown(f"**The {K} most similar past cases**")
            if not query.hits:
                st.info("No similar past case in the index (is it built for this model and category?).")
            else:
                cols = st.columns(len(query.hits))
                for i, (col, hit) in enumerate(zip(cols, query.hits, strict=True), start=1):
                    with col:
                        show_case(hit.payload, hit.score, f"#{i}")
        st.session_state["similar_hits"] = [h.id for h in query.hits or []]

# --- The gallery ---------------------------------------------------------------------------
st.subheader("Past defects")
types = sorted({str(p.get("defect_type") or "unknown") for p in gallery})
f1, f2 = st.columns([2, 1])
dtype = f1.selectbox("Defect type", ["All", *types], key=f"similar_type:{model}:{category}")
items = [p for p in gallery if dtype == "All" or str(p.get("defect_type") or "unknown") == dtype]
pages = max(1, -(-len(items) // PER_PAGE))
page = f2.number_input("Page", 1, pages, 1, key=f"similar_page:{model}:{category}:{dtype}") if pages > 1 else 1
st.caption(f"{len(items)} past defect(s); test-set defects and inspected uploads judged DEFECT.")
chunk = items[(page - 1) * PER_PAGE : page * PER_PAGE]
for start in range(0, len(chunk), COLUMNS):
    cols = st.columns(COLUMNS)
    for col, payload in zip(cols, chunk[start : start + COLUMNS], strict=False):
        with col:
            path = str(payload.get("image_path") or "")
            thumb = _thumb(path, _mtime(path)) if path else None
            if thumb is not None:
                st.image(thumb, width="stretch")
            st.caption(ui.plain_text(f"{payload.get('defect_type') or 'unknown'} · {svc.case_source(payload)}"))
            if st.button("Similar cases", key=f"similar:{payload['id']}", width="stretch"):
                st.session_state["similar_selected"] = {
                    "id": payload["id"],
                    "model": model,
                    "category": category,
                    "payload": payload,
                }
                st.query_params.clear()
                st.rerun()
