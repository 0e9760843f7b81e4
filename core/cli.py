"""The command line, ``python -m core <command>``: what engineers run; the app reads what it writes.

Engineers train and evaluate here; the app only reads what these commands write. A problem with
the user's input or environment (an :class:`~core.errors.InspectError`) prints one line,
``error: ...``, and exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any

from core.errors import InspectError
from core.models import MODEL_NAMES, get_spec, model_label
from core.settings import DEMO_CATEGORIES, get_settings


def _quiet_libraries() -> None:
    """Keep the terminal for our own progress bars and results, not library deprecation chatter."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings(
        "ignore",
        # Lightning, every step of an EfficientAD run: anomalib logs losses with no logger configured
        # (Inspect records the steps and its metrics itself) and lets Lightning guess the batch size.
        message=".*(eval mode|configure_optimizers|LeafSpec|num_workers|litlogger|no logger configured|infer the `batch_size`).*",
    )
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "anomalib"):
        logging.getLogger(name).setLevel(logging.ERROR)


class _Say(logging.Handler):
    """Core's progress messages (the ``core`` loggers, INFO and up) as plain lines on stdout.

    The core logs what it is doing ("[setup] training PatchCore on demo 'tile'"); printing it is
    the command line's job, and in a background job these lines are what its log shows.
    """

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), flush=True)


def _show_core_messages() -> None:
    core_log = logging.getLogger("core")
    if not any(isinstance(h, _Say) for h in core_log.handlers):
        core_log.addHandler(_Say())
    core_log.setLevel(logging.INFO)
    core_log.propagate = False


def call_with(func: Callable[..., Any], args: argparse.Namespace, **given: Any) -> Any:
    """Call ``func`` with the parsed flags whose names are its parameters (``given`` ones win).

    Sub-parsers name their flags' destinations after the service function's parameters, so a
    command is one call, not a list of ``x=args.x`` lines to keep in step with the function.
    """
    params = inspect.signature(func).parameters
    return func(**{k: v for k, v in vars(args).items() if k in params}, **given)


def cmd_demo_data(args: argparse.Namespace) -> None:
    from core.data.demo import generate_demo_dataset, summary

    root = call_with(generate_demo_dataset, args, root=args.out or get_settings().demo_data_root)
    print(f"demo data in {root.resolve()}")
    for category in dict.fromkeys(args.categories):
        print(f"  {summary(root, category)}")
    if args.drift:
        from core.data.demo import DRIFT_FOLDER, generate_drifted_set

        drifted = generate_drifted_set(root.parent / DRIFT_FOLDER, args.categories, size=args.size, seed=args.seed)
        print(f"drifted demo data in {drifted.resolve()} (train/good: the confirmation pool; test: drifted parts)")
    if args.hires:
        from core.data.demo import HIRES_CATEGORY, generate_hires_dataset

        generate_hires_dataset(root, seed=args.seed)
        print(f"  {summary(root, HIRES_CATEGORY)} (2048 px, defects of 6-20 px: train with --tile)")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def cmd_check(args: argparse.Namespace) -> None:
    from core.data.layout import check_layout

    report = check_layout(args.data_root, args.category)
    print(f"{report.root / report.category}: layout OK")
    for key, count in sorted(report.counts.items()):
        print(f"  {key:<32}{count:>6}")
    print(f"  image size {report.image_size}, modes {sorted(report.modes)}")


def cmd_train(args: argparse.Namespace) -> None:
    from core.training import train

    config = get_spec(args.model).config_from_args(args)
    meta = train(
        args.model,
        args.category,
        data_root=args.data_root,
        config=config,
        device=args.device,
        seed=args.seed,
        export=args.export,
    )
    print(
        f"trained {meta.model} on {meta.category} in {meta.train_time_s:.1f} s on {meta.device} "
        f"({meta.n_train_images} train images); calibrated image threshold {meta.calibration.image_threshold:.4g} "
        f"(raw score) from: {meta.calibration.source}"
    )
    print(_runtime_line(meta.model, meta.category))


def _runtime_line(model: str, category: str, version: str | None = None) -> str:
    """Which runtime a version (default: the newest) runs with, and why."""
    from core.export.exporter import version_runtime

    name, choice = version_runtime(model, category, version)
    return choice.describe(name)


