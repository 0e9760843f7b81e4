"""The gate on images that teach a model, measured both ways (docs/benchmarks.md, "Learning gate").

For every trained PatchCore of the categories asked for, the gate (core.learning.gate) judges:
* images it must pass: the drifted good parts of ``demo-data --drift`` (its confirmation pool and
  its drifted test goods), and, for real bottle, its test goods under brightness and colour shifts;
* images it must refuse: every test image (good and defective) of every *other* category;
* for reference, the category's own test goods (must pass) and defects (a huge defect may be flagged:
  no inspector confirms it as good, and the Inspect page's note asks "Wrong category?").

    python -m core demo-data --drift
    python -m core train --model patchcore --category bottle --data-root ../shared/data/mvtec_ad   # optional
    python benchmarks/bench_gate.py [--bottle ../shared/data/mvtec_ad]

Prints one markdown table row per (model category, offered set): offered, refused, and the lowest
margin / area among refused and the highest among passed, to show how far each side is from the rule.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core.data.demo import DRIFT_FOLDER, generate_drifted_set
from core.data.image_io import SUPPORTED_EXTENSIONS, load_image
from core.errors import ModelNotTrainedError
from core.learning.gate import screen
from core.learning.versions import load_detector
from core.settings import DEMO_CATEGORIES, get_settings

#: Brightness gains and per-channel colour gains applied to real bottle goods (all must pass).
SHIFTS = {
    "brightness x0.8": (0.8, 0.8, 0.8),
    "brightness x1.2": (1.2, 1.2, 1.2),
    "warmer (R x1.1, B x0.9)": (1.1, 1.0, 0.9),
    "cooler (R x0.9, B x1.1)": (0.9, 1.0, 1.1),
}


def images(folder: Path) -> list[tuple[str, np.ndarray]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUPPORTED_EXTENSIONS and "ground_truth" not in p.parts)
    return [(str(p), load_image(p.read_bytes(), str(p))) for p in files]


def shifted(named: list[tuple[str, np.ndarray]], gains: tuple[float, float, float]) -> list[tuple[str, np.ndarray]]:
    g = np.array(gains, dtype=np.float32)
    return [(n, np.clip(im.astype(np.float32) * g, 0, 255).astype(np.uint8)) for n, im in named]


def row(category: str, offered: str, expect: str, named: list[tuple[str, np.ndarray]], detector) -> str:
    s = screen(detector, named)
    refused = [x for x in s if x.foreign]
    passed = [x for x in s if not x.foreign]
    lo = f"{min(x.margin for x in refused):.1f} / {min(x.defect_area for x in refused):.0%}" if refused else "-"
    hi = f"{max(x.margin for x in passed):.1f} / {max(x.defect_area for x in passed):.0%}" if passed else "-"
    return f"| {category} | {offered} | {expect} | {len(s)} | {len(refused)} | {lo} | {hi} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--category", nargs="+", default=list(DEMO_CATEGORIES))
    ap.add_argument("--data-root", default=None, help="the demo data (default: the workspace's)")
    ap.add_argument("--bottle", default=None, help="an MVTec AD root holding real bottle (and a trained bottle PatchCore)")
    args = ap.parse_args()
    root = Path(args.data_root or get_settings().demo_data_root)
    drift_root = generate_drifted_set(root.parent / DRIFT_FOLDER, args.category, progress=False)
    sources = {c: root for c in args.category}
    if args.bottle:
        sources["bottle"] = Path(args.bottle)
    tests = {c: images(r / c / "test") for c, r in sources.items()}
    print("| model | offered | expected | offered | refused | refused: lowest margin / area | passed: highest margin / area |")
    print("|---|---|---|---:|---:|---|---|")
    for category in sources:
        try:
            det = load_detector("patchcore", category)
        except ModelNotTrainedError as exc:
            print(f"| {category} | (skipped: {exc}) |")
            continue
        if category == "bottle":
            goods = images(sources["bottle"] / "bottle" / "test" / "good")
            for name, gains in SHIFTS.items():
                print(row(category, f"bottle test goods, {name}", "pass", shifted(goods, gains), det))
        else:
            drifted = images(drift_root / category / "train" / "good") + images(drift_root / category / "test" / "good")
            print(row(category, "drifted goods (demo-data --drift)", "pass", drifted, det))
        own = tests[category]
        print(row(category, "own test goods", "pass", [x for x in own if "/good/" in x[0]], det))
        print(row(category, "own test defects", "either", [x for x in own if "/good/" not in x[0]], det))
        for other, named in tests.items():
            if other != category:
                print(row(category, f"{other} test images (all)", "refuse", named, det))


if __name__ == "__main__":
    main()
