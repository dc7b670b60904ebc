"""The ``distat`` command: parse, call, print. Errors are one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from distat.errors import DistatError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
_JOIN_GRACE_S = 30.0  # on an existing cluster, how long nodes may still be joining before "too few GPUs" is final


def _parse_override(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise DistatError(f"--set {text!r}: expected KEY=VALUE, e.g. --set method.adv_lr=0.05")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _prepare_ada(cfg: Any, out: Path, args: argparse.Namespace) -> Any:
    """ADA for `distat train`: victim and pool in the resource cache (``ada/``), attacks in this process or
    on a local Ray when ``augment.actors > 0``."""
    from distat.augment.ada import Generator, prepare_trial
    from distat.augment.cache import FolderCache

    cache, paths = _attack_paths(args, cfg.augment.recipe)
    out.mkdir(parents=True, exist_ok=True)
    print(f"ADA: {cfg.augment.recipe} examples of {cfg.augment.ratio:.0%} of the training set "
          f"(pool cache {cache / 'ada'})", file=sys.stderr)
    ray = _init_ray(None) if cfg.augment.actors > 0 else None
    try:
        cfg, info = prepare_trial(cfg, out, Generator(FolderCache(cache / "ada"), paths))
    finally:
        if ray is not None:
            ray.shutdown()
    print(f"ADA: {int(info['ada_examples'])} adversarial examples added from pool {info['ada_pool']}", file=sys.stderr)
    return cfg


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from distat.config import load_trial_config
    from distat.training import check_resumable, latest_checkpoint, list_checkpoints, run_trial

    overrides = dict(_parse_override(s) for s in args.set or [])
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    cfg = load_trial_config(args.config, overrides)
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise DistatError(f"output_dir {out}: is a file, not a folder")
    ckpt_root = out / "checkpoints"
    resume_from = None
    if args.resume:
        resume_from = latest_checkpoint(ckpt_root)
        if resume_from is None:
            print(f"no checkpoint in {ckpt_root}: starting from scratch", file=sys.stderr)
        else:
            check_resumable(resume_from, cfg)  # another backbone or method: refused before anything loads
    elif list_checkpoints(ckpt_root) and not args.overwrite:
        raise DistatError(f"{out} already holds checkpoints: pass --resume to continue or --overwrite to start over")

    if cfg.augment is not None and cfg.augment.ratio > 0:
        cfg = _prepare_ada(cfg, out, args)

    bar = tqdm(desc="train", unit="step", disable=args.quiet or not sys.stderr.isatty(), leave=False)

    def on_start(info: dict[str, Any]) -> None:
        print(f"distat train: {cfg.method.label} on {cfg.data.path} ({info['train_examples']} train / "
              f"{info['dev_examples']} dev), backbone {cfg.model.backbone}, {info['device']}, "
              f"{cfg.train.epochs} epoch(s) x {info['steps_per_epoch']} steps -> {out}", file=sys.stderr)
        bar.total = info["steps_per_epoch"]

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")

    def on_epoch_end(metrics: dict[str, float], ckpt: Path | None) -> None:
        bar.reset()
        shown = "  ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
        print(f"epoch {int(metrics['epoch'])}: {shown}", file=sys.stderr)

    augment_fn, per_epoch = None, 0
    if cfg.augment is not None and cfg.augment.iterative_n > 0:
        from distat.augment.ada import iterative_augmenter

        _, paths = _attack_paths(args, cfg.augment.recipe)
        augment_fn, per_epoch = iterative_augmenter(cfg, paths, out), cfg.augment.iterative_n
    result = run_trial(cfg, resume_from=resume_from, on_epoch_end=on_epoch_end, on_step=on_step, on_start=on_start,
                       augment_fn=augment_fn, augment_rows_per_epoch=per_epoch)
    bar.close()
    summary = {"method": cfg.method.label, **result.metrics, "diverged": result.diverged,
               "checkpoint": str(result.checkpoint) if result.checkpoint else None}
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"final": summary, "history": result.history}, indent=2))
    if result.diverged:
        print("trial diverged (non-finite loss); metrics are those of the last good epoch", file=sys.stderr)
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:<{width}}  {_fmt(value)}")
    return 0


def _shared_data() -> Path | None:
    path = Path(os.environ.get("DISTAT_SHARED_DATA", "../shared/data"))
    return path if path.is_dir() else None


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in (args.resource or []) if "=" in item)


def cmd_resources(args: argparse.Namespace) -> int:
    from distat.attacks import resources

    cache = resources.cache_dir(args.cache_dir)
    if args.action == "build":
        shared = Path(args.shared_data) if args.shared_data else _shared_data()
        lexical = Path(args.lexical) if args.lexical else (shared / "lexical" if shared else None)
        options = resources.BuildOptions(lexical_dir=lexical, shared_data=shared, mlm_steps=args.mlm_steps,
                                         extra_text=tuple(Path(p) for p in args.text or []))
        parts = args.parts or list(resources.BUILDERS)
        print(f"distat resources: building {', '.join(parts)} into {cache}", file=sys.stderr)
        built = resources.build(cache, parts=parts, overrides=_overrides(args), options=options, force=args.force)
        for part, path in built.items():
            print(f"{part:<11} {path}")
        return 0
    report = resources.show(cache, _overrides(args))
    width = max(len(k) for k in report)
    for name, entry in report.items():
        mark = "ok     " if entry["present"] else "MISSING"
        print(f"{name:<{width}}  {mark}  {entry['path']}\n{'':<{width}}           {entry['note']}")
    return 0 if all(e["present"] for e in report.values()) else 1


def cmd_attack(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from distat.attacks.evaluate import robust_evaluate, select_examples
    from distat.attacks.metrics import export_adversarial_tsv, write_records_csv
    from distat.attacks.recipes import RECIPES, AttackOptions
    from distat.attacks.runner import AttackJob
    from distat.data import load_dataset
    from distat.models import load_classifier, load_tokenizer, pick_device, resolve_backbone

    if args.recipe not in RECIPES:
        raise DistatError(f"unknown attack recipe {args.recipe!r} (choose from {', '.join(RECIPES)})")
    if args.n is not None and args.n <= 0:
        raise DistatError("--n must be positive")
    if args.actors < 0:
        raise DistatError("--actors must be 0 (attack in this process) or more")
    for flag, target in (("--csv", args.csv), ("--export", args.export)):
        # the folder is created when the file is written; refuse only what can never be written
        if target and (Path(target).is_dir() or any(p.is_file() for p in Path(target).expanduser().resolve().parents)):
            raise DistatError(f"{flag} {target}: not a writable file path (a folder, or below a file)")
    _, paths = _attack_paths(args, args.recipe)
    ds = load_dataset(args.data, splits=[args.split])
    split = ds.split(args.split)
    model_dir = resolve_backbone(args.model)
    tokenizer = load_tokenizer(model_dir)
    model = load_classifier(model_dir, ds.num_labels).to(pick_device(args.device)).eval()
    examples = select_examples(split, args.n, args.seed)
    options = AttackOptions(max_candidates=args.max_candidates, max_modify_rate=args.max_modify_rate,
                            query_budget=args.query_budget, sim_threshold=args.sim_threshold)
    job = AttackJob(recipe=args.recipe, resources=paths, options=options, text_fields=ds.text_fields,
                    max_length=args.max_length, seed=args.seed)
    print(f"distat attack: {args.recipe} on {len(examples)} examples of {args.data}:{args.split}, "
          f"{args.actors or 'no'} actor(s)", file=sys.stderr)
    bar = tqdm(total=len(examples), desc=args.recipe, unit="ex", disable=args.quiet)
    ray = None
    if args.actors > 0:
        import ray

        ray.init(address=args.address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 **({} if args.address else {"num_cpus": max(args.actors, 1)}))
    try:
        metrics, records = robust_evaluate(model, tokenizer, examples, job, actors=args.actors,
                                           gpus_per_actor=args.gpus_per_actor,
                                           progress=lambda done, total: bar.update(done - bar.n))
    finally:
        bar.close()
        if ray is not None:
            ray.shutdown()
    if args.csv:
        write_records_csv(records, args.csv)
    if args.export:
        pair = len(ds.text_fields) > 1
        n = export_adversarial_tsv(records, args.export, text_field=ds.text_fields[-1],
                                   other_field=ds.text_fields[0] if pair else None)
        print(f"wrote {n} adversarial examples to {args.export}", file=sys.stderr)
    rows = metrics.as_dict()
    for key in ("n", "clean_acc", "robust_acc", "attack_success_rate", "perturbed_word_pct", "avg_queries",
                "skipped", "failed", "succeeded"):
        ci = f"  [{rows[key + '_lo']:.3f}, {rows[key + '_hi']:.3f}]" if f"{key}_lo" in rows else ""
        value = int(rows[key]) if key in ("n", "skipped", "failed", "succeeded") else rows[key]
        print(f"{key:<20} {_fmt(value)}{ci}")
    return 0


def cmd_static(args: argparse.Namespace) -> int:
    from distat.attacks.static import load_static_set, static_eval
    from distat.models import load_classifier, load_tokenizer, resolve_backbone

    split = load_static_set(args.data, args.split, num_labels=args.num_labels)
    model_dir = resolve_backbone(args.model)
    num_labels = args.num_labels or max(2, max(split.labels) + 1)
    model = load_classifier(model_dir, num_labels)
    result = static_eval(model, load_tokenizer(model_dir), split, max_length=args.max_length)
    for key, value in result.items():
        print(f"{key:<14} {_fmt(value)}")
    return 0


def _init_ray(address: str | None) -> Any:
    import ray

    from distat.search.tuner import ray_env_defaults

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray_env_defaults(local=address is None)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=True,
                 logging_level=logging.ERROR)
    except (ConnectionError, ValueError) as e:  # no cluster at that address, or a malformed address
        where = f"at {address}" if address else "(local)"
        raise DistatError(f"cannot start or reach the Ray cluster {where}: {type(e).__name__}: "
                          f"{(str(e).strip().splitlines() or [''])[0][:200]}") from None
    if address:
        from distat.search.leaks import release_leaked

        release_leaked()  # CPUs/GPUs a killed driver's job leaked would stall this search (see leaks.py)
    return ray


def _progress_callback(total: int) -> Any:
    from ray.tune import Callback

    class TrialProgress(Callback):
        """One line per trial event on stderr: Tune's own table is too noisy for a terminal."""

        def __init__(self, total: int) -> None:
            self.total, self.done = total, 0

        def on_trial_start(self, iteration, trials, trial, **info):
            params = {k: v for k, v in trial.config.items() if not k.startswith("__")}
            print(f"  start   {trial.trial_id}  {params}", file=sys.stderr)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("phase") != "final" and "epoch" in result:
                print(f"  epoch   {trial.trial_id}  epoch {int(result['epoch'])}  "
                      f"clean_acc {result.get('clean_acc', float('nan')):.4f}", file=sys.stderr)

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            tag = "DIVERGED" if r.get("diverged") else ""
            print(f"  done    {trial.trial_id}  clean_acc {r.get('clean_acc', float('nan')):.4f}  robust_acc "
                  f"{r.get('robust_acc', float('nan')):.4f}  ({self.done}/{self.total}) {tag}", file=sys.stderr)

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"  ERROR   {trial.trial_id}: see {trial.local_path}", file=sys.stderr)

        def __reduce__(self):  # the experiment snapshot pickles callbacks: rebuild, don't pickle the class
            return (_progress_callback, (self.total,))

    return TrialProgress(total)