def cmd_autotrain(args: argparse.Namespace) -> None:
    from core.autotrain import run_queue, start_background
    from core.models.efficientad.durations import parse_duration

    budget = parse_duration(args.time_budget)
    if args.background:
        job = start_background(args.category, time_budget_s=budget, data_root=args.data_root)
        print(f"EfficientAD queue running in the background (job {job.id}, log {job.log_path})")
        return
    state = run_queue(args.category, data_root=args.data_root, time_budget_s=budget)
    failed = {c: e.get("message", "") for c, e in state["categories"].items() if e["status"] == "failed"}
    if failed:
        raise InspectError("; ".join(f"{c}: {m}" for c, m in failed.items()))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from core.evaluation.evaluate import evaluate_run, format_table
    from core.evaluation.results import results_path

    run = evaluate_run(args.model, args.category, device=args.device, runtime=args.runtime)
    if run.entries:
        print(format_table(run.entries))
        print(f"results written to {results_path()}")
    if run.notice:
        print(f"warning: {run.notice}", file=sys.stderr)
    if run.failed:
        # After the others were evaluated and written; exit 2 so scripts and jobs see the failure.
        broken = list(run.failed.values())
        raise InspectError(broken[0] if len(broken) == 1 else f"{len(broken)} not evaluated: " + "; ".join(broken))
    if not run.entries:
        raise InspectError("no trained model matches: train one first with `python -m core train ...`")


def cmd_distill_teacher(args: argparse.Namespace) -> None:
    import shlex

    from core.models.efficientad.teacher import distill_teacher, read_provenance

    command = "python -m core " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else None
    path = distill_teacher(
        model_size=args.model_size or "small",
        steps=args.steps,
        device=args.device,
        out=args.out,
        progress=True,
        command=command,
        batch_size=args.batch_size,
        crop=getattr(args, "crop", None),
        lr=args.lr,
        time_budget_s=args.time_budget,
    )
    entry = read_provenance(path)
    print(
        f"teacher written to {path} ({entry.get('bytes', 0) / 2**20:.1f} MiB, sha256 {entry.get('sha256', '?')[:12]}…): "
        f"{entry.get('steps_done')} steps in {entry.get('wall_time_s')} s on {entry.get('device')}, "
        f"final loss {entry.get('final_loss')}, held-out MSE {entry.get('heldout_mse_before')} → {entry.get('heldout_mse_after')}"
    )


def index_with_bars(models: list[str] | None, categories: list[str] | None) -> dict[str, int]:
    """``python -m core index``'s work, printed: a progress bar per category (the job panel reads
    them), what the run found and did, and the points per collection."""
    from tqdm import tqdm

    from core.similarity.indexing import index_categories

    bars: dict[str, tqdm] = {}

    def progress(what: str, done: int, total: int) -> None:
        bar = bars.get(what) or bars.setdefault(what, tqdm(total=total, desc=what, unit="img"))
        bar.update(done - bar.n)
        if done == total:
            bar.close()

    report = index_categories(models, categories, progress=progress)
    for line in report.notes:
        print(line)
    for key, count in report.counts.items():
        print(f"{key}: {count} points")
    for line in report.outgrown:
        print(f"warning: {line}", file=sys.stderr)
    return report.counts


def cmd_index(args: argparse.Namespace) -> None:
    if args.to_server:
        from core.settings import qdrant_url
        from core.similarity.indexing import copy_to_server

        copied = copy_to_server()
        for name, points in copied.items():
            print(f"{name}: {points} points copied and counted on the server")
        print(
            f"copied {sum(copied.values())} point(s) in {len(copied)} collection(s) to {qdrant_url()}; the embedded store "
            "is unchanged. Keep QDRANT_URL (and QDRANT_API_KEY) set: Inspect now uses the server."
        )
        return
    if not index_with_bars(args.model, args.category):
        raise InspectError("no trained model matches: train one first with `python -m core train ...`")


