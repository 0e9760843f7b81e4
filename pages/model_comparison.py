"""Compare page: PatchCore vs EfficientAD from the results file (``python -m core evaluate``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import streamlit as st

from core.services import catalog, comparison
from pages import _common as ui
from pages._figures import auroc_bar_figure, roc_figure, validation_curve_figure

if TYPE_CHECKING:
    import pandas as pd

    from core.registry import ModelMeta

#: Seconds between refreshes of the bars and the queue panel while EfficientAD trains in the background.
LIVE_REFRESH_S = 10
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
        "F1 and false alarm rate are at the calibrated threshold; latency is one warm single-image call "
        "on a test image at its own size, on the runtime in 'latency runtime' (torch, or the model's OpenVINO "
        "export); 'input' says whether the model saw it whole at 256 px or tile by tile at the camera's pixels. "
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


def _minutes(seconds: float | None) -> str:
    return "?" if seconds is None else f"{max(1, round(seconds / 60))} min"


def background_queue(results: dict[str, Any]) -> bool:
    """The EfficientAD background queue, where a bar is still missing; True while it runs."""
    rows, job = comparison.background_queue()
    running = job is not None and not job.done
    pending = [r for r in rows if r.status != "done" or f"efficientad/{r.category}" not in results.get("models", {})]
    if not pending:
        return running
    st.markdown("**EfficientAD, training in the background** (low priority, one category at a time)")
    left = 0.0
    for row in pending:
        name = f"EfficientAD/{row.category}"
        if row.status == "training":
            auroc = f", validation AUROC {row.val_auroc:.3f}" if row.val_auroc is not None else ""
            text = (
                f"{name}: training, step {row.step or 0:,}{auroc}; at most {_minutes(row.remaining_s)} left "
                "(it stops earlier when the validation AUROC and loss stop improving)"
            )
            st.progress(row.fraction or 0.0, text=text)
            left += row.remaining_s or 0.0
        elif row.status == "queued":
            st.caption(f"{name}: queued, up to {_minutes(row.remaining_s)} of training")
            left += row.remaining_s or 0.0
        elif row.status == "evaluating":
            st.caption(f"{name}: trained, evaluating on the test set; its bars follow")
        elif row.status == "failed":
            st.warning(f"{name}: failed: {row.message}")
        else:  # interrupted / cancelled
            st.caption(f"{name}: {row.status}")
    if running and left:
        st.caption(f"All EfficientAD bars within about {_minutes(left)} at most. Log: `{job.log_path}`")
    return running


def live_results(results: dict[str, Any]) -> None:
    """The AUROC bars and the queue panel, refreshed while EfficientAD trains in the background.

    When a new model lands in the results file the whole page reruns, so the tables follow.
    """
    comparison.resume_background_queue()  # a queue whose process died (machine restart) goes on
    rows, job = comparison.background_queue()
    active = job is not None and not job.done
    shown = set(results.get("models", {}))

    @st.fragment(run_every=LIVE_REFRESH_S if active else None)
    def _live() -> None:
        now = comparison.load_results().data
        if set(now.get("models", {})) != shown:
            st.rerun(scope="app")
        if now.get("models"):
            auroc_bars(now)
        background_queue(now)

    _live()


def validation_curves(trained: dict[tuple[str, str], ModelMeta]) -> None:
    curves = comparison.validation_curves(trained)
    if not curves:
        return
    st.subheader("Validation curves")
    st.plotly_chart(validation_curve_figure(curves), key="compare_validation_curves")
    st.caption(
        "Scored during training on anomalib's synthetic validation split (held-out training images, half of them "
        "with synthetic defects; never the test set). Training stops when AUROC and loss stop improving, or at its "
        "time budget."
    )


def render() -> None:
    ui.ensure_app_frame()
    st.title("Compare models")
    results = load_results()
    trained = catalog.trained_models()
    for _, problem in sorted(catalog.unreadable_models().items()):
        st.warning(problem)
    if not results.get("models"):
        no_results(trained)
        live_results(results)
        return
    table = comparison.results_table(results)
    live_results(results)
    all_metrics(table)
    per_defect_type(results)
    roc_curves(results)
    validation_curves(trained)
    retrieval(results)
    not_evaluated(results, trained)


render()
