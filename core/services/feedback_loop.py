"""Learning from inspectors, for the pages and the CLI: versions, recalibration, bank growth, drift.

Thin glue over :mod:`core.learning`: it finds the reviewed inspections of a (model, category) in
the history, gets their raw scores under the version being changed, and turns every change into a
new registry version with its lineage. Heavy libraries are imported inside the functions.

Scores of reviews: an inspection judged by the current version keeps its stored raw score; one
judged by another version (or before versions were recorded) is scored again from its history
thumbnail (256 px, the size the demo and default models work at; the original upload is not kept).

Every function here that changes a model checks its :class:`~core.auth.Actor` first
(:func:`core.auth.require_engineer`), whatever page or command called it, and records the actor's
name in the new version. A change is published by compare-and-set on the version it was computed
from (:func:`core.learning.versions.save_derived`): a bank update that lost the race is computed
again on the new newest version (so both changes end up in it); a threshold or a restore, which a
person chose while looking at the version before, is refused with a line naming the other change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from core.auth import Actor, require_engineer
from core.errors import ConfigError, InspectError, VersionConflictError

if TYPE_CHECKING:
    from core.history import History, InspectionRecord
    from core.inference.detector import Detector
    from core.learning.bank_update import Refresh
    from core.learning.drift import DriftReport
    from core.learning.gate import Screened
    from core.learning.recalibration import Proposal
    from core.learning.versions import VersionInfo

__all__ = [
    "BankUpdate",
    "apply_recalibration",
    "bank_reason",
    "confirmed_goods",
    "drift",
    "known_defects",
    "ood_note",
    "propose_recalibration",
    "restore_version",
    "runtime_of",
    "update_bank",
    "versions",
]


def versions(model: str, category: str) -> list[VersionInfo]:
    from core.learning.versions import list_versions

    return list_versions(model, category)


def restore_version(model: str, category: str, version: str, *, actor: Actor) -> str:
    """Make an earlier version the newest again (as a new version); returns its name. Engineers only."""
    from core import registry
    from core.learning.versions import restore

    who = require_engineer(actor, "restoring a model version")
    parent = registry.current_files(model, category).version
    restored = restore(model, category, version, who=who)
    _keep_runtime(model, category, parent, restored, actor)
    return restored


def runtime_of(model: str, category: str, version: str) -> str:
    """'torch' or 'openvino': what a version runs with (a page's confirmation says it)."""
    from core.export.exporter import version_runtime

    return version_runtime(model, category, version)[1].runtime


def _keep_runtime(model: str, category: str, parent: str, version: str, actor: Actor) -> str:
    """The derived version runs as its parent did (an OpenVINO parent: exported and checked again);
    returns what it runs with when the parent ran an export, so the person sees it (and why not)."""
    from core.export.exporter import carry_runtime

    choice = carry_runtime(model, category, parent, version, actor=actor)
    return f"{version} runs with {choice.runtime}: {choice.reason}" if choice.reason else ""


def _history(history: History | None) -> History:
    from core.history import History

    return history if history is not None else History()


def _thumbnail_scores(history: History, detector: Detector, records: list[InspectionRecord]) -> dict[int, float]:
    thumbs = {r.id: image for r in records if (image := thumbnail_image(history, r)) is not None}
    ids = list(thumbs)
    images = [thumbs[i] for i in ids]
    out: dict[int, float] = {}
    for start in range(0, len(ids), 8):
        for i, p in zip(ids[start : start + 8], detector.predict_batch(images[start : start + 8]), strict=True):
            out[i] = p.raw_score
    return out


def reviewed(history: History, detector: Detector) -> tuple[list[tuple[int, int, float]], list[str]]:
    """[(inspection id, label, raw score under this version)] of the reviewed inspections, and notes."""
    from core.learning.recalibration import label_of

    meta = detector.meta
    records = [r for r in history.list(category=meta.category, model=meta.model) if label_of(r) is not None]
    same = [r for r in records if r.model_version == detector.version and r.raw_score is not None]
    other = [r for r in records if r not in same]
    rescored = _thumbnail_scores(history, detector, other) if other else {}
    out = [(r.id, label_of(r), float(r.raw_score)) for r in same]
    out += [(r.id, label_of(r), rescored[r.id]) for r in other if r.id in rescored]
    notes = []
    if rescored:
        notes.append(f"{len(rescored)} review(s) judged by another version were scored again from their thumbnails")
    if len(other) > len(rescored):
        notes.append(f"{len(other) - len(rescored)} review(s) left out: judged by another version, thumbnail missing")
    return out, notes


def propose_recalibration(
    model: str, category: str, *, history: History | None = None, with_test: bool = True, detector: Detector | None = None
) -> tuple[Proposal, Detector]:
    """The proposed threshold of the newest version, with before/after on reviews and the test set."""
    from core.learning import profile, recalibration
    from core.learning.versions import load_detector

    det = detector or load_detector(model, category)
    reviews, notes = reviewed(_history(history), det)
    if len(reviews) < recalibration.MIN_REVIEWS:  # refused anyway: do not score the calibration split first
        proposal = recalibration.propose(det.meta.calibration.image_threshold, reviews, [])
        proposal.notes += notes
        return proposal, det
    prof = profile.profile(det, with_test=with_test)
    test = (prof.test_scores, prof.test_labels) if with_test and prof.test_scores else None
    proposal = recalibration.propose(det.meta.calibration.image_threshold, reviews, prof.calibration_goods, test=test)
    proposal.notes += notes + ([prof.note] if prof.note else [])
    return proposal, det


def apply_recalibration(
    model: str, category: str, *, actor: Actor, history: History | None = None, expected_version: str | None = None
) -> tuple[str, Proposal]:
    """Write the proposed threshold as a new version; refuses (ConfigError) with too few reviews. Engineers only.

    ``expected_version``: the version the person saw the proposal for (the History page); when the
    newest is another one by now, :class:`~core.errors.VersionConflictError` and nothing is written.
    """
    from core.learning.versions import derived_meta, load_detector, save_derived

    who = require_engineer(actor, "applying a threshold")
    det = load_detector(model, category)
    if expected_version is not None and det.version != expected_version:
        raise VersionConflictError(
            f"{model}/{category} is at {det.version} now, not {expected_version} that this threshold was proposed for: "
            "nothing was written; propose again",
            parent=expected_version,
            newest=det.version,
        )
    proposal, det = propose_recalibration(model, category, history=history, with_test=False, detector=det)
    if not proposal.ok:
        raise ConfigError(proposal.refusal or "no threshold could be proposed")
    old = det.meta.calibration
    meta = derived_meta(
        det,
        kind="recalibrate",
        change=f"image threshold {old.image_threshold:.6g} -> {proposal.proposed:.6g} from {proposal.reviews} reviews",
        inspections=proposal.inspection_ids,
        who=who,
    )
    cal = meta.calibration
    cal.image_threshold = float(proposal.proposed)
    cal.image_min = min(cal.image_min, cal.image_threshold)
    cal.image_max = max(cal.image_max, cal.image_threshold)
    cal.source = (
        f"recalibrated from {proposal.reviews} inspector reviews and {proposal.calibration_goods} held-out goods "
        f"of the calibration split (was: {old.source})"
    )
    version = save_derived(det, meta)
    _keep_runtime(model, category, det.version, version, actor)
    return version, proposal


def _used_inspections(model: str, category: str) -> set[int]:
    """Inspections whose images already went into a memory bank (any version's lineage)."""
    from core import registry

    used: set[int] = set()
    for files in registry.list_versions(registry.model_dir(model, category)):
        try:
            lin = registry.read_meta(files, model, category).lineage or {}
        except InspectError:
            continue
        if lin.get("kind") == "update-bank":
            used.update(int(i) for i in lin.get("inspections") or [])
    return used


def confirmed_goods(history: History, model: str, category: str) -> list[InspectionRecord]:
    """Inspections confirmed good (false alarms, "correct" GOOD verdicts) not yet in a memory bank."""
    used = _used_inspections(model, category)
    records = history.list(category=category, model=model)
    good = [r for r in records if r.feedback == "false_alarm" or (r.feedback == "correct" and r.verdict == "GOOD")]
    seen: set[str] = set()
    out = []
    present = history.with_thumbnail(good)
    for r in good:
        if r.id in used or r.sha256 in seen or r.id not in present:
            continue
        seen.add(r.sha256)
        out.append(r)
    return out


@dataclass
class BankUpdate:
    """What a bank update did."""

    version: str
    n_images: int
    n_old: int
    n_added: int
    threshold_before: float
    threshold_after: float
    notes: list[str] = field(default_factory=list)
    defects_known: int = 0  # inspections reviewed as defective (with a thumbnail)
    defects_caught_before: int = 0  # of those, at or over the threshold of the version changed
    defects_caught_after: int = 0  # and of the new version
    held_out_goods: int = 0  # held-out goods of the calibration split
    goods_flagged_before: int = 0  # of those, at or over the threshold of the version changed
    goods_flagged_after: int = 0  # and of the new version
    forced: list[Screened] = field(default_factory=list)  # foreign-looking images added on --force
    parent: str = ""  # the version that was grown


def _images_in(folder: str) -> list[tuple[str, object]]:
    from core.data.image_io import SUPPORTED_EXTENSIONS, load_image

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"--images {folder}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
    if not files:
        raise ConfigError(f"--images {folder}: no images there ({', '.join(SUPPORTED_EXTENSIONS)})")
    return [(str(p), load_image(p.read_bytes(), str(p))) for p in files]


#: A bank update that lost the race to another change is computed again this many times at most.
BANK_UPDATE_TRIES = 3


def update_bank(
    category: str,
    *,
    model: str = "patchcore",
    images: str | None = None,
    from_history: bool = False,
    actor: Actor,
    force: bool = False,
    history: History | None = None,
) -> BankUpdate:
    """Grow the newest PatchCore's memory bank with confirmed goods; a new version results. Engineers only.

    Every image is judged by the version in use first (:mod:`core.learning.gate`): one that does not
    look like the category refuses the whole update by name, unless ``force``. When another change
    is published while this one is computed, it is computed again on the new newest version.
    """
    from core.learning import bank_update

    who = require_engineer(actor, "a memory-bank update")
    bank_update.require_patchcore(model)
    if bool(images) == bool(from_history):
        raise ConfigError("say where the confirmed-good images are: --images DIR or --from-history (one of them)")
    hist = _history(history)
    named = _images_in(images) if images else None
    retried: list[str] = []
    for attempt in range(BANK_UPDATE_TRIES):
        try:
            done = _update_bank_once(category, model, named, images, hist, who, force)
        except VersionConflictError as exc:
            if attempt == BANK_UPDATE_TRIES - 1:
                raise
            retried.append(f"{exc.newest} was published while this update was computed from {exc.parent}: computed again on it")
            continue
        done.notes[:0] = retried
        if note := _keep_runtime(model, category, done.parent, done.version, actor):
            done.notes.append(note)
        return done
    raise AssertionError("unreachable")  # the loop returns or raises


def _update_bank_once(
    category: str, model: str, named: list | None, folder: str | None, hist: History, who: str, force: bool
) -> BankUpdate:
    """One bank update computed from the newest version and published after it (compare-and-set)."""
    from core.learning import bank_update, gate, profile
    from core.learning.versions import derived_meta, load_detector, save_derived

    det = load_detector(model, category)
    ids: list[int] = []
    if named is None and det.tiled:
        raise ConfigError(
            f"{model}/{category} is tiled: its memory bank grows from full-resolution images, and the history keeps "
            "256 px thumbnails; add the confirmed-good frames with --images DIR"
        )
    if named is not None:
        origin = f"{len(named)} images from {folder}"
    else:
        records = confirmed_goods(hist, model, category)
        if not records:
            raise ConfigError(
                f"no confirmed-good inspections of {model}/{category} to add (mark false alarms or correct GOOD "
                "verdicts on the History page; inspections already in a memory bank are not added twice)"
            )
        named = [(r.thumbnail_path or r.file_name, thumbnail_image(hist, r)) for r in records]
        ids = [int(r.id) for r in records]
        origin = f"{len(named)} confirmed-good inspections (their history thumbnails)"
    screened = gate.screen(det, named)
    refused = gate.refusal(screened, category)
    if refused and not force:
        raise ConfigError(refused)
    growth = bank_update.grow(det, [im for _, im in named])
    goods, _ = profile.reference_images(det.meta.data_root, category) if _has_data(det) else ([], [])
    held = bank_update.embed(det, [_read(p) for p in goods]) if goods else None
    old = det.meta.calibration
    source = (
        f"refreshed after adding {origin} to the memory bank: image threshold = highest good score over "
        f"{len(goods)} held-out goods of the calibration split and the new images (each scored without its own patches)"
    )
    # the history's known defects are 256 px thumbnails: a tiled model judges camera pixels, not those
    defects = [] if det.tiled else known_defects(hist, model, category)
    emb_defects = bank_update.embed(det, [thumbnail_image(hist, r) for r in defects]) if defects else None
    refresh = bank_update.refreshed_calibration(det, growth, held, old, source, emb_defects)
    cal = refresh.calibration
    change = f"memory bank {growth.n_old} -> {growth.bank.shape[0]} patches from {origin}"
    notes = [] if goods else ["the calibration split is not here: the threshold comes from the new images only"]
    if det.tiled:
        notes.append("tiled model: known defects in the history (256 px thumbnails) do not guard the threshold")
    forced = [s for s in screened if s.foreign]
    if forced:
        names = ", ".join(Path(s.name).name for s in forced)
        notes.append(f"added on --force although they do not look like {category}: {names}")
        change += f"; {len(forced)} foreign-looking image(s) added on --force ({names})"
    if refresh.guarded:
        notes.append(_guard_note(refresh, [int(r.id) for r in defects], old.image_threshold, len(named)))
        kept = f"; kept under known defects the previous version caught (the highest good: {refresh.unguarded:.6g})"
        cal.source += kept
        change += kept
    meta = derived_meta(
        det, kind="update-bank", change=change, inspections=ids, who=who, images=[p for p, _ in named] if folder else []
    )
    meta.calibration = cal
    meta.n_train_images += len(named)
    parent = det.version
    bank_update.install(det, growth)
    version = save_derived(det, meta)
    return BankUpdate(
        version,
        len(named),
        growth.n_old,
        growth.bank.shape[0] - growth.n_old,
        old.image_threshold,
        cal.image_threshold,
        notes,
        defects_known=len(defects),
        defects_caught_before=sum(s >= old.image_threshold for s in refresh.defects_before),
        defects_caught_after=sum(s >= cal.image_threshold for s in refresh.defects_after),
        held_out_goods=len(refresh.held_out_goods),
        goods_flagged_before=sum(s >= old.image_threshold for s in refresh.held_out_before),
        goods_flagged_after=sum(s >= cal.image_threshold for s in refresh.held_out_goods),
        forced=forced,
        parent=parent,
    )


def known_defects(history: History, model: str, category: str) -> list[InspectionRecord]:
    """Inspections reviewed as defective ("correct" DEFECT verdicts, missed defects) with a thumbnail."""
    from core.learning.recalibration import label_of

    records = history.list(category=category, model=model)
    defects = [r for r in records if label_of(r) == 1]
    present = history.with_thumbnail(defects)
    return [r for r in defects if r.id in present]


def _guard_note(refresh: Refresh, defect_ids: list[int], threshold_before: float, n_new: int) -> str:
    """Why the threshold stayed under the highest good: which known defects, which goods stay flagged."""
    t = refresh.calibration.image_threshold
    saved = [
        f"#{i} ({a:.6g})"
        for i, b, a in zip(defect_ids, refresh.defects_before, refresh.defects_after, strict=True)
        if b >= threshold_before and a < refresh.unguarded
    ]
    new_over = sum(s >= t for s in refresh.new_goods)
    held_over = sum(s >= t for s in refresh.held_out_goods)
    return (
        f"the threshold stays at {t:.6g}, under known defect(s) {', '.join(saved)} that the previous version caught; "
        f"the highest good would have set {refresh.unguarded:.6g} and let them pass. {new_over} of the {n_new} new "
        f"image(s) (each without its own patches) and {held_over} of the {len(refresh.held_out_goods)} held-out goods "
        "score at or above it and will still be flagged. To trade a known defect for those goods, recalibrate: it weighs both"
    )


def _has_data(det: Detector) -> bool:
    return Path(det.meta.data_root, det.meta.category, "train", "good").is_dir()


def _read(path: str):
    from core.data.image_io import load_image

    return load_image(Path(path).read_bytes(), path)


def thumbnail_image(history: History, record: InspectionRecord):
    """The inspection's history thumbnail, decoded (None when it is gone)."""
    from core.data.image_io import load_image

    jpeg = history.thumbnail(record)
    return None if jpeg is None else load_image(jpeg, f"{record.sha256}.jpg")


def drift(detector: Detector, history: History, *, compute: bool = True, station: str | None = None) -> DriftReport:
    """Recent scores of this (model, category) against the version's calibration.

    ``station``: only the inspections of that line station (one camera drifting while the others
    do not is a camera's problem, not the parts'). ``compute=False`` uses the calibration goods' scores only when already cached (a page that
    must stay quick); without them the share over the threshold is still checked.
    """
    from core.learning import drift as drift_mod
    from core.learning import profile

    meta = detector.meta
    goods: list[float] = []
    if compute:
        goods = profile.profile(detector, with_test=False).calibration_goods
    else:
        cached = profile.cached(detector)
        goods = cached.calibration_goods if cached else []
    records = history.list(category=meta.category, model=meta.model, limit=500, station=station)
    return drift_mod.drift_report(records, meta.calibration, detector.version, goods)


def bank_reason() -> str:
    """Why EfficientAD gets recalibration only."""
    from core.learning.bank_update import EFFICIENTAD_REASON

    return EFFICIENTAD_REASON


def ood_note(raw_score: float, defect_area: float, detector: Detector) -> str | None:
    from core.learning.drift import ood_note as note

    return note(raw_score, defect_area, detector.meta.calibration, detector.meta.category)