def format_retrieval(entries: dict[str, Any]) -> str:
    """precision@k per (model/category, descriptor) beside chance, as ``eval-similar`` prints it."""
    header = f"{'model/category':<24}{'descriptor':<10}{'p@k anomalous':>15}{'p@k same type':>15}{'chance (anom/type)':>20}"
    rows = [header, "-" * len(header)]
    for key, e in sorted(entries.items()):
        chance = e["chance"]
        for name, d in e["descriptors"].items():
            pa, ps = d["precision_anomalous"], d["precision_same_defect"]
            rows.append(
                f"{key:<24}{name:<10}{pa if pa is None else f'{pa:.3f}':>15}{ps if ps is None else f'{ps:.3f}':>15}"
                f"{chance['precision_anomalous']:>12.3f} / {chance['precision_same_defect']:.3f}"
            )
    return "\n".join(rows)


def cmd_eval_similar(args: argparse.Namespace) -> None:
    from core.similarity.indexing import eval_similar

    report = eval_similar(args.model, args.category, k=args.k, plain=args.plain)
    for line in report.skipped:
        print(f"warning: {line}", file=sys.stderr)
    if not report.entries:
        raise InspectError("nothing indexed yet: run `python -m core index` first")
    print(format_retrieval(report.entries))


def cmd_export(args: argparse.Namespace) -> None:
    from core.export.exporter import export_model, use_export

    result = call_with(export_model, args)
    print(f"exported {result.model}/{result.category} {result.version} to {result.path} ({result.precision})")
    for refused in result.declined:
        print(f"{refused.precision} refused by the parity rule: {refused.problem()}")
    print(f"parity with the torch model: {result.parity.summary()}")
    if args.use:
        use_export(result, actor=_actor(args))
        print(f"{result.model}/{result.category} {result.version} now runs with OpenVINO (app and commands without --runtime)")


def _runtime_arg(p: argparse.ArgumentParser) -> None:
    from core.export import RUNTIMES

    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        help="torch, or the model's OpenVINO export (default: the model version's choice, see `export --use`)",
    )


def _export_parser(sub: Any) -> None:
    from core.export import FORMATS, PRECISION_CHOICES

    p = sub.add_parser(
        "export",
        help="export a trained model to OpenVINO or ONNX, checked against the torch model on the test images",
        description="Export a model version with anomalib's exporter (dynamic batch, calibration inside) into "
        "its version folder (vNNNN/export/<format>/), then run it and the torch model on the category's test "
        "images: kept only when the parity rule accepts it (image AUROC within 0.002, every score within the "
        "precision's bound of fp32: 1e-3 fp32, 0.02 bf16/int8, and a verdict may differ only for an image that "
        "close to the threshold).",
    )
    p.add_argument("--model", choices=MODEL_NAMES, required=True)
    p.add_argument("--category", required=True)
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="openvino")
    p.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="auto",
        help="OpenVINO precision; auto (default): bf16 where the CPU has it natively and the parity rule "
        "accepts it, else fp32; int8 is quantised, calibrated on train/good",
    )
    p.add_argument("--version", help="the version folder to export, e.g. v0003 (default: the newest)")
    p.add_argument("--data-root", help="where the category's test images are (default: where the model was trained)")
    p.add_argument("--use", action="store_true", help="run this model version with the export from now on (OpenVINO)")
    p.set_defaults(func=cmd_export)


