"""The drift panel both the Inspect and the History page show: recent scores against calibration."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

from core.errors import InspectError
from core.services import feedback_loop

if TYPE_CHECKING:
    from core.history import History
    from core.inference.detector import Detector
    from core.learning.drift import DriftReport


def _figure(report: DriftReport):
    import plotly.graph_objects as go

    from core.learning.drift import histogram

    rows = histogram(report)
    fig = go.Figure()
    fig.add_bar(x=[r["score"] for r in rows], y=[r["recent"] for r in rows], name=f"last {len(report.recent_scores)}")
    if report.calibration_scores:
        fig.add_bar(x=[r["score"] for r in rows], y=[r["calibration goods"] for r in rows], name="calibration goods")
    fig.add_vline(x=0.5, line_dash="dash", annotation_text="threshold")
    fig.update_layout(barmode="overlay", height=220, margin={"l": 10, "r": 10, "t": 10, "b": 10}, xaxis_title="score")
    fig.update_traces(opacity=0.7)
    return fig


def drift_panel(detector: Detector, history: History | None, *, compute: bool, key: str, station: str | None = None) -> None:
    """Median, share over the threshold, warnings and a histogram with the threshold line
    (``station``: of that line station's inspections only)."""
    if history is None:
        return
    try:
        with st.spinner("Scoring the calibration images (once per model version)…") if compute else st.empty():
            report = feedback_loop.drift(detector, history, compute=compute, station=station)
    except InspectError as exc:
        st.caption(f"Drift cannot be measured: {exc}")
        return
    if station:
        st.caption(f"Drift at station {station}: its inspections only.")
    for warning in report.warnings:
        st.warning(warning, icon=":material/trending_up:")
    if not report.recent_scores:
        st.caption(f"No inspections by {detector.version or 'this version'} yet: nothing to compare with calibration.")
        return
    c1, c2, c3 = st.columns(3)
    c1.metric(f"Median, last {len(report.recent_scores)}", f"{report.recent_median:.2f}")
    c2.metric(
        "Over the threshold", f"{report.share_over:.0%}", help=f"Calibration predicts at most about {report.expected_share:.0%}."
    )
    c3.metric(
        "Confirmed goods, median",
        "–" if report.confirmed_median is None else f"{report.confirmed_median:.2f}",
        help="90th percentile of the calibration goods: "
        + ("unknown" if report.calibration_good_q90 is None else f"{report.calibration_good_q90:.2f}"),
    )
    st.plotly_chart(_figure(report), key=key)
