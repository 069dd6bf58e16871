"""One convention for every command-line tool of the project (shard, synth, peek, run, export, flops, the
benchmarks): how a tool ends, and what its exit status means.

    0   done
    1   findings: the tool ran and found problems (too many rejected inputs, a failed verify)
    2   an error: usage, configuration, data, resource or numeric (a non-finite loss); one message naming
        the file, key or step, no traceback
    75  pre-empted (EX_TEMPFAIL): a checkpoint was saved, rerun to continue (SLURM requeues on it)
    130 interrupted (Ctrl-C)

Importing this module first also keeps a script run by path (``python pipeline/peek.py``) from shadowing
libraries: Python puts the script's folder first on ``sys.path``, where ``pipeline/datasets/`` would hide
the ``datasets`` package that accelerate and transformers import.
"""
from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130


def _unshadow() -> None:
    """Drop a script's own folder from sys.path when the script was run by path from a package folder."""
    if not (sys.path and sys.argv and sys.argv[0]):
        return
    first, script_dir = Path(sys.path[0] or ".").resolve(), Path(sys.argv[0]).resolve().parent
    if first == script_dir and (first / "__init__.py").is_file():
        del sys.path[0]


_unshadow()

from pipeline.errors import ConfigError, DataError, NumericError, ResourceError, W3Error  # noqa: E402

_KIND = ((ConfigError, "config error"), (DataError, "data error"), (ResourceError, "resource error"),
         (NumericError, "numeric error"))


def describe(err: W3Error) -> str:
    """'config error: <message>' and so on: the kind tells the user what to fix (setting, input, machine)."""
    kind = next((name for cls, name in _KIND if isinstance(err, cls)), "error")
    return f"{kind}: {err}"


def run(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None,
        prog: str | None = None) -> int:
    """Call ``main(argv)`` and turn the project's errors into exit status 2 with a one-line message.

    OSError (a full disk, a permission) is a resource error too: its text names the path.
    """
    name = prog or Path(sys.argv[0]).name
    try:
        return int(main(argv))
    except W3Error as err:
        print(f"{name}: {describe(err)}", file=sys.stderr)
    except OSError as err:
        print(f"{name}: resource error: {err}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_ERROR


def tool(prog: str) -> Callable[[Callable[[Sequence[str] | None], int]], Callable[[Sequence[str] | None], int]]:
    """Decorate a tool's ``main(argv) -> int`` so that calling it (from Python or as ``sys.exit(main())``)
    follows the convention above."""
    def wrap(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
        @functools.wraps(main)
        def wrapped(argv: Sequence[str] | None = None) -> int:
            return run(main, argv, prog)
        return wrapped
    return wrap