def cmd_inspect(args: argparse.Namespace) -> int:
    """Exit 0 when every file was judged, 1 when any could not be (its row says why)."""
    from tqdm import tqdm

    from core.services.batch import run_folder

    bar: list[tqdm] = []

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc="Inspecting", unit="img", file=sys.stderr))
        bar[0].update(done - bar[0].n)

    def line(row: dict[str, Any]) -> None:  # without --csv, one line per file on stdout
        if row["verdict"] is None:
            text = f"FAILED  {row['error']}"
        else:
            text = f"{row['verdict']:<7} {row['score']:.3f}  {row['file']}" + (f"  ({row['error']})" if row["error"] else "")
        tqdm.write(text, file=sys.stdout)

    try:
        report = call_with(run_folder, args, on_row=None if args.csv_path else line, progress=progress)
    finally:
        if bar:
            bar[0].close()
    for note in report.notes:
        print(f"warning: {note}", file=sys.stderr)
    print(report.summary() + (f"; rows in {args.csv_path}" if args.csv_path else ""))
    return 1 if report.failed else 0


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (0.5 = calibrated), got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _inspect_parser(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="judge images, folders (recursive) or globs with a trained model; exit 1 if any file failed",
        description="Judge every image named (files, folders searched recursively, globs) with a trained model. "
        "Exit status: 0 when every file was judged, 1 when any file could not be (its CSV row says why), "
        "2 for bad usage (unknown category or model, untrained model, no images found).",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="an image, a folder or a glob (quote it: 'parts/*.png')")
    p.add_argument("--category", required=True)
    p.add_argument("--model", choices=MODEL_NAMES, help="default: the first model trained for the category")
    p.add_argument(
        "--threshold",
        type=_unit_interval,
        default=0.5,
        metavar="T",
        help="decision threshold, normalised 0..1 (0.5 = calibrated)",
    )
    p.add_argument(
        "--csv", dest="csv_path", metavar="OUT.csv", help="write one row per file here (default: one line per file on stdout)"
    )
    p.add_argument("--overlays", metavar="DIR", help="write each image's heatmap overlay PNG into DIR")
    p.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record each inspection in the history and a DEFECT in the similar-defect index (default: yes)",
    )
    p.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="images per forward pass (default 8)")
    _runtime_arg(p)
    p.set_defaults(func=cmd_inspect)


def cmd_setup(args: argparse.Namespace) -> None:
    from core.setup_default import prepare_default

    prepare_default(skip_index=args.skip_index)


def _read_password(args: argparse.Namespace) -> str:
    """From stdin's first line (``--password-stdin``, for scripts) or typed twice at a hidden prompt."""
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    password = getpass.getpass(f"Password for {args.name}: ")
    if getpass.getpass("Repeat the password: ") != password:
        raise InspectError("the two passwords differ; nothing was changed")
    return password


def cmd_users(args: argparse.Namespace) -> None:
    from core import auth

    if args.action == "add":
        entry = auth.add_user(args.name, _read_password(args), args.role, replace=args.replace)
        print(f"user {entry.name} ({entry.role}) saved in {auth.users_path()}")
    elif args.action == "remove":
        auth.remove_user(args.name)
        print(f"user {args.name} removed")
    elif args.action == "add-key":
        key = auth.add_api_key(args.name, args.role)
        # The key alone on stdout (scripts capture it); the note on stderr. It is shown only now.
        print(f"API key {args.name} ({args.role}); store it now, it is not shown again:", file=sys.stderr)
        print(key)
    elif args.action == "remove-key":
        auth.remove_api_key(args.name)
        print(f"API key {args.name} removed")
    else:  # list
        users, keys = auth.list_users(), auth.list_api_keys()
        if not users and not keys:
            print(f"no users in {auth.users_path()}: add one with `python -m core users add NAME --role engineer`")
        for title, entries in (("users", users), ("API keys", keys)):
            if entries:
                print(f"{title}:")
                for e in entries:
                    print(f"  {e.name:<24}{e.role:<12}{e.created}")


def cmd_serve(args: argparse.Namespace) -> None:
    from core.api.server import serve
    from core.db import engine as db
    from core.settings import get_settings

    url = get_settings().database_url
    if db.is_server(url):  # an unreachable or wrong URL is one line now, not at the first inspection
        db.check(url)
    if args.station:
        from core.settings import station

        os.environ["INSPECT_STATION"] = args.station
        station()  # a bad name is one line now, not at the first inspection
    serve(args.host, args.port)


def cmd_db(args: argparse.Namespace) -> None:
    from core.db import engine as db
    from core.settings import get_settings

    settings = get_settings()
    if args.action == "upgrade":
        from core.db import migrate

        done = migrate.upgrade(db.engine_for(settings.database_url))
        if done.changed:
            print(f"{done.database}: schema {done.before or 'none'} -> {done.after}")
        else:
            print(f"{done.database}: schema {done.after}, already the newest")
        return
    from core.db.copy import copy_workspace

    report = copy_workspace(settings.database_url, settings.users_file, args.to)
    print(
        f"copied into {report.target}: {report.inspections} inspection(s), {report.thumbnails} thumbnail(s), "
        f"{report.users} user(s), {report.api_keys} API key(s); verified by counts and {report.sampled} row(s) compared"
    )
    if report.thumbnails_missing:
        print(f"  note: {report.thumbnails_missing} inspection(s) had lost their thumbnail file before the copy")
    print(f"the source was left untouched; point the stations at the copy with INSPECT_DATABASE_URL={report.target}")


