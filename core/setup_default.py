"""Prepare the embedded default the README's run command starts with.

Demo data, a trained PatchCore per demo category, their results and the similarity index. Every
step reuses what is already there (same data hash → no retraining), so running it again is quick.
EfficientAD is not trained here: on a CPU it takes far longer than an app start should, so it is
trained on request (the Inspect page's button, or ``python -m core train --model efficientad``).
"""

from __future__ import annotations

import logging

from core import registry
from core.data.layout import file_list_hash
from core.errors import ModelNotTrainedError
from core.evaluation.results import entry_key, load_results
from core.settings import DEMO_CATEGORIES, get_settings

log = logging.getLogger(__name__)


def _needs_training(category: str, root: str) -> bool:
    try:
        meta = registry.load_meta("patchcore", category)
    except ModelNotTrainedError:
        return True
    return meta.data_hash != file_list_hash(root, category) or meta.data_root != root


def prepare_default(*, skip_index: bool = False) -> None:
    from core.data.demo import generate_demo_dataset
    from core.evaluation.evaluate import evaluate, format_table
    from core.export.exporter import version_runtime
    from core.training import train

    settings = get_settings()
    root = generate_demo_dataset(settings.demo_data_root)
    log.info(f"[setup] demo data: {root}")
    trained = []
    for category in DEMO_CATEGORIES:
        if _needs_training(category, str(root)):
            log.info(f"[setup] training PatchCore on demo '{category}'")
            meta = train("patchcore", category, data_root=root)
            version, runtime = version_runtime("patchcore", category)
            log.info(f"[setup]   done in {meta.train_time_s:.0f} s; {runtime.describe(version)}")
            trained.append(category)
        else:
            log.info(f"[setup] PatchCore for '{category}' is up to date")
    have = load_results()["models"]
    stale = [c for c in DEMO_CATEGORIES if c in trained or entry_key("patchcore", c) not in have]
    if stale:
        log.info(f"[setup] evaluating PatchCore on {', '.join(stale)}")
        log.info(format_table(evaluate(["patchcore"], stale)))
    if skip_index:
        return
    from core.similarity.indexing import index_categories

    report = index_categories(models=["patchcore"], categories=list(DEMO_CATEGORIES))
    for line in [
        *report.notes,
        *(f"similar-defect index {key}: {n} points" for key, n in report.counts.items()),
        *report.outgrown,
    ]:
        log.info(f"[setup] {line}")
