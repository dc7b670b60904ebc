"""The ``distat`` command: parse the arguments, call one entry of :mod:`distat.app`, print its result.
Errors are one line on stderr and exit status 2; Ctrl-C is exit status 130."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from distat.errors import DistatError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _parse_override(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise DistatError(f"--set {text!r}: expected KEY=VALUE, e.g. --set method.adv_lr=0.05")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in (getattr(args, "resource", None) or []) if "=" in item)


def _resources(args: argparse.Namespace) -> Any:
    from distat.app import AttackResources

    return AttackResources.at(args.cache_dir, _overrides(args))


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from distat.app import train
    from distat.app.train import TrainHooks
    from distat.config import load_trial_config

    overrides = dict(_parse_override(s) for s in args.set or [])
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    cfg = load_trial_config(args.config, overrides)
    bar = tqdm(desc="train", unit="step", disable=args.quiet or not sys.stderr.isatty(), leave=False)

    def on_start(info: dict[str, Any]) -> None:
        _say(f"distat train: {cfg.method.label} on {cfg.data.path} ({info['train_examples']} train / "
             f"{info['dev_examples']} dev), backbone {cfg.model.backbone}, {info['device']}, "
             f"{cfg.train.epochs} epoch(s) x {info['steps_per_epoch']} steps -> {cfg.output_dir}")
        bar.total = info["steps_per_epoch"]

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    def on_epoch_end(metrics: dict[str, float], ckpt: Any) -> None:
        bar.reset()
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        _say(f"epoch {int(metrics['epoch'])}: {shown}")

    try:
        outcome = train(cfg, resume=args.resume, overwrite=args.overwrite, where=_resources(args),
                        hooks=TrainHooks(on_start=on_start, on_step=on_step, on_epoch_end=on_epoch_end), notify=_say)
    finally:
        bar.close()
    if outcome.diverged:
        _say("trial diverged (non-finite loss); metrics are those of the last good epoch")
    width = max(len(k) for k in outcome.summary)
    for key, value in outcome.summary.items():
        print(f"{key:<{width}}  {_fmt(value)}")
    return 0


def cmd_resources(args: argparse.Namespace) -> int:
    from pathlib import Path

    from distat.app import build_resources, show_resources

    where = _resources(args)
    if args.action == "build":
        built = build_resources(where, args.parts, lexical=Path(args.lexical) if args.lexical else None,
                                shared_data=Path(args.shared_data) if args.shared_data else None,
                                text=[Path(p) for p in args.text or []], mlm_steps=args.mlm_steps, force=args.force,
                                notify=_say)
        for part, path in built.items():
            print(f"{part:<11} {path}")
        return 0
    report = show_resources(where)
    width = max(len(k) for k in report)
    for name, entry in report.items():
        mark = "ok     " if entry["present"] else "MISSING"
        print(f"{name:<{width}}  {mark}  {entry['path']}\n{'':<{width}}           {entry['note']}")
    return 0 if all(e["present"] for e in report.values()) else 1


def cmd_attack(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from distat.app import AttackRequest, attack

    req = AttackRequest(**{k: getattr(args, k) for k in AttackRequest.__dataclass_fields__})
    bars: list[Any] = []  # the bar appears once the attack starts (after every check passed)

    def on_examples(n: int) -> None:
        bars.append(tqdm(total=n, desc=args.recipe, unit="ex", disable=args.quiet))

    def progress(done: int, total: int) -> None:
        bars[-1].update(done - bars[-1].n)

    try:
        outcome = attack(req, _resources(args), notify=_say, on_examples=on_examples, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    rows = outcome.metrics
    for key in ("n", "clean_acc", "robust_acc", "attack_success_rate", "perturbed_word_pct", "avg_queries",
                "skipped", "failed", "succeeded"):
        ci = f"  [{rows[key + '_lo']:.3f}, {rows[key + '_hi']:.3f}]" if f"{key}_lo" in rows else ""
        value = int(rows[key]) if key in ("n", "skipped", "failed", "succeeded") else rows[key]
        print(f"{key:<20} {_fmt(value)}{ci}")
    print(f"{'threat_spec_hash':<20} {outcome.spec.hash}")
    return 0


def cmd_static(args: argparse.Namespace) -> int:
    from distat.app import static

    result = static(args.model, args.data, args.split, num_labels=args.num_labels, max_length=args.max_length)
    for key, value in result.items():
        print(f"{key:<14} {_fmt(value)}")
    return 0


def print_trial_event(event: Any) -> None:
    """One line per trial event on stderr (module level: Tune's snapshot pickles it by reference)."""
    if event.kind == "start":
        _say(f"  start   {event.trial_id}  {event.params}")
    elif event.kind == "epoch":
        _say(f"  epoch   {event.trial_id}  epoch {event.epoch}  clean_acc {event.clean_acc:.4f}")
    elif event.kind == "done":
        tag = "DIVERGED" if event.diverged else ""
        _say(f"  done    {event.trial_id}  clean_acc {event.clean_acc:.4f}  robust_acc {event.robust_acc:.4f}  "
             f"({event.done}/{event.total}) {tag}")
    elif event.kind == "error":
        _say(f"  ERROR   {event.trial_id}: see {event.path}")


def _front_display(table: Any, clean_metric: str = "clean_acc") -> Any:
    """The front's rows for printing: a ``~`` mark and the front members named on trials within noise of the
    front (only when there is one), each objective (the clean one is the column ``clean_metric``) followed by its
    interval and count in one cell, the other columns as they are."""
    import pandas as pd

    def ci(row: Any, name: str) -> str:
        cells = [row.get(f"{name}{end}") for end in ("_lo", "_hi", "_n")]
        if any(v is None or pd.isna(v) for v in cells):
            return "-"
        return f"[{cells[0]:.3f}, {cells[1]:.3f}] n={int(cells[2])}"

    peers = table["within_noise_of"].fillna("").astype(str) if "within_noise_of" in table else None
    noisy = peers is not None and bool(peers.astype(bool).any())
    shown = pd.DataFrame(index=table.index)
    if noisy:
        shown[""] = ["~" if v else "" for v in peers]
    # the CI column's header: "clean 95% CI" for accuracy (as always), the metric's name for another objective
    objectives = {clean_metric: "clean" if clean_metric == "clean_acc" else clean_metric, "robust_acc": "robust"}
    interval_columns = {f"{name}{end}" for name in objectives for end in ("_lo", "_hi", "_n")}
    for column in table.columns:
        if column in interval_columns or column == "within_noise_of":
            continue
        shown[column] = table[column]
        if column in objectives:
            shown[f"{objectives[column]} 95% CI"] = [ci(row, column) for _, row in table.iterrows()]
    if noisy:
        shown["within noise of"] = peers
    return shown


_HISTORY_SHOWN = 12  # the last values of a longer hypervolume history


def _history_line(history: Any, reference: tuple[float, float]) -> str:
    """``  hypervolume (reference 0, 0) after each trial: 0.3120 0.4010 0.4010 0.4550; last improved at trial 4
    of 4 (t3)``: only the last :data:`_HISTORY_SHOWN` values of a longer search, after ``...``."""
    from distat.tracking.pareto import reference_text

    values = [f"{s.hypervolume:.4f}" for s in history[-_HISTORY_SHOWN:]]
    which = "each trial"
    if len(history) > _HISTORY_SHOWN:
        values.insert(0, "...")
        which = f"each trial (the last {_HISTORY_SHOWN} of {len(history)})"
    improved = [s for s in history if s.improved]
    last = (f"last improved at trial {improved[-1].step} of {len(history)} ({improved[-1].trial_id})" if improved
            else "no trial raised it above 0")
    return f"  hypervolume (reference {reference_text(reference)}) after {which}: {' '.join(values)}; {last}"


def _print_front(front: Any) -> None:
    if not front.total:
        print("no trial finished: nothing on the Pareto front (see the trial errors above)")
        return
    from distat.tracking.pareto import clean_label

    clean_metric = front.clean_metric
    # over accuracy the header is today's; another clean objective is named, as the plots name it
    over = "" if clean_metric == "clean_acc" else f" of {clean_label(clean_metric)} vs robust accuracy"
    print(f"Pareto front{over} ({front.on_front} of {front.total} trials, hypervolume {front.hypervolume:.4f}):")
    if front.below_floor:  # the floor is on clean accuracy whatever the objective
        print(f"  left out, below the clean-accuracy floor: {', '.join(front.below_floor)}")
    if front.diverged:
        print(f"  left out, diverged: {', '.join(front.diverged)}")
    if front.history:
        print(_history_line(front.history, front.reference))
    print(_front_display(front.table, clean_metric).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("95% CI: Wilson score interval of the accuracy over its n examples (none where no count was recorded)")
    if front.within_noise:
        print(f"~ within noise ({len(front.within_noise)}): not on the front, but its clean and its robust interval "
              "both overlap those of the front trial(s) named: the data cannot tell them apart")
    if front.early_stop:
        print(front.early_stop)
    if front.has_static:
        print("robust_acc: targeted evaluation (a new attack on each model); static_robust_acc: the ADA victim's "
              "adversarial examples reused for every model (overstates robustness)")
    for kind, path in front.files.items():
        print(f"{kind}: {path}")
    print(f"open it in MLflow: mlflow ui --backend-store-uri {front.tracking_uri}")


def _finish(outcome: Any) -> int:
    if outcome.interrupted:
        _say(f"distat: interrupted; finished trials and checkpoints are kept: continue with `distat resume "
             f"{outcome.search_dir}`")
        return EXIT_INTERRUPTED
    _print_front(outcome.front)
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from distat.app import search
    from distat.search.space import load_search_config

    config = load_search_config(args.config)
    if args.warm_start is not None:
        config = config.model_copy(update={"search": config.search.model_copy(update={"warm_start": args.warm_start})})
    return _finish(search(config, storage=args.storage, tracking_uri=args.tracking_uri,
                          address=args.address, cache_dir=args.cache_dir, resource_overrides=_overrides(args),
                          listener=print_trial_event, notify=_say))


def cmd_resume(args: argparse.Namespace) -> int:
    from distat.app import resume

    return _finish(resume(args.search_dir, address=args.address, tracking_uri=args.tracking_uri,
                          cache_dir=args.cache_dir, listener=print_trial_event, notify=_say))


def cmd_extend(args: argparse.Namespace) -> int:
    from distat.app import extend

    return _finish(extend(args.search_dir, args.trials, address=args.address, tracking_uri=args.tracking_uri,
                          cache_dir=args.cache_dir, listener=print_trial_event, notify=_say))


def cmd_pareto(args: argparse.Namespace) -> int:
    from distat.app import pareto

    _print_front(pareto(args.search_dir))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from distat.app.evaluate import evaluate

    bars: dict[tuple[str, str], Any] = {}
    quiet = args.quiet or not sys.stderr.isatty()

    def progress(trial_id: str, attack: str, done: int, total: int) -> None:
        bar = bars.get((trial_id, attack))
        if bar is None:
            bar = bars[(trial_id, attack)] = tqdm(total=total, desc=f"{trial_id} {attack}", unit="ex",
                                                  disable=quiet, leave=False)
        bar.n = done
        bar.refresh()

    try:
        outcome = evaluate(args.search_dir, n=args.n, all_rows=args.all_rows, trials=args.trial or (), only=args.only,
                           best_per_method=False if args.no_best else None, address=args.address,
                           tracking_uri=args.tracking_uri, cache_dir=args.cache_dir, notify=_say, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    attacked = sum(t.attacked for t in outcome.trials)
    reused = sum(t.reused for t in outcome.trials)
    done = sum(t.already_done for t in outcome.trials)
    print(f"test stage: {len(outcome.trials)} trial(s) on the {outcome.split} split; {attacked} example(s) attacked"
          + (f", {reused} kept from an interrupted run" if reused else "")
          + (f", {done} trial(s) already evaluated" if done else ""))
    print(f"the table: distat report {args.search_dir}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from distat.app.report import report

    outcome = report(args.search_dir, *args.more, split=args.split, all_front=args.all, tracking_uri=args.tracking_uri,
                     log_mlflow=not args.no_mlflow)
    for line in outcome.warnings:
        _say(line)
    print(outcome.markdown)
    for kind, path in outcome.files.items():
        print(f"{kind}: {path}")
    print(f"open it in MLflow: mlflow ui --backend-store-uri {outcome.tracking_uri}")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line too (argparse prints the whole usage first)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"distat: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distat", description="Search adversarial-training settings.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    def resource_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--cache-dir", help="resource cache (default $DISTAT_CACHE_DIR or ~/.cache/distat)")
        p.add_argument("--resource", action="append", metavar="NAME=PATH",
                       help="override one resource path (wordnet, word_vectors, sentence_encoder, mlm, "
                            "pos_model, calibration)")

    p = sub.add_parser("train", help="run one training trial from a YAML config and print its metrics")
    p.add_argument("config", help="trial YAML (see configs/demo.yaml)")
    p.add_argument("--output-dir", help="where checkpoints and metrics go (overrides output_dir)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    p.add_argument("--overwrite", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    resource_flags(p)  # for ADA (augment: in the config)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("resources", help="build or show the offline attack resources")
    p.add_argument("action", choices=["build", "show"])
    p.add_argument("--parts", nargs="+", help="build only these parts (nltk, vectors, similarity, mlm)")
    p.add_argument("--lexical", help="counter-fitting pair files (default: $DISTAT_SHARED_DATA/lexical)")
    p.add_argument("--shared-data", help="GLUE-style datasets for the MLM corpus and calibration")
    p.add_argument("--text", action="append", help="extra text file for the MLM corpus (repeatable)")
    p.add_argument("--mlm-steps", type=int, default=500)
    p.add_argument("--force", action="store_true", help="rebuild parts that already exist")
    resource_flags(p)
    p.set_defaults(func=cmd_resources)

    p = sub.add_parser("attack", help="attack a classifier with a TextAttack recipe and print robust metrics")
    p.add_argument("--model", required=True, help="a classifier folder (e.g. a checkpoint of distat train)")
    p.add_argument("--data", required=True, help="dataset folder (GLUE layout) or builtin:/hf: name")
    p.add_argument("--split", default="test")
    p.add_argument("--recipe", default="textfooler", help="textfooler, textbugger, pwws or bae")
    p.add_argument("--n", type=int, default=200, help="examples attacked (a fixed seeded subset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--actors", type=int, default=2, help="Ray attack actors (0: attack in this process)")
    p.add_argument("--gpus-per-actor", type=float, default=0.0)
    p.add_argument("--address", help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--max-candidates", type=int, help="K: candidates per word")
    p.add_argument("--max-modify-rate", type=float, help="at most this fraction of words perturbed")
    p.add_argument("--query-budget", type=int, help="model queries per example")
    p.add_argument("--sim-threshold", type=float, help="sentence-encoder threshold (default: calibrated)")
    p.add_argument("--stopwords-ignore-case", action="store_true",
                   help="compare words with the stopword list lower-cased (default: TextAttack's case-sensitive "
                        "comparison, which lets a capitalised stopword be swapped)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="texts per victim and sentence-encoder forward (larger on a GPU; a speed setting, not part of "
                        "the threat model)")
    p.add_argument("--csv", help="write every attacked example to this CSV")
    p.add_argument("--export", help="write the successful adversarial examples as a static TSV set")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    resource_flags(p)
    p.set_defaults(func=cmd_attack)

    p = sub.add_parser("static", help="accuracy on a saved adversarial set (AdvGLUE or one exported)")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="a .tsv file or a folder (with --split)")
    p.add_argument("--split")
    p.add_argument("--num-labels", type=int)
    p.add_argument("--max-length", type=int, default=128)
    p.set_defaults(func=cmd_static)

    p = sub.add_parser("search", help="run a multi-objective search (clean vs robust accuracy) from a YAML")
    p.add_argument("config", help="search-space YAML (see search_spaces/)")
    p.add_argument("--storage", default="runs/searches", help="search results folder (shared by all nodes)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite mlflow.db in this folder)")
    p.add_argument("--address", help="an existing Ray cluster, e.g. auto (default: start a local one)")
    p.add_argument("--warm-start", metavar="SEARCH_DIR",
                   help="a previous search whose finished trials (those fitting this space and threat model) the "
                        "sampler starts from (overrides search.warm_start)")
    resource_flags(p)
    p.set_defaults(func=cmd_search)

    def moved_flags(p: argparse.ArgumentParser, saved: str) -> None:
        """Where the cluster is, and the tracking server and resource cache if they moved since the search."""
        p.add_argument("--address", help="an existing Ray cluster, e.g. auto (default: start a local one)")
        p.add_argument("--tracking-uri", help=f"MLflow tracking URI, if it moved (default: the one the search "
                                              f"started with{saved})")
        p.add_argument("--cache-dir", help=f"attack-resource cache, if it moved (default: the one the search "
                                           f"started with{saved})")

    p = sub.add_parser("resume", help="continue a search whose driver stopped (Ctrl-C, SIGKILL, lost node)")
    p.add_argument("search_dir")
    moved_flags(p, "; a new one is saved in the search folder")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("extend", help="run N more trials in a search's study (after it finished, was stopped or "
                                      "was killed): same searcher history, MLflow parent run, storage and spec")
    p.add_argument("search_dir")
    p.add_argument("--trials", type=_positive_int, required=True, help="how many more trials")
    moved_flags(p, "; a new one is saved in the search folder")
    p.set_defaults(func=cmd_extend)

    p = sub.add_parser("pareto", help="print a search's Pareto front and rewrite its CSV/PNG/HTML")
    p.add_argument("search_dir")
    p.set_defaults(func=cmd_pareto)

    p = sub.add_parser("evaluate", help="the test stage: re-evaluate the front and each method's best trial on "
                                        "the test split with every attack (resumable)")
    p.add_argument("search_dir")
    p.add_argument("--trial", action="append", metavar="ID", help="also evaluate this trial (repeatable)")
    p.add_argument("--only", action="store_true", help="evaluate only the --trial ones")
    p.add_argument("--no-best", action="store_true", help="not each method's best trial, only the front (+ --trial)")
    p.add_argument("--n", type=int, help="attack at most this many test examples (default: evaluate.n)")
    p.add_argument("--all-rows", action="store_true", help="attack every test example (no cap)")
    moved_flags(p, "")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="the paper-style table of a search (Markdown; CSV, LaTeX, HTML in "
                                      "<search dir>/report and on MLflow)")
    p.add_argument("search_dir")
    p.add_argument("more", nargs="*", metavar="search_dir", help="more searches whose rows join the table")
    p.add_argument("--all", action="store_true", help="every trial on the front, not each method's best")
    p.add_argument("--split", default="auto", choices=["auto", "test", "dev"],
                   help="test numbers (distat evaluate), dev numbers (the search's), or test when there are any")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, if it moved (default: the search's)")
    p.add_argument("--no-mlflow", action="store_true", help="do not attach the report to the MLflow parent run")
    p.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no schema-migration chatter in the terminal
    # Tune's own output: the legacy reporter is silent at verbose=0 (the new one still prints its start-up
    # box); no TensorBoard/CSV/JSON result loggers (distat writes final.json and logs to MLflow itself)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("optuna").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except DistatError as e:
        print(f"distat: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("distat: interrupted; checkpoints written so far are kept (rerun with --resume)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