def _pct(errors: Any) -> str:
    """'3 false alarms of 20 goods, 1 missed of 6 defects' for a recalibration Errors."""
    if errors is None:
        return "-"
    return f"{errors.false_alarms} false alarm(s) of {errors.goods} good, {errors.missed} missed of {errors.defects} defect(s)"


def cmd_recalibrate(args: argparse.Namespace) -> None:
    from core.services import feedback_loop

    proposal, _ = feedback_loop.propose_recalibration(args.model, args.category, with_test=not args.apply)
    print(f"{args.model}/{args.category}: {proposal.reviews} reviewed inspection(s), {proposal.calibration_goods} held-out goods")
    for note in proposal.notes:
        print(f"  note: {note}")
    if not proposal.ok:
        raise InspectError(proposal.refusal or "no threshold could be proposed")
    print(f"  threshold (raw score): {proposal.current:.6g} -> {proposal.proposed:.6g}")
    print(f"  reviewed inspections: before {_pct(proposal.reviewed_before)}; after {_pct(proposal.reviewed_after)}")
    if proposal.test_before is not None:
        print(f"  test set:             before {_pct(proposal.test_before)}; after {_pct(proposal.test_after)}")
    if args.apply:
        version, _ = feedback_loop.apply_recalibration(args.model, args.category, actor=_actor(args))
        print(f"applied: new version {version}")
        print(_runtime_line(args.model, args.category, version))
    else:
        print("not applied: add --apply to write it as a new version")


def _actor(args: argparse.Namespace) -> Any:
    """The command line acts as an engineer (a shell on the server can write the models folder anyway)."""
    from core.auth import ENGINEER, Actor

    return Actor(getattr(args, "who", None) or "command line", ENGINEER)


def cmd_update_bank(args: argparse.Namespace) -> None:
    from core.services import feedback_loop

    done = call_with(feedback_loop.update_bank, args, actor=_actor(args))
    print(
        f"{args.model}/{args.category}: new version {done.version}: memory bank {done.n_old} -> {done.n_old + done.n_added} "
        f"patches from {done.n_images} image(s); threshold (raw) {done.threshold_before:.6g} -> {done.threshold_after:.6g}"
    )
    if done.defects_known:
        print(
            f"  known defects (inspections reviewed as defective): {done.defects_caught_before} of {done.defects_known} "
            f"caught before, {done.defects_caught_after} of {done.defects_known} after"
        )
    if done.held_out_goods:
        print(
            f"  held-out goods of the calibration split flagged: {done.goods_flagged_before} of {done.held_out_goods} "
            f"before, {done.goods_flagged_after} of {done.held_out_goods} after"
        )
    for note in done.notes:
        print(f"  note: {note}")


def cmd_versions(args: argparse.Namespace) -> None:
    from core.services import feedback_loop

    if args.restore:
        version = feedback_loop.restore_version(args.model, args.category, args.restore, actor=_actor(args))
        print(f"restored {args.restore} of {args.model}/{args.category} as {version}")
        print(_runtime_line(args.model, args.category, version))
        return
    infos = feedback_loop.versions(args.model, args.category)
    if not infos:
        raise InspectError(f"no stored version of {args.model}/{args.category}")
    for v in infos:
        mark = "*" if v.is_latest else " "
        cause = f" (inspections {', '.join(map(str, v.inspections))})" if v.inspections else ""
        print(f"{mark} {v.version}  {v.created}  {v.kind:<12} parent {v.parent or '-':<6} {v.who or '-':<12} {v.change}{cause}")