def _print_front(points: list[Any], files: dict[str, Path], tracking_uri: str) -> None:
    from distat.tracking.pareto import front_table, hypervolume, non_dominated

    if not points:
        print("no trial finished: nothing on the Pareto front (see the trial errors above)")
        return
    table = front_table(points)
    on_front = [p for p, f in zip(points, non_dominated(points), strict=True) if f]
    print(f"Pareto front ({len(on_front)} of {len(points)} trials, hypervolume {hypervolume(points):.4f}):")
    below = [p.trial_id for p in points if p.infeasible and not p.diverged]
    diverged = [p.trial_id for p in points if p.diverged]
    if below:
        print(f"  left out, below the clean-accuracy floor: {', '.join(below)}")
    if diverged:
        print(f"  left out, diverged: {', '.join(diverged)}")
    shown = ("trial_id", "clean_acc", "robust_acc", "static_robust_acc", "ada_examples")
    cols = [c for c in table.columns if c in shown or c.startswith("param.")]
    print(table[table["on_front"]][cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if "static_robust_acc" in table.columns:
        print("robust_acc: targeted evaluation (a new attack on each model); static_robust_acc: the ADA victim's "
              "adversarial examples reused for every model (overstates robustness)")
    for kind, path in files.items():
        print(f"{kind}: {path}")
    from distat.tracking.mlflow import redact

    print(f"open it in MLflow: mlflow ui --backend-store-uri {redact(tracking_uri)}")


def _tracking_uri(arg: str | None) -> str:
    from distat.tracking.mlflow import default_tracking_uri

    return arg or default_tracking_uri()


def _fs_path(value: str, what: str) -> Path:
    """A filesystem path from the command line; a URI (``s3://``, ``gs://``...) is refused: every node reads and
    writes these folders as files, so they must be a path on a filesystem all nodes mount (NFS, EFS, a PVC)."""
    if "://" in value:
        scheme = value.split("://", 1)[0]
        raise DistatError(f"{what} {value!r} is a {scheme}:// URI: distat needs a shared filesystem path "
                          "(mounted at the same place on every node, e.g. /mnt/efs/searches), not an object store")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise DistatError(f"{what} {value}: is a file, not a folder")
    return path


def _warn_credentials(uri: str) -> None:
    from distat.tracking.mlflow import redact

    if redact(uri) != uri:
        print(f"distat: warning: the tracking URI {redact(uri)} holds credentials, and distat stores the URI in "
              "the search folder: prefer MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD", file=sys.stderr)


def _stopped_early(grid: Any, num_samples: int) -> bool:
    """Whether Tune returned before the search's end: it catches Ctrl-C (SIGINT) itself, saves its state and
    returns normally, leaving trials unfinished or unstarted."""
    return len(grid) < num_samples or grid.num_terminated + grid.num_errors < len(grid)


def _interrupted(search_dir: Path) -> int:
    print(f"distat: interrupted; finished trials and checkpoints are kept: continue with `distat resume "
          f"{search_dir}`", file=sys.stderr)
    return EXIT_INTERRUPTED


def cmd_search(args: argparse.Namespace) -> int:
    from distat.attacks import resources
    from distat.search.space import describe, load_search_config
    from distat.search.tuner import check_cluster_fits, check_new_search, finish_search, start_search
    from distat.tracking.mlflow import Tracker, check_reachable

    storage = _fs_path(args.storage, "--storage").resolve()
    if args.cache_dir:
        _fs_path(args.cache_dir, "--cache-dir")
    cache = resources.cache_dir(args.cache_dir)
    scfg = load_search_config(args.config)
    uri = _tracking_uri(args.tracking_uri)
    overrides = _overrides(args)
    _check_attack_resources(cache, overrides, scfg.attack.recipe)
    check_new_search(storage / scfg.name)
    check_reachable(uri)  # an unreachable server fails here, before Ray starts
    ray = _init_ray(args.address)
    try:
        # nothing is written (search folder, MLflow runs) before the cluster is known to fit one trial
        check_cluster_fits(scfg, wait_s=_JOIN_GRACE_S if args.address else 0.0)
        Tracker(uri, scfg.name, storage / scfg.name)  # the experiment and the parent run
        _warn_credentials(uri)
        print(describe(scfg), file=sys.stderr)
        grid = start_search(scfg, storage=storage, tracking_uri=uri, cache_dir=cache, resource_overrides=overrides,
                            callbacks=[_progress_callback(scfg.search.num_samples)])
        if _stopped_early(grid, scfg.search.num_samples):
            return _interrupted(storage / scfg.name)
        points, files = finish_search(scfg, storage / scfg.name, uri)
    finally:
        ray.shutdown()
    _print_front(points, files, uri)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from distat.search.tuner import check_cluster_fits, finish_search, load_state, resume_search, update_state
    from distat.tracking.mlflow import check_reachable

    search_dir = _fs_path(args.search_dir, "search folder").resolve()
    cache = _fs_path(args.cache_dir, "--cache-dir").resolve() if args.cache_dir else None
    spec, scfg = load_state(search_dir)
    uri = args.tracking_uri or spec["tracking_uri"]
    cache_dir = str(cache) if cache is not None else spec["cache_dir"]
    _check_attack_resources(Path(cache_dir), spec.get("resource_overrides") or {}, scfg.attack.recipe)
    check_reachable(uri)
    ray = _init_ray(args.address)
    try:
        check_cluster_fits(scfg, wait_s=_JOIN_GRACE_S if args.address else 0.0)
        update_state(search_dir, tracking_uri=uri, cache_dir=cache_dir)  # the trials and the MLflow callback read it

        def restarting(gone: list[str]) -> None:
            print(f"distat resume: {search_dir} has no Tune experiment state (the driver stopped before Tune "
                  f"saved any): starting the search afresh in place"
                  + (f", removed {len(gone)} unfinished trial folder(s)" if gone else ""), file=sys.stderr)

        grid = resume_search(search_dir, callbacks=[_progress_callback(scfg.search.num_samples)],
                             on_restart=restarting)
        if _stopped_early(grid, scfg.search.num_samples):
            return _interrupted(search_dir)
        points, files = finish_search(scfg, search_dir, uri)
    finally:
        ray.shutdown()
    _print_front(points, files, uri)
    return 0


def cmd_pareto(args: argparse.Namespace) -> int:
    from distat.search.tuner import load_state, trial_points
    from distat.tracking.pareto import write_artifacts

    search_dir = _fs_path(args.search_dir, "search folder").resolve()
    spec, scfg = load_state(search_dir)
    points = trial_points(search_dir, scfg.search.clean_acc_floor)
    if not points:
        raise DistatError(f"{search_dir}: no finished trial yet")
    _print_front(points, write_artifacts(points, search_dir / "pareto"), spec["tracking_uri"])
    return 0


def _attack_paths(args: argparse.Namespace, recipe: str) -> tuple[Path, Any]:
    """The resource cache of ``--cache-dir`` and its resolved paths (``--resource`` overrides applied),
    after checking that ``recipe`` finds everything it needs there."""
    from distat.attacks import resources

    cache, overrides = resources.cache_dir(args.cache_dir), _overrides(args)
    _check_attack_resources(cache, overrides, recipe)
    return cache, resources.resolve(cache, overrides)


def _check_attack_resources(cache: Path, overrides: dict[str, str], recipe: str) -> None:
    from distat.attacks import resources

    report = resources.show(cache, overrides)
    needed = {"pwws": ["wordnet"], "textfooler": ["wordnet", "word_vectors", "sentence_encoder", "pos_model"],
              "textbugger": ["wordnet", "word_vectors", "sentence_encoder"],
              "bae": ["wordnet", "mlm", "sentence_encoder", "pos_model"]}.get(recipe, [])
    missing = [name for name in needed if not report[name]["present"]]
    if missing:
        raise DistatError(f"attack {recipe} needs {', '.join(missing)} in {cache}: run `distat resources build`")


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
    resource_flags(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("resume", help="continue a search whose driver stopped (Ctrl-C, SIGKILL, lost node)")
    p.add_argument("search_dir")
    p.add_argument("--address", help="an existing Ray cluster, e.g. auto (default: start a local one)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI, if it moved (default: the one the search started "
                                          "with; a new one is saved in the search folder)")
    p.add_argument("--cache-dir", help="attack-resource cache, if it moved (default: the one the search started "
                                       "with; a new one is saved in the search folder)")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("pareto", help="print a search's Pareto front and rewrite its CSV/PNG/HTML")
    p.add_argument("search_dir")
    p.set_defaults(func=cmd_pareto)
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
