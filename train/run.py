"""Trainer CLI: `[accelerate launch ...] train/run.py --cfg launch/<exp>.yaml [--set k=v ...]
[--resume auto|best|DIR] [--eval-only]`. Exit status (pipeline.cli): 0, 2 for a configuration/data/resource
error, 75 after a pre-emption (launch/slurm/train.sbatch requeues on it)."""
from __future__ import annotations

import argparse
import sys

from pipeline import cli  # first: keeps train/ off sys.path when run by path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", required=True, help="experiment YAML (over launch/defaults.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.max_steps=100 (repeatable)")
    parser.add_argument("--resume", default=None, metavar="auto|best|DIR",
                        help="auto: newest complete checkpoint of out_dir (fresh start if none); best: its best "
                             "one; DIR: a checkpoint folder or a run folder")
    parser.add_argument("--eval-only", action="store_true",
                        help="evaluate a checkpoint (default: out_dir's best) on eval.split with eval.mode's "
                             "protocol, e.g. --set eval.mode=test for the multi-view test protocol")
    return parser.parse_args(argv)


@cli.tool("train/run.py")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from train.config import load_config
    from train.loop import evaluate_checkpoint, fit
    cfg = load_config(args.cfg, args.overrides)
    if args.eval_only:
        return evaluate_checkpoint(cfg, args.resume or "best")
    return fit(cfg, resume=args.resume)

if __name__ == "__main__":
    sys.exit(main())
