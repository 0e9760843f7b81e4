"""Choose PatchCore's coreset ratio and backbone by measurement: accuracy and speed per setting.

For every category and backbone, PatchCore is trained once at the largest ratio asked for
(through :func:`core.training.train`, into the current workspace: set ``INSPECT_HOME`` to a scratch
folder). Greedy k-center selection is a *prefix* process: the coreset at ratio r is the first
``int(N * r)`` rows of the coreset at any larger ratio (same start, same projection; the memory
bank is stored in selection order). So every smaller ratio is evaluated by truncating the one
trained bank, with exactly the bank a training at that ratio would have produced, at a fraction of
the cost. Metrics are the evaluation's own (anomalib's AUROC / AUPRO on ``test/``); latency is the
warm single-image ``Detector.predict`` time, the same figure the Compare page shows.

The printed recommendation follows the rule of docs/patchcore.md: the fastest setting whose mean image
AUROC over the categories is within 0.002 of the best setting's. Example::

    INSPECT_HOME=/tmp/bench_settings .venv/bin/python benchmarks/bench_patchcore_settings.py \
        --real-root ../shared/data/mvtec_ad --json /tmp/settings.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from core.data.layout import make_datamodule, resolve_data_root
from core.evaluation.evaluate import collect, measure_latency, metrics_from
from core.inference.detector import load_detector
from core.models.patchcore.coreset import coreset_size
from core.training import train

AUROC_TOLERANCE = 0.002
DEMO_CATEGORIES = ("tile", "leather", "grid")


def _categories(real_root: str | None, real: list[str], demo: list[str]) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    if real_root and Path(real_root, real[0] if real else "").is_dir():
        found += [(c, Path(real_root)) for c in real if (Path(real_root) / c).is_dir()]
    demo_root = resolve_data_root(None)
    found += [(c, demo_root) for c in demo if (demo_root / c).is_dir()]
    if not found:
        raise SystemExit("no categories found: run `python -m core demo-data` or pass --real-root")
    return found


def _evaluate_prefixes(category: str, root: Path, backbone: str, ratios: list[float]) -> list[dict[str, Any]]:
    """Train at max(ratios), then evaluate each ratio's prefix of the stored bank."""
    top = max(ratios)
    meta = train("patchcore", category, data_root=root, config={"backbone": backbone, "coreset_ratio": top}, progress=False)
    detector = load_detector("patchcore", category)
    inner = detector.module.model
    full = inner.memory_bank.clone()
    side = int(meta.config.get("image_size", 256)) // 8  # patches per side: the stride-8 feature map
    n_rows = meta.n_train_images * side * side
    if coreset_size(n_rows, top) != full.shape[0]:  # another layout: fall back to the bank's own size
        n_rows = round(full.shape[0] / top)
    datamodule = make_datamodule(root, category, calibration=False)
    datamodule.setup()
    rows = []
    for ratio in sorted(ratios):
        k = min(full.shape[0], coreset_size(n_rows, ratio))
        inner.memory_bank = full[:k].clone()
        started = time.perf_counter()
        out = collect(detector, datamodule, progress=False)
        metrics = metrics_from(out)
        rows.append(
            {
                "category": category,
                "backbone": backbone,
                "coreset_ratio": ratio,
                "bank_rows": k,
                "image_auroc": metrics["image_auroc"],
                "pixel_auroc": metrics["pixel_auroc"],
                "aupro": metrics["aupro"],
                "ms_per_image": measure_latency(detector, out.paths),
                "eval_s": time.perf_counter() - started,
                "train_s_at_top_ratio": meta.train_time_s,
            }
        )
        r = rows[-1]
        print(
            f"{category:<8} {backbone:<19} {ratio:>6.3f} {k:>7} {r['image_auroc']:.4f} {r['pixel_auroc']:.4f} "
            f"{r['aupro']:.4f} {r['ms_per_image']:7.1f}",
            flush=True,
        )
    return rows


def recommend(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest (backbone, ratio) whose mean image AUROC is within the tolerance of the best."""
    settings: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for row in rows:
        settings.setdefault((row["backbone"], row["coreset_ratio"]), []).append(row)
    summary = [
        {
            "backbone": b,
            "coreset_ratio": r,
            "mean_image_auroc": sum(x["image_auroc"] for x in group) / len(group),
            "mean_pixel_auroc": sum(x["pixel_auroc"] for x in group) / len(group),
            "mean_ms": sum(x["ms_per_image"] for x in group) / len(group),
        }
        for (b, r), group in settings.items()
    ]
    best = max(s["mean_image_auroc"] for s in summary)
    eligible = [s for s in summary if s["mean_image_auroc"] >= best - AUROC_TOLERANCE]
    return {"summary": summary, "best_mean_image_auroc": best, "choice": min(eligible, key=lambda s: s["mean_ms"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real-root", help="MVTec-layout folder with real categories (e.g. ../shared/data/mvtec_ad)")
    parser.add_argument("--real", nargs="*", default=["bottle"], help="real categories to include")
    parser.add_argument("--demo", nargs="*", default=list(DEMO_CATEGORIES), help="demo categories to include")
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.025, 0.05, 0.1])
    parser.add_argument("--json", help="write every row and the recommendation here")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'category':<8} {'backbone':<19} {'ratio':>6} {'bank':>7} {'img AUC':>6} {'px AUC':>6} {'AUPRO':>6} {'ms/img':>7}")
    rows: list[dict[str, Any]] = []
    for category, root in _categories(args.real_root, args.real, args.demo):
        for backbone in args.backbones:
            rows += _evaluate_prefixes(category, root, backbone, args.ratios)
    rec = recommend(rows)
    print("\nmean over categories:")
    for s in sorted(rec["summary"], key=lambda s: (s["backbone"], s["coreset_ratio"])):
        print(
            f"  {s['backbone']:<19} {s['coreset_ratio']:>6.3f}  image AUROC {s['mean_image_auroc']:.4f}  "
            f"pixel AUROC {s['mean_pixel_auroc']:.4f}  {s['mean_ms']:.1f} ms"
        )
    c = rec["choice"]
    print(
        f"recommended: {c['backbone']} at coreset {c['coreset_ratio']} ({c['mean_ms']:.1f} ms, mean image AUROC "
        f"{c['mean_image_auroc']:.4f}; best {rec['best_mean_image_auroc']:.4f}, tolerance {AUROC_TOLERANCE})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, **rec}, indent=2))


if __name__ == "__main__":
    main()