def _learning_parsers(sub: Any) -> None:
    """recalibrate, update-bank and versions: what inspectors' feedback changes (core.learning)."""
    p = sub.add_parser("recalibrate", help="propose (and with --apply, set) a threshold from inspectors' feedback")
    p.add_argument("--category", required=True)
    p.add_argument("--model", choices=MODEL_NAMES, default=MODEL_NAMES[0])
    p.add_argument("--apply", action="store_true", help="write the proposed threshold as a new model version")
    p.add_argument("--who", default="command line", help="recorded in the new version (default: 'command line')")
    p.set_defaults(func=cmd_recalibrate)

    p = sub.add_parser("update-bank", help="add confirmed-good images to PatchCore's memory bank (a new version)")
    p.add_argument("--category", required=True)
    p.add_argument("--model", choices=MODEL_NAMES, default="patchcore", help="PatchCore only (EfficientAD: recalibrate)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="DIR", help="a folder of good images")
    src.add_argument("--from-history", action="store_true", help="the false alarms and correct GOOD verdicts in the history")
    p.add_argument(
        "--force",
        action="store_true",
        help="add images even when the model in use says they do not look like the category (they are refused otherwise)",
    )
    p.add_argument("--who", default="command line")
    p.set_defaults(func=cmd_update_bank)

    p = sub.add_parser("versions", help="list a model's versions, or restore one (as a new version)")
    p.add_argument("--category", required=True)
    p.add_argument("--model", choices=MODEL_NAMES, default=MODEL_NAMES[0])
    p.add_argument("--restore", metavar="VERSION", help="e.g. v0001: make it the newest again")
    p.add_argument("--who", default="command line")
    p.set_defaults(func=cmd_versions)


def _serve_parser(sub: Any) -> None:
    from core.api.server import DEFAULT_HOST, DEFAULT_PORT

    p = sub.add_parser("serve", help="run the REST API alone (no dashboard), for line PCs")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST}: this computer only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--station", help="the line station this server inspects for, recorded with every inspection (INSPECT_STATION)"
    )
    p.set_defaults(func=cmd_serve)


def _db_parser(sub: Any) -> None:
    p = sub.add_parser("db", help="the history database: upgrade its schema, copy it to a server")
    p.set_defaults(func=cmd_db)
    actions = p.add_subparsers(dest="action", required=True)
    actions.add_parser("upgrade", help="bring the database (INSPECT_DATABASE_URL, else the workspace's) to this schema")
    a = actions.add_parser("copy", help="copy this workspace's history and users into another database (verified)")
    a.add_argument("--to", required=True, metavar="URL", help="the target, e.g. postgresql://inspect:PASSWORD@db-host/inspect")


