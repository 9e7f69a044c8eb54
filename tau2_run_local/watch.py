"""--watch: every checkpoint of a training run evaluated once it is completely written, oldest first, each a
full evaluation of its own; a restarted watch resumes where it stopped.
"""
from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .checks import check_report_to, check_writable_dir
from .errors import UsageError
from .host import WEIGHT_SUFFIXES
from .leaderboard import checkpoint_output, leaderboard_rows, write_leaderboard
from .settings import Request
from .trackers import checkpoint_step
from .tracking import log_folder, open_reporting, request_settings, warn
from .util import now_iso


def find_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under root (a folder with config.json, not searched further), oldest first:
    by the time of the folder's oldest file, which a trainer writes when it starts saving."""
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if Path(folder) != root and "config.json" in files:
            found.append(Path(folder))
            subdirs[:] = []
    return sorted(found, key=lambda c: (oldest_file_time(c), natural_key(c.name)))


def oldest_file_time(folder: Path) -> float:
    times = [f.stat().st_mtime for f in folder.iterdir() if f.is_file()]
    return min(times, default=folder.stat().st_mtime)


def natural_key(name: str) -> list[Any]:
    """checkpoint-900 before checkpoint-1000."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def has_complete_weights(folder: Path) -> bool:
    """Weights are there: every shard an index names, or else at least one weights file."""
    indexes = list(folder.glob("*.index.json"))
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        if not all((folder / shard).is_file() for shard in shards):
            return False
    return bool(indexes) or any(f.name.endswith(WEIGHT_SUFFIXES) for f in folder.iterdir() if f.is_file())


def checkpoint_state(folder: Path, quiet_s: float, now: float) -> str:
    """'writing' (a file changed within quiet_s), 'incomplete' (quiet but weights missing) or 'ready'."""
    try:
        newest = max((f.stat().st_mtime for f in folder.rglob("*") if f.is_file()), default=0.0)
        if now - newest < quiet_s:
            return "writing"
        return "ready" if has_complete_weights(folder) else "incomplete"
    except OSError:  # a file vanished while we looked: the trainer is still at it
        return "writing"


def evaluated(folder: Path, domains: Sequence[str]) -> bool:
    """An earlier watch finished this checkpoint: every domain asked for is complete."""
    try:
        done = json.loads((folder / "summary.json").read_text())["domains"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all(done.get(d, {}).get("status") == "complete" for d in domains)


def watch_checkpoints(request: Request, argv: Sequence[str], console: Any,
                      evaluate: Callable[[Request, Sequence[str], Any], int], secrets: Sequence[str] = ()) -> int:
    """--watch DIR: evaluate each settled checkpoint once, oldest first, restarting the servers for each
    (a full run of its own, into <output-dir>/<checkpoint>/). A checkpoint already complete there is not
    run again, so a restarted watch resumes where it stopped. With --report-to, the whole watch is one
    tracker run in --output-dir, each evaluated checkpoint a point at its training step."""
    assert request.watch  # cli calls it only for --watch
    root, out = Path(request.watch), Path(request.output_dir)
    if not root.is_dir():
        raise UsageError(f"--watch {root}: no such directory")
    if request.skip_server_start or any(a.split("=")[0] == "--agent-model" for a in argv):
        raise UsageError("--watch picks the checkpoints and starts their servers; drop --agent-model "
                         "and --skip-server-start")
    if request.watch_interval <= 0:
        raise UsageError(f"--watch-interval must be positive, not {request.watch_interval}")
    check_writable_dir(out, "--output-dir")
    check_report_to(request.report_to)
    reporting = open_reporting(request, out, request_settings(request), secrets)
    tried: dict[Path, int] = {}  # this watch's runs and their exit codes
    said: dict[Path, str] = {}
    try:
        while True:
            ckpts = find_checkpoints(root)
            now = time.time()
            states = {}
            for order, ckpt in enumerate(ckpts):
                folder = checkpoint_output(out, root, ckpt)
                states[ckpt] = ("evaluated" if evaluated(folder, request.domains) else
                                f"failed (exit {tried[ckpt]})" if ckpt in tried else
                                checkpoint_state(ckpt, request.watch_interval, now))
                if states[ckpt] in ("writing", "incomplete") and said.get(ckpt) != states[ckpt]:
                    console.print(f"{now_iso()} {ckpt}: "
                                  f"{'still being written' if states[ckpt] == 'writing' else 'weights incomplete'}; "
                                  "skipped until it settles", markup=False)
                said[ckpt] = states[ckpt]
                if states[ckpt] == "evaluated":
                    log_folder(reporting, checkpoint_step(str(ckpt.relative_to(root)), order), folder)
            write_leaderboard(out, leaderboard_rows(out, root, ckpts, states), request.domains)
            ready = [c for c in ckpts if states[c] == "ready"]
            if ready:
                ckpt = ready[0]
                folder = checkpoint_output(out, root, ckpt)
                console.print(f"{now_iso()} evaluating checkpoint {ckpt} into {folder}", markup=False)
                sub = replace(request, agent_model=str(ckpt), output_dir=str(folder), watch=None, report_to=())
                tried[ckpt] = evaluate(sub, [*argv, "--agent-model", str(ckpt), "--output-dir", str(folder)], console)
                if tried[ckpt] in (2, 130):  # bad input holds for every checkpoint; Ctrl-C stops the watch
                    write_leaderboard(out, leaderboard_rows(out, root, ckpts, states), request.domains)
                    return tried[ckpt]
                continue
            if request.watch_once and "writing" not in states.values():
                return 1 if any(code != 0 for code in tried.values()) else 0
            time.sleep(min(request.watch_interval, 10.0))
    except KeyboardInterrupt:
        print("run_local.py: watch stopped; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        warn(reporting.close())
