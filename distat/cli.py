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


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from distat.config import load_trial_config
    from distat.training import latest_checkpoint, list_checkpoints, run_trial

    overrides = dict(_parse_override(s) for s in args.set or [])
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    cfg = load_trial_config(args.config, overrides)
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    resume_from = None
    if args.resume:
        resume_from = latest_checkpoint(ckpt_root)
        if resume_from is None:
            print(f"no checkpoint in {ckpt_root}: starting from scratch", file=sys.stderr)
    elif list_checkpoints(ckpt_root) and not args.overwrite:
        raise DistatError(f"{out} already holds checkpoints: pass --resume to continue or --overwrite to start over")

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

    result = run_trial(cfg, resume_from=resume_from, on_epoch_end=on_epoch_end, on_step=on_step, on_start=on_start)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="distat", description="Search adversarial-training settings.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run one training trial from a YAML config and print its metrics")
    p.add_argument("config", help="trial YAML (see configs/demo.yaml)")
    p.add_argument("--output-dir", help="where checkpoints and metrics go (overrides output_dir)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the output dir")
    p.add_argument("--overwrite", action="store_true", help="start over even if checkpoints exist")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
