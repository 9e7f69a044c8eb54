"""The command line's entry: the request read at the edge, one of --compare, --watch or an evaluation, and
the one exit path shared by run_local.py, `python -m tau2_run_local` and `run-local`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from .app import evaluate_checkpoint, install_signal_handlers
from .compare import compare_outputs
from .errors import UsageError
from .settings import parse_request
from .util import secret_values
from .watch import watch_checkpoints


def main(argv: Sequence[str] | None = None) -> int:
    os.umask(0o077)  # every file and folder the launcher (and what it starts) writes is its owner's alone
    argv = list(sys.argv[1:] if argv is None else argv)
    request = parse_request(argv, os.environ)
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        if request.compare:
            return compare_outputs(request, console)
        if request.watch:
            install_signal_handlers()  # Ctrl-C and SIGTERM stop the watch and its evaluation alike
            return watch_checkpoints(request, argv, console, evaluate_checkpoint,
                                     secret_values(dict(os.environ), argv))
    except UsageError as exc:
        print(f"run_local.py: error: {exc}", file=sys.stderr)
        return 2
    return evaluate_checkpoint(request, argv, console)


def run() -> None:
    """The one way out, for run_local.py, `python -m tau2_run_local` and the run-local script alike. Every
    server is already stopped (the fleet's with-block); simulation threads still waiting on a dead
    server must not hold the exit, so the process ends here after flushing."""
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
