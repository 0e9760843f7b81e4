"""History page: every inspection, filterable, exportable as CSV, with feedback editing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import streamlit as st

from core.errors import InspectError
from core.services import catalog, feedback_loop, history_view, inspection
from pages import _common as ui
from pages._drift import drift_panel

if TYPE_CHECKING:
    from core.history import History, InspectionRecord

ALL = "All"
MAX_ROWS = 500  # rows drawn in the table (the CSV export has them all)
#: A version that ran with its OpenVINO export gets its new version exported and checked again
SAVING = "Writing the new version (a model that runs with OpenVINO is exported and checked again)…"
TABLE_COLUMNS = [
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
    "station",
]


def all_records(history: History) -> list[InspectionRecord] | None:
    """Every inspection, or None after saying why there is nothing to show."""
    try:
        everything = history.list()
    except InspectError as exc:
        st.error(str(exc))
        return None
    if not everything:
        st.info("No inspections yet. Inspect an image on the Inspect page; every verdict is recorded here.")
        return None
    return everything


def filters(everything: list[InspectionRecord]) -> dict[str, str | None]:
    """The four filter selectors; returns the filters for ``History.list`` / ``to_csv``."""
    labels = history_view.FEEDBACK_LABELS
    f1, f2, f3, f4 = st.columns(4)
    category = f1.selectbox("Category", [ALL, *sorted({r.category for r in everything})], key="history_category")
    model = f2.selectbox(
        "Model",
        [ALL, *sorted({r.model for r in everything})],
        format_func=lambda m: m if m == ALL else catalog.model_label(m),
        key="history_model",
    )
    verdict = f3.selectbox("Verdict", [ALL, "GOOD", "DEFECT"], key="history_verdict")
    feedback = f4.selectbox(
        "Feedback",
        [ALL, history_view.UNREVIEWED, *history_view.FEEDBACK_VALUES],
        format_func=lambda f: {ALL: ALL, history_view.UNREVIEWED: "Not reviewed"}.get(f, labels.get(f, f)),
        key="history_feedback",
    )
    chosen = {"category": category, "model": model, "verdict": verdict, "feedback": feedback}
    stations = sorted({r.station for r in everything if r.station})
    if stations:  # several line stations write this history: filter by the one that judged
        chosen["station"] = st.selectbox("Station", [ALL, *stations], key="history_station")
    return {name: None if value == ALL else value for name, value in chosen.items()}


def show_counts(records: list[InspectionRecord]) -> None:
    counts = history_view.counts(records)
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("Inspections", counts.inspections)
    m2.metric("Judged DEFECT", counts.defects)
    m3.metric("Reviewed", counts.reviewed)
    m4.metric("False alarms", counts.false_alarms)


def show_stations(records: list[InspectionRecord]) -> None:
    """Each line station: alive or silent and the versions it has loaded (its heartbeat), and the
    version its newest inspection was judged with (the history)."""
    rows = history_view.stations(records)
    beats, why = history_view.heartbeats()
    if not rows and not beats:
        return
    with st.expander(f"Line stations ({len({r.station for r in rows} | {b.station for b in beats})})"):
        if why:
            st.caption(f"Heartbeats cannot be read: {why}")
        if beats:
            st.table(
                [
                    {
                        "station": b.station,
                        "host": b.host,
                        "state": "up" if b.alive else f"silent for {b.silent_s / 60:.0f} min",
                        "loaded now": ", ".join(b.loaded) or "nothing yet",
                        "last heard (UTC)": b.last_seen[:19].replace("T", " "),
                    }
                    for b in beats
                ]
            )
        if not rows:
            return
        st.table(
            [
                {
                    "station": r.station,
                    "model": catalog.model_label(r.model),
                    "category": r.category,
                    "judged last with": r.version or "",
                    "last inspection (UTC)": (r.last_inspection or "")[:19].replace("T", " "),
                    "inspections": r.inspections,
                }
                for r in rows
            ]
        )


def _table_rows(records: list[InspectionRecord]) -> list[dict[str, Any]]:
    rows = history_view.history_rows(records[:MAX_ROWS])
    for row in rows:
        path = row.pop("thumbnail_path")
        row["image"] = ui.thumbnail_uri(path, history_view.file_mtime(path))
    return rows


def show_table(records: list[InspectionRecord]) -> None:
    """The newest inspections with their thumbnails."""
    st.dataframe(
        _table_rows(records),
        hide_index=True,
        column_order=TABLE_COLUMNS,
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


def export_button(history: History, chosen: dict[str, str | None]) -> None:
    st.download_button(
        "Export CSV",
        data=lambda: history.to_csv(**chosen),
        file_name="inspect_history.csv",
        mime="text/csv",
        icon=":material/download:",
        key="history_csv",
    )


def edit_feedback(history: History, records: list[InspectionRecord]) -> None:
    """Pick one of the listed inspections and set its feedback and comment."""
    st.subheader("Edit feedback")
    by_id = {r.id: r for r in records}
    chosen = st.selectbox(
        "Inspection",
        list(by_id),
        format_func=lambda i: f"#{i} · {by_id[i].file_name} · {by_id[i].verdict} ({by_id[i].score:.2f})",
        key="history_edit_id",
    )
    if chosen is None:
        return
    rec = by_id[chosen]
    c1, c2 = st.columns([1, 2])
    with c1:
        if (jpeg := history.thumbnail(rec)) is not None:
            st.image(jpeg, width=200)
    with c2:
        _feedback_fields(history, rec)
        if rec.wrong_category and rec.verdict == "DEFECT" and not rec.point_id:
            _gallery_offer(history, rec)


def _gallery_offer(history: History, rec: InspectionRecord) -> None:
    """A DEFECT kept out of the similar-defect gallery as "wrong category": a person may let it in."""
    st.caption(f"Kept out of the similar-defect gallery: the model judged it not to look like a {rec.category} image.")
    if st.button(f"It is a {rec.category} part: add it to the gallery", key=f"history_gallery:{rec.id}"):
        try:
            _, note = inspection.add_to_gallery(history, int(rec.id), ui.get_detector(rec.model, rec.category))
        except InspectError as exc:
            st.error(str(exc))
            return
        st.toast(note or f"Inspection #{rec.id} added to the similar-defect gallery")
        st.rerun()


def _feedback_fields(history: History, rec: InspectionRecord) -> None:
    choices = ["none", *history_view.FEEDBACK_VALUES]
    value = st.radio(
        "Feedback",
        choices,
        index=choices.index(rec.feedback) if rec.feedback in choices else 0,
        format_func=lambda f: "Not reviewed" if f == "none" else history_view.FEEDBACK_LABELS[f],
        horizontal=True,
        key=f"history_fb:{rec.id}",
    )
    comment = st.text_input("Comment", value=rec.comment or "", key=f"history_comment:{rec.id}")
    if st.button("Save feedback", type="primary", key="history_save"):
        try:
            history.set_feedback(rec.id, None if value == "none" else value, comment.strip() or None)
        except InspectError as exc:
            st.error(str(exc))
        else:
            st.toast(f"Feedback saved for inspection #{rec.id}")
            st.rerun()


# --- Learning from feedback ------------------------------------------------------------------


def _rate(errors: Any) -> str:
    return "–" if errors is None else f"{errors.false_alarms} of {errors.goods}"


def _missed(errors: Any) -> str:
    return "–" if errors is None else f"{errors.missed} of {errors.defects}"


def learn(history: History, chosen: dict[str, str | None]) -> None:
    """Drift, recalibration, memory-bank growth and versions for one trained (model, category)."""
    st.subheader("Learn from feedback")
    trained = sorted(catalog.trained_models())
    if not trained:
        st.caption("No trained model yet.")
        return
    wanted = [t for t in trained if chosen["category"] in (None, t[1]) and chosen["model"] in (None, t[0])] or trained
    model, category = st.selectbox(
        "Model and category",
        wanted,
        format_func=lambda t: f"{catalog.model_label(t[0])} · {t[1]}",
        key="learn_target",
    )
    try:
        detector = ui.get_detector(model, category)
    except InspectError as exc:
        st.error(str(exc))
        return
    st.caption(f"Version in use: {detector.version}. Every change below writes a new version; any earlier one can be restored.")
    drift_panel(detector, history, compute=True, key="history_drift", station=chosen.get("station"))
    if ui.may_change_models():
        recalibrate_section(history, model, category, detector.version)
        bank_section(history, model, category)
    else:
        st.caption(
            ":material/lock: Recalibrating, teaching the model confirmed goods and restoring versions are for "
            "engineers: your feedback above is what they work from."
        )
    versions_section(model, category)


def recalibrate_section(history: History, model: str, category: str, version: str) -> None:
    st.markdown("**Recalibrate the threshold from the reviews**")
    if st.button("Propose a threshold", key="learn_propose"):
        with st.spinner("Scoring the calibration split and the test set (once per version)…"):
            try:
                proposal = feedback_loop.propose_recalibration(model, category)[0]
                st.session_state["learn_proposal"] = (model, category, proposal, version)
            except InspectError as exc:
                st.error(str(exc))
    kept = st.session_state.get("learn_proposal")
    if not kept or kept[:2] != (model, category):
        return
    proposal, proposed_for = kept[2], kept[3]
    for note in proposal.notes:
        st.caption(note)
    if not proposal.ok:
        st.warning(proposal.refusal)
        return
    rows = [
        {"": "reviewed: false alarms", "before": _rate(proposal.reviewed_before), "after": _rate(proposal.reviewed_after)},
        {"": "reviewed: missed defects", "before": _missed(proposal.reviewed_before), "after": _missed(proposal.reviewed_after)},
        {"": "test set: false alarms", "before": _rate(proposal.test_before), "after": _rate(proposal.test_after)},
        {"": "test set: missed defects", "before": _missed(proposal.test_before), "after": _missed(proposal.test_after)},
    ]
    st.table(rows)
    st.caption(
        f"Raw threshold {proposal.current:.6g} → {proposal.proposed:.6g}, from {proposal.reviews} reviews and "
        f"{proposal.calibration_goods} held-out goods of the calibration split."
    )
    if st.button("Apply this threshold", type="primary", key="learn_apply"):
        try:
            with st.spinner(SAVING):
                version, _ = feedback_loop.apply_recalibration(
                    model, category, actor=ui.actor(), history=history, expected_version=proposed_for
                )
        except InspectError as exc:
            st.error(str(exc))
        else:
            st.session_state.pop("learn_proposal", None)
            runtime = feedback_loop.runtime_of(model, category, version)
            st.toast(f"New version {version} with the recalibrated threshold (runs with {runtime})")
            st.rerun()


def bank_section(history: History, model: str, category: str) -> None:
    st.markdown("**Teach the model the confirmed good parts**")
    if model != "patchcore":
        st.caption(f"Recalibration only: {feedback_loop.bank_reason()}")
        return
    goods = feedback_loop.confirmed_goods(history, model, category)
    st.caption(
        f"{len(goods)} confirmed-good inspection(s) (false alarms and correct GOOD verdicts) not yet in the memory bank. "
        "Their patches join it through the same coreset training uses, and the threshold is refreshed."
    )
    force = st.checkbox(
        f"I confirm these are good {category} parts, even those the model says do not look like {category}",
        key="history_bank_force",
        help="Without this, an image that does not look like the category refuses the update, and nothing is written.",
    )
    if st.button("Add confirmed goods to the memory bank", disabled=not goods, key="history_update_bank"):
        with st.spinner("Checking the images and growing the memory bank…"):
            try:
                done = feedback_loop.update_bank(
                    category, model=model, from_history=True, actor=ui.actor(), force=force, history=history
                )
            except InspectError as exc:
                st.error(str(exc))
                return
        st.session_state["learn_bank_done"] = done
        st.rerun()
    done = st.session_state.get("learn_bank_done")
    if done:
        st.success(
            f"New version {done.version}: memory bank {done.n_old} → {done.n_old + done.n_added} patches "
            f"from {done.n_images} image(s); threshold (raw) {done.threshold_before:.6g} → {done.threshold_after:.6g}."
            + (
                f" Known defects: {done.defects_caught_before} of {done.defects_known} caught before, "
                f"{done.defects_caught_after} after."
                if done.defects_known
                else ""
            )
            + (
                f" Held-out goods flagged: {done.goods_flagged_before} of {done.held_out_goods} before, "
                f"{done.goods_flagged_after} after."
                if done.held_out_goods
                else ""
            )
        )
        for note in done.notes:
            st.warning(note)


def versions_section(model: str, category: str) -> None:
    infos = feedback_loop.versions(model, category)
    with st.expander(f"Versions ({len(infos)})"):
        st.table(
            [
                {
                    "version": v.version + (" (in use)" if v.is_latest else ""),
                    "when": v.created[:19],
                    "what": v.kind,
                    "change": v.change,
                    "parent": v.parent or "",
                    "who": v.who,
                    "inspections": ", ".join(map(str, v.inspections)),
                }
                for v in reversed(infos)
            ]
        )
        older = [v.version for v in infos if not v.is_latest]
        if not older or not ui.may_change_models():
            return
        target = st.selectbox("Restore", older[::-1], key="learn_restore_version")
        if st.button("Restore this version", key="learn_restore"):
            try:
                with st.spinner(SAVING):
                    version = feedback_loop.restore_version(model, category, target, actor=ui.actor())
            except InspectError as exc:
                st.error(str(exc))
            else:
                st.toast(f"{target} restored as {version} (runs with {feedback_loop.runtime_of(model, category, version)})")
                st.rerun()


def render() -> None:
    ui.ensure_app_frame()
    st.title("Inspection history")
    history = ui.get_history()
    if history is None:
        return
    everything = all_records(history)
    if everything is None:
        return
    chosen = filters(everything)
    records = history.list(**chosen)
    show_counts(records)
    show_stations(everything)
    show_table(records)
    export_button(history, chosen)
    edit_feedback(history, records)
    learn(history, chosen)


render()
