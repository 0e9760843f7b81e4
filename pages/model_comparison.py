"""Compare page: PatchCore vs EfficientAD from the results file (``python -m core evaluate``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import streamlit as st

from core.services import catalog, comparison
from pages import _common as ui
from pages._figures import auroc_bar_figure, roc_figure

if TYPE_CHECKING:
    import pandas as pd

    from core.registry import ModelMeta

SCORE_COLUMNS = ("image AUROC", "pixel AUROC", "image F1", "pixel F1", "AUPRO", "false alarm rate")


def load_results() -> dict[str, Any]:
    """The results; an unusable file is shown as a warning over an empty page, never as a crash.

    The next `python -m core evaluate` keeps it aside and writes a fresh one.
    """
    status = comparison.load_results()
    if status.problem:
        st.warning(
            f"{status.problem}: showing no results. Re-run `python -m core evaluate`; it keeps the old file "
            f"aside (as {comparison.results_file().name}.corrupt-<time>) and writes a fresh one."
        )
    return status.data


def no_results(trained: dict[tuple[str, str], ModelMeta]) -> None:
    """What to run when nothing is evaluated yet, and a button that runs it."""
    st.info(
        "No evaluation results yet. Evaluate the trained models with `python -m core evaluate` "
        f"(writes {comparison.results_file()}); this page then compares them."
    )
    if trained:
        job = ui.job_panel("evaluate", None, None)
        if job is None or job.done:
            ui.start_job_button("Evaluate all trained models now", "evaluate", model=None, category=None, key="evaluate_all")
    else:
        st.caption("No model is trained yet either: `python -m core setup` prepares the demo models and their results.")


def auroc_bars(results: dict[str, Any]) -> None:
    st.plotly_chart(auroc_bar_figure(results), key="compare_bars")
    st.caption(
        "Our measurements on each category's test set. Black diamonds, where shown, are **published figures** "
        "from the papers (MVTec AD bottle only), for reference: they were not measured here."
    )


def all_metrics(table: pd.DataFrame) -> None:
    """Every metric of every evaluated pair, and the published figures beside them."""
    st.subheader("All metrics")
    st.dataframe(
        table,
        hide_index=True,
        column_config={col: st.column_config.NumberColumn(col, format="%.3f") for col in SCORE_COLUMNS}
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
    published = comparison.published_rows(table["category"])
    if published:
        with st.expander("Published figures (for reference, not measured here)"):
            st.dataframe(published, hide_index=True)


def per_defect_type(results: dict[str, Any]) -> None:
    st.subheader("Per defect type")
    per_type = comparison.per_defect_table(results)
    if per_type.empty:
        st.caption("The results file has no per-defect-type breakdown.")
        return
    st.dataframe(
        per_type,
        hide_index=True,
        column_config={
            "image AUROC": st.column_config.NumberColumn(format="%.3f"),
            "detection rate": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="percent"),
        },
        key="compare_per_type",
    )


def roc_curves(results: dict[str, Any]) -> None:
    st.subheader("ROC curve")
    roc_category = st.selectbox("Category", comparison.evaluated_categories(results), key="compare_roc_category")
    st.plotly_chart(roc_figure(results, roc_category), key="compare_roc")


def retrieval(results: dict[str, Any]) -> None:
    table = comparison.retrieval_table(results)
    if table.empty:
        return
    st.subheader("Similar-defect retrieval")
    st.caption("Precision@k of the similar past cases (from `python -m core eval-similar`), next to chance.")
    st.dataframe(table, hide_index=True, key="compare_retrieval")


def not_evaluated(results: dict[str, Any], trained: dict[tuple[str, str], ModelMeta]) -> None:
    """Trained pairs missing from the results, and a button that evaluates them."""
    missing = comparison.unevaluated(results, trained)
    if not missing:
        return
    st.info(
        "Trained but not evaluated yet: "
        + ", ".join(f"{catalog.model_label(m)}/{c}" for m, c in missing)
        + ". Run `python -m core evaluate` or start it here."
    )
    job = ui.job_panel("evaluate", None, None)
    if job is None or job.done:
        ui.start_job_button("Evaluate now", "evaluate", model=None, category=None, key="evaluate_missing")


def render() -> None:
    ui.ensure_app_frame()
    st.title("Compare models")
    results = load_results()
    trained = catalog.trained_models()
    for _, problem in sorted(catalog.unreadable_models().items()):
        st.warning(problem)
    if not results.get("models"):
        no_results(trained)
        return
    table = comparison.results_table(results)
    auroc_bars(results)
    all_metrics(table)
    per_defect_type(results)
    roc_curves(results)
    retrieval(results)
    not_evaluated(results, trained)


render()
