"""Compare page: PatchCore vs EfficientAD from the results file (``python -m core evaluate``)."""

from __future__ import annotations

import streamlit as st

from core import app_services as svc
from core.evaluation.results import load_results_checked, results_path
from pages import _common as ui

ui.ensure_app_frame()

st.title("Compare models")

# An unusable results file is shown as a warning over an empty page, never as a crash; the next
# `python -m core evaluate` keeps it aside and writes a fresh one.
status = load_results_checked()
results = status.data
if status.problem:
    st.warning(
        f"{status.problem}: showing no results. Re-run `python -m core evaluate`; it keeps the old file "
        f"aside (as {results_path().name}.corrupt-<time>) and writes a fresh one."
    )

trained = svc.trained_models()
for _, problem in sorted(svc.unreadable_models().items()):
    st.warning(problem)
if not results.get("models"):
    st.info(
        "No evaluation results yet. Evaluate the trained models with `python -m core evaluate` "
        f"(writes {results_path()}); this page then compares them."
    )
    if trained:
        job = ui.job_panel("evaluate", None, None)
        if job is None or job.done:
            ui.start_job_button("Evaluate all trained models now", "evaluate", model=None, category=None, key="evaluate_all")
    else:
        st.caption("No model is trained yet either: `python -m core setup` prepares the demo models and their results.")
    st.stop()

table = svc.results_table(results)
st.plotly_chart(svc.auroc_bar_figure(results), key="compare_bars")
st.caption(
    "Our measurements on each category's test set. Black diamonds, where shown, are **published figures** "
    "from the papers (MVTec AD bottle only), for reference: they were not measured here."
)

st.subheader("All metrics")
st.dataframe(
    table,
    hide_index=True,
    column_config={
        col: st.column_config.NumberColumn(col, format="%.3f")
        for col in ("image AUROC", "pixel AUROC", "image F1", "pixel F1", "AUPRO", "false alarm rate")
    }
    | {
        "latency (ms)": st.column_config.NumberColumn("latency (ms)", format="%.1f"),
        "peak memory (MB)": st.column_config.NumberColumn("peak memory (MB)", format="%.0f"),
        "train time (s)": st.column_config.NumberColumn("train time (s)", format="%.1f"),
    },
    key="compare_table",
)
st.caption(
    "F1 and false alarm rate are at the calibrated threshold; latency is one warm single-image call. "
    "The threshold source says which images calibrated each model (never the test set)."
)

published = [
    {"model": svc.model_label(m), "category": c, **{k: v for k, v in ref.items()}}
    for (m, c), ref in svc.published_figures().items()
    if c in set(table["category"])
]
if published:
    with st.expander("Published figures (for reference, not measured here)"):
        st.dataframe(published, hide_index=True)

st.subheader("Per defect type")
per_type = svc.per_defect_table(results)
if per_type.empty:
    st.caption("The results file has no per-defect-type breakdown.")
else:
    st.dataframe(
        per_type,
        hide_index=True,
        column_config={
            "image AUROC": st.column_config.NumberColumn(format="%.3f"),
            "detection rate": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
        },
        key="compare_per_type",
    )

st.subheader("ROC curve")
categories = svc.evaluated_categories(results)
roc_category = st.selectbox("Category", categories, key="compare_roc_category")
st.plotly_chart(svc.roc_figure(results, roc_category), key="compare_roc")

retrieval = svc.retrieval_table(results)
if not retrieval.empty:
    st.subheader("Similar-defect retrieval")
    st.caption("Precision@k of the similar past cases (from `python -m core eval-similar`), next to chance.")
    st.dataframe(retrieval, hide_index=True, key="compare_retrieval")

missing = sorted({(m, c) for (m, c) in trained} - {svc.split_key(k) for k in results["models"]})
if missing:
    st.info(
        "Trained but not evaluated yet: "
        + ", ".join(f"{svc.model_label(m)}/{c}" for m, c in missing)
        + ". Run `python -m core evaluate` or start it here."
    )
    job = ui.job_panel("evaluate", None, None)
    if job is None or job.done:
        ui.start_job_button("Evaluate now", "evaluate", model=None, category=None, key="evaluate_missing")
