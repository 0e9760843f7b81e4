"""History page: every inspection, filterable, exportable as CSV, with feedback editing."""

from __future__ import annotations

import os

import streamlit as st

from core import app_services as svc
from core.errors import InspectError
from pages import _common as ui

ui.ensure_app_frame()

ALL = "All"
MAX_ROWS = 500  # rows drawn in the table (the CSV export has them all)

st.title("Inspection history")

history = ui.get_history()
if history is None:
    st.stop()
try:
    everything = history.list()
except InspectError as exc:
    st.error(str(exc))
    st.stop()

if not everything:
    st.info("No inspections yet. Inspect an image on the Inspect page; every verdict is recorded here.")
    st.stop()

from core.history import FEEDBACK_VALUES, UNREVIEWED  # noqa: E402 - after the guard above

f1, f2, f3, f4 = st.columns(4)
category = f1.selectbox("Category", [ALL, *sorted({r.category for r in everything})], key="history_category")
model = f2.selectbox(
    "Model",
    [ALL, *sorted({r.model for r in everything})],
    format_func=lambda m: m if m == ALL else svc.model_label(m),
    key="history_model",
)
verdict = f3.selectbox("Verdict", [ALL, "GOOD", "DEFECT"], key="history_verdict")
feedback_options = [ALL, UNREVIEWED, *FEEDBACK_VALUES]
feedback = f4.selectbox(
    "Feedback",
    feedback_options,
    format_func=lambda f: {ALL: ALL, UNREVIEWED: "Not reviewed"}.get(f, svc.FEEDBACK_LABELS.get(f, f)),
    key="history_feedback",
)
filters = {
    "category": None if category == ALL else category,
    "model": None if model == ALL else model,
    "verdict": None if verdict == ALL else verdict,
    "feedback": None if feedback == ALL else feedback,
}
records = history.list(**filters)

n_defect = sum(r.verdict == "DEFECT" for r in records)
n_reviewed = sum(r.feedback is not None for r in records)
n_false = sum(r.feedback == "false_alarm" for r in records)
m1, m2, m3, m4 = st.columns(4)
m1.metric("Inspections", len(records))
m2.metric("Judged DEFECT", n_defect)
m3.metric("Reviewed", n_reviewed)
m4.metric("False alarms", n_false)

rows = svc.history_rows(records[:MAX_ROWS])
for row in rows:
    path = row.pop("thumbnail_path")
    mtime = os.path.getmtime(path) if path and os.path.isfile(path) else 0.0
    row["image"] = ui.thumbnail_uri(path, mtime)
st.dataframe(
    rows,
    hide_index=True,
    column_order=[
        "id",
        "image",
        "time (UTC)",
        "file",
        "category",
        "model",
        "verdict",
        "score",
        "threshold",
        "raw score",
        "feedback",
        "comment",
    ],
    column_config={
        "image": st.column_config.ImageColumn("image", width="small"),
        "score": st.column_config.NumberColumn("score", format="%.3f", help="Normalised: 0.5 = calibrated threshold"),
        "threshold": st.column_config.NumberColumn("threshold", format="%.2f"),
        "raw score": st.column_config.NumberColumn("raw score", format="%.4g"),
    },
    row_height=56,
    key="history_table",
)
if len(records) > MAX_ROWS:
    st.caption(f"Showing the newest {MAX_ROWS} of {len(records)}; the CSV export has them all.")

st.download_button(
    "Export CSV",
    data=lambda: history.to_csv(**filters),
    file_name="inspect_history.csv",
    mime="text/csv",
    icon=":material/download:",
    key="history_csv",
)

# --- Feedback editing ----------------------------------------------------------------------
st.subheader("Edit feedback")
by_id = {r.id: r for r in records}
chosen = st.selectbox(
    "Inspection",
    list(by_id),
    format_func=lambda i: f"#{i} · {by_id[i].file_name} · {by_id[i].verdict} ({by_id[i].score:.2f})",
    key="history_edit_id",
)
if chosen is not None:
    rec = by_id[chosen]
    c1, c2 = st.columns([1, 2])
    with c1:
        if rec.thumbnail_path and os.path.isfile(rec.thumbnail_path):
            st.image(rec.thumbnail_path, width=200)
    with c2:
        choices = ["none", *FEEDBACK_VALUES]
        value = st.radio(
            "Feedback",
            choices,
            index=choices.index(rec.feedback) if rec.feedback in choices else 0,
            format_func=lambda f: "Not reviewed" if f == "none" else svc.FEEDBACK_LABELS[f],
            horizontal=True,
            key=f"history_fb:{chosen}",
        )
        comment = st.text_input("Comment", value=rec.comment or "", key=f"history_comment:{chosen}")
        if st.button("Save feedback", type="primary", key="history_save"):
            try:
                history.set_feedback(chosen, None if value == "none" else value, comment.strip() or None)
            except InspectError as exc:
                st.error(str(exc))
            else:
                st.toast(f"Feedback saved for inspection #{chosen}")
                st.rerun()
