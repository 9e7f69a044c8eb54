"""Fake ``vllm`` package: runs tests/standin/standin_server.py (tests only, never the product).

Its serve command takes the flags below and no other, as vLLM's does: a flag it does not take is argparse's
error (exit 2), and ``--help=all`` lists the ones it takes in argparse's own format, which the launcher
reads before it starts servers. It reads --model, --served-model-name, --host and --port and ignores the
rest: the flags the launcher passes and those the suite's --vllm-arg values and tests/test_standin.py give.
STANDIN_WITHOUT_FLAGS=--a,--b plays a vLLM without those flags (neither taken nor listed).
"""
from __future__ import annotations

import argparse
import os

__version__ = "0.0.0+standin"
STANDIN = True

VALUE_FLAGS = ("--served-model-name", "--host", "--port", "--tool-call-parser", "--reasoning-parser",
               "--chat-template", "--api-server-count", "--dtype", "--tensor-parallel-size",
               "--gpu-memory-utilization", "--kv-cache-memory-bytes", "--max-model-len", "--api-key",
               "--kv-cache-dtype", "--seed", "--hf-token")
SWITCHES = ("--enable-auto-tool-choice", "--enforce-eager", "--trust-remote-code")


def check_serve_args(argv: list[str], prog: str, model_flag: bool) -> None:
    """Refuse, as vLLM's parser would, a flag the stand-in does not take; print its flags on --help(=all)."""
    without = {f.strip() for f in os.environ.get("STANDIN_WITHOUT_FLAGS", "").split(",") if f.strip()}
    parser = argparse.ArgumentParser(prog=prog)
    for flag in (("--model",) if model_flag else ()) + VALUE_FLAGS:
        if flag not in without:
            parser.add_argument(flag, nargs="+" if flag == "--served-model-name" else None)
    for flag in SWITCHES:
        if flag not in without:
            parser.add_argument(flag, action="store_true")
    parser.parse_args(["--help" if a.startswith("--help=") else a for a in argv])
