"""Stage-1 trainer CLI: `[accelerate launch ...] train/run.py --cfg launch/<exp>.yaml [--set k=v ...]
[--resume auto|best|DIR] [--eval-only]`. Exit status 0, 2 for a configuration/data/resource error, 75 after a pre-emption
(launch/slurm/train.sbatch requeues on it)."""
from __future__ import annotations

import argparse
import sys

from pipeline.errors import W3Error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        from train.config import load_config
        from train.loop import fit
        cfg = load_config(args.cfg, args.overrides)
        resume = args.resume or ("best" if args.eval_only else None)
        return fit(cfg, resume=resume, eval_only=args.eval_only)
    except W3Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