def _users_parser(sub: Any) -> None:
    from core.auth import ROLES

    p = sub.add_parser("users", help="manage who may sign in to the app (and API keys)")
    p.set_defaults(func=cmd_users)
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("add", help="add a user (password from a hidden prompt or --password-stdin)")
    a.add_argument("name")
    a.add_argument("--role", choices=ROLES, required=True)
    a.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    a.add_argument("--replace", action="store_true", help="set a new password and role for an existing user")
    a = actions.add_parser("remove", help="remove a user")
    a.add_argument("name")
    actions.add_parser("list", help="list users and API keys (never their secrets)")
    a = actions.add_parser("add-key", help="create an API key (printed once; only its hash is stored)")
    a.add_argument("name", help="a label for the key, e.g. the client that uses it")
    a.add_argument("--role", choices=ROLES, required=True)
    a = actions.add_parser("remove-key", help="revoke an API key")
    a.add_argument("name")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Inspect: train, evaluate and index anomaly detectors.")
    sub = parser.add_subparsers(dest="command", required=True)

    def data_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-root", help="folder with MVTec-layout categories (default: INSPECT_DATA_ROOT or the demo data)")

    p = sub.add_parser("demo-data", help=f"generate the synthetic demo dataset ({', '.join(DEMO_CATEGORIES)})")
    p.add_argument("--out", help="output folder (default: the workspace's demo_data)")
    p.add_argument("--categories", nargs="+", default=list(DEMO_CATEGORIES), choices=list(DEMO_CATEGORIES), metavar="CATEGORY")
    p.add_argument("--n-train", type=_count, default=80)
    p.add_argument("--n-test-good", type=_count, default=20)
    p.add_argument("--n-per-defect", type=_count, default=6)
    p.add_argument("--size", type=_count, default=256, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--drift",
        action="store_true",
        help="also write a drifted set (brightness/colour/texture scale) beside it, in demo_data_drift/",
    )
    p.add_argument(
        "--hires",
        action="store_true",
        help="also write the high-resolution category hires_metal (2048 px frames, defects of 6-20 px, full-size masks)",
    )
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("check", help="check a category's MVTec AD layout")
    p.add_argument("--category", required=True)
    data_args(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("train", help="train a model on one category")
    p.add_argument("--model", choices=MODEL_NAMES, default=MODEL_NAMES[0])
    p.add_argument("--category", required=True)
    data_args(p)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--image-size", type=int, help="square input size in pixels (default 256)")
    p.add_argument(
        "--tile",
        type=int,
        help="tiled inspection of large images: tile side in image pixels, each tile resized to --image-size "
        "(default: none, the whole image is resized); PatchCore and EfficientAD",
    )
    p.add_argument("--stride", type=int, help="step between tiles in pixels, at most --tile (default: --tile, no overlap)")
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the calibration split's draw and the training (default 0: reproducible)"
    )
    p.add_argument(
        "--no-export",
        dest="export",
        action="store_false",
        default=None,
        help="keep the new version on torch (default: export it to OpenVINO and run it with the export when the "
        "parity rule accepts it; INSPECT_EXPORT_AFTER_TRAINING=0 does the same)",
    )
    for name in MODEL_NAMES:
        get_spec(name).add_cli_args(p.add_argument_group(model_label(name)))
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("autotrain", help="train and evaluate EfficientAD for the demo categories, one at a time")
    p.add_argument("--category", nargs="+", help="these categories (default: the demo categories present)")
    data_args(p)
    p.add_argument("--time-budget", default="15m", help="per category, e.g. 15m, 1h, 900s (default 15m)")
    p.add_argument("--background", action="store_true", help="start it as a low-priority background job and return")
    p.set_defaults(func=cmd_autotrain)

    p = sub.add_parser("evaluate", help="evaluate trained models and write the results file")
    p.add_argument("--model", nargs="+", help="only these models")
    p.add_argument("--category", nargs="+", help="only these categories")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _runtime_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("distill-teacher", help="distil EfficientAD's PDN teacher from the offline backbone")
    p.add_argument("--model-size", choices=("small", "medium"), default="small")
    p.add_argument("--steps", type=int, help="optimisation steps (default: GPU 60000, CPU a short schedule)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--out", help="where to write the teacher weights (default: assets/)")
    p.add_argument("--batch-size", type=int, help="crops per step (default: GPU 16, CPU 8)")
    p.add_argument("--crop", type=int, help="PDN input side in px, a multiple of 4 (default: GPU 256, CPU 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: GPU 1e-4, CPU 1e-3)")
    p.add_argument("--time-budget", type=float, help="stop after this many seconds of training (the schedule follows)")
    p.set_defaults(func=cmd_distill_teacher)

    p = sub.add_parser("index", help="index a category's images in Qdrant for similar-defect search")
    p.add_argument("--model", nargs="+", help="only these models (default: every trained one)")
    p.add_argument("--category", nargs="+", help="only these categories")
    p.add_argument(
        "--to-server",
        action="store_true",
        help="copy every point of the embedded store to the Qdrant server of QDRANT_URL (verified by counts; the embedded store is not changed)",
    )
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("eval-similar", help="measure similar-defect retrieval (precision@5)")
    p.add_argument("--model", nargs="+")
    p.add_argument("--category", nargs="+")
    p.add_argument("--k", type=int, default=5)
    p.add_argument(
        "--plain",
        action="store_true",
        help="rank by the descriptors' cosine alone, without the metric learned from the gallery's labels (printed, not saved)",
    )
    p.set_defaults(func=cmd_eval_similar)

    p = sub.add_parser(
        "setup", help=f"prepare the embedded default: demo data ({', '.join(DEMO_CATEGORIES)}), models, results, index"
    )
    p.add_argument("--skip-index", action="store_true")
    p.set_defaults(func=cmd_setup)

    _inspect_parser(sub)
    _export_parser(sub)
    _users_parser(sub)
    _db_parser(sub)
    _serve_parser(sub)
    _learning_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    _show_core_messages()
    try:
        status = args.func(args)  # None, or an exit status (inspect: 1 when any file failed)
    except InspectError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0
