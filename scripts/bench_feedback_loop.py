"""Measure the feedback loop (issue 13): false alarms on drifted good parts before and after
recalibration and after a memory-bank update with 5, 10 and 20 confirmed goods.

For each category: the model (the workspace's PatchCore) scores

* the original test set (image AUROC on raw scores; detection rate of defects at the threshold),
* a drifted set: its good parts (false-alarm rate) and defects (detection rate),

and inspector confirmations come from a separate pool of drifted goods, never the images scored.
Demo categories use ``python -m core demo-data --drift`` sets (``train/good`` is the pool);
``bottle`` uses the real MVTec AD bottle with a synthetic brightness/colour shift, a model trained
on train/good minus the last 20 images (the pool), from a copy in the workspace (anomalib refuses
symlinked files that resolve outside the dataset folder).

Recalibration = :func:`core.learning.recalibration.propose` with the n confirmations and the
calibration split's held-out goods; bank update = :mod:`core.learning.bank_update` (coreset of the
n images appended, calibration refreshed on held-out goods + the n images, leave-one-out). Nothing
is saved: the variants are scored in memory from one backbone pass per image.

    INSPECT_HOME=/tmp/h13 python scripts/bench_feedback_loop.py --categories tile leather grid bottle
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from core.data.demo import DRIFT_FOLDER, Drift, generate_drifted_set
from core.data.image_io import load_image
from core.learning import bank_update, profile, recalibration
from core.learning.versions import load_detector
from core.settings import get_settings

BOTTLE_SHIFT = Drift(gain=0.85, colour=(1.08, 1.0, 0.9), scale=1.0)
POOL = 20
COUNTS = (5, 10, 20)


def _load(paths: list[str], drift: Drift | None = None) -> list[np.ndarray]:
    images = [load_image(Path(p).read_bytes(), p) for p in paths]
    return [drift.apply(im) for im in images] if drift else images


def _test_files(root: Path, category: str) -> tuple[list[str], list[int]]:
    files = sorted((root / category / "test").glob("*/*.png"))
    return [str(f) for f in files], [0 if f.parent.name == "good" else 1 for f in files]


def _auroc(scores: list[float], labels: list[int]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def _rates(scores: list[float], labels: list[int], t: float) -> tuple[float, float]:
    s, lab = np.asarray(scores), np.asarray(labels)
    return float((s[lab == 0] >= t).mean()), float((s[lab == 1] >= t).mean())


def bottle_root(shared: Path) -> Path:
    """A copy of bottle in the workspace (never the repo) without its last POOL train/good images."""
    src = shared / "bottle"
    root = get_settings().workspace / "bottle_minus_pool"
    cat = root / "bottle"
    if not (cat / "ground_truth").is_dir():
        shutil.rmtree(cat, ignore_errors=True)
        (cat / "train" / "good").mkdir(parents=True)
        for f in sorted((src / "train" / "good").glob("*.png"))[:-POOL]:
            shutil.copy2(f, cat / "train" / "good" / f.name)
        for name in ("test", "ground_truth"):
            shutil.copytree(src / name, cat / name)
    return root


def ensure_bottle(shared: Path, coreset_ratio: float | None = None, seed: int = 0) -> None:
    from core import registry
    from core.errors import ModelNotTrainedError
    from core.training import train

    try:
        registry.load_meta("patchcore", "bottle")
    except ModelNotTrainedError:
        config = {} if coreset_ratio is None else {"coreset_ratio": coreset_ratio}
        train("patchcore", "bottle", data_root=bottle_root(shared), config=config, seed=seed, progress=False)


def _explain(
    category: str, what: str, t: float, parts: dict[str, list[float]] | None, s_o: list[float], o_labels: list[int]
) -> None:
    """Where a threshold comes from and the faintest original defects beside it (``--explain``)."""
    defects = sorted(s for s, lab in zip(s_o, o_labels, strict=True) if lab == 1)[:4]
    goods = max(s for s, lab in zip(s_o, o_labels, strict=True) if lab == 0)
    line = f"  [{category} {what}] threshold {t:.3f}"
    if parts is not None:
        line += f" = max(held-out goods {max(parts['held_out_goods']):.3f}, new goods leave-one-out {max(parts['new_goods_leave_one_out']):.3f})"
    print(f"{line}; faintest original defects {', '.join(f'{d:.3f}' for d in defects)}; highest original good {goods:.3f}")


def bench(category: str, shared: Path, explain: bool = False, draws: int = 1, draw_rows: list[str] | None = None) -> list[dict]:
    det = load_detector("patchcore", category)
    cal = det.meta.calibration
    draw_rows = [] if draw_rows is None else draw_rows
    goods_files, _ = profile.reference_images(det.meta.data_root, category)
    if category == "bottle":
        root = shared
        pool_files = [str(f) for f in sorted((shared / "bottle" / "train" / "good").glob("*.png"))[-POOL:]]
        drift = BOTTLE_SHIFT
        d_files, d_labels = _test_files(shared, category)
        drifted = _load(d_files, drift)
        pool = _load(pool_files, drift)
        what = "real bottle, brightness x0.85, colour (1.08, 1, 0.9)"
    else:
        root = Path(det.meta.data_root)
        droot = generate_drifted_set(get_settings().workspace / DRIFT_FOLDER, [category], progress=False)
        d_files, d_labels = _test_files(droot, category)
        drifted = _load(d_files)
        pool = _load([str(f) for f in sorted((droot / category / "train" / "good").glob("*.png"))][:POOL])
        what = "demo drifted set"
    o_files, o_labels = _test_files(root, category)
    emb_o = bank_update.embed(det, _load(o_files))
    emb_d = bank_update.embed(det, drifted)
    emb_h = bank_update.embed(det, _load(goods_files))
    base_o, _ = bank_update.score(det, emb_o)
    base_d, _ = bank_update.score(det, emb_d)
    base_h, _ = bank_update.score(det, emb_h)
    base_p, _ = bank_update.score(det, bank_update.embed(det, pool))
    rows = []

    def row(method: str, n: int, t: float, s_o: list[float], s_d: list[float]) -> None:
        fa, det_d = _rates(s_d, d_labels, t)
        _, det_o = _rates(s_o, o_labels, t)
        rows.append(
            {
                "category": category,
                "data": what,
                "method": method,
                "n": n,
                "fa_drift": fa,
                "det_drift": det_d,
                "auroc_orig": _auroc(s_o, o_labels),
                "det_orig": det_o,
                "auroc_drift": _auroc(s_d, d_labels),
            }
        )

    row("before", 0, cal.image_threshold, base_o, base_d)
    if explain:
        print(f"  [{category}] training's threshold source: {cal.source}")
        print(
            f"  [{category}] held-out goods (all {len(base_h)} of the calibration split) under the trained bank: highest {max(base_h):.3f}"
        )
        _explain(category, "before", cal.image_threshold, None, base_o, o_labels)
    for n in COUNTS:
        reviewed = [(i, 0, s) for i, s in enumerate(base_p[:n])]
        prop = recalibration.propose(cal.image_threshold, reviewed, base_h)
        row("recalibrate", n, prop.proposed, base_o, base_d)
    for n in COUNTS:
        growth = bank_update.grow(det, pool[:n])
        new_cal, parts = bank_update.refreshed_calibration(det, growth, emb_h, cal, "bench")
        s_o, _ = bank_update.score(det, emb_o, growth.bank)
        if explain:
            _explain(category, f"update-bank {n}", new_cal.image_threshold, parts, s_o, o_labels)
        s_d, _ = bank_update.score(det, emb_d, growth.bank)
        row("update-bank", n, new_cal.image_threshold, s_o, s_d)
    base_det_orig = rows[0]["det_orig"]
    for n in [c for c in COUNTS if c < len(pool)] if draws > 1 else []:
        # The first n of the pool are one draw; which n goods an inspector confirms is chance, and
        # the refreshed threshold (the highest of them) moves with it. Seeded draws show the spread.
        picks = np.random.default_rng(n).permuted(np.tile(np.arange(len(pool)), (draws, 1)), axis=1)[:, :n]
        got = []
        for pick in picks:
            growth = bank_update.grow(det, [pool[i] for i in pick])
            new_cal, _ = bank_update.refreshed_calibration(det, growth, emb_h, cal, "bench")
            t = new_cal.image_threshold
            fa, _ = _rates(bank_update.score(det, emb_d, growth.bank)[0], d_labels, t)
            _, det_o = _rates(bank_update.score(det, emb_o, growth.bank)[0], o_labels, t)
            got.append((fa, det_o))
        fas, dets = np.array([g[0] for g in got]), np.array([g[1] for g in got])
        met = int(((fas <= 0.10 + 1e-9) & (dets >= base_det_orig - 1e-9)).sum())
        draw_rows.append(
            f"| {category} | update-bank, {draws} random draws | {n} | {fas.mean():.1%} ({fas.min():.0%}-{fas.max():.0%}) "
            f"| {dets.mean():.1%} ({dets.min():.0%}-{dets.max():.0%}) | {base_det_orig:.0%} | {met} of {draws} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", nargs="+", default=["tile", "leather", "grid", "bottle"])
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mvtec_ad"))
    parser.add_argument("--explain", action="store_true", help="print where each threshold comes from and the faintest defects")
    parser.add_argument(
        "--coreset-ratio", type=float, help="bottle's training, when it is not yet trained (default: the model's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bottle's training seed, when it is not yet trained")
    parser.add_argument(
        "--draws", type=int, default=1, help="also confirm K random draws of n pool images (n < pool) and report the spread"
    )
    args = parser.parse_args()
    shared = Path(args.shared)
    rows: list[dict] = []
    draw_rows: list[str] = []
    for category in args.categories:
        started = time.perf_counter()
        if category == "bottle":
            if not (shared / "bottle").is_dir():
                print("bottle: skipped (no ../shared/data/mvtec_ad/bottle)")
                continue
            ensure_bottle(shared, args.coreset_ratio, args.seed)
        rows += bench(category, shared, args.explain, args.draws, draw_rows)
        print(f"[{category}: {time.perf_counter() - started:.0f} s]", flush=True)
    print(
        "| category | drifted data | after | confirmed goods | false alarms, drifted goods | detection, drifted defects "
        "| image AUROC, original test | detection, original defects |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        n = "–" if r["method"] == "before" else str(r["n"])
        print(
            f"| {r['category']} | {r['data']} | {r['method']} | {n} | {r['fa_drift']:.0%} | {r['det_drift']:.0%} "
            f"| {r['auroc_orig']:.4f} | {r['det_orig']:.0%} |"
        )
    if draw_rows:
        print(
            "\n| category | after | confirmed goods | false alarms, drifted goods: mean (range) "
            "| detection, original defects: mean (range) | before | draws meeting both targets |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        print("\n".join(draw_rows))


if __name__ == "__main__":
    main()
