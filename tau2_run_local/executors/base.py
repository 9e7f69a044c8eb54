"""The executor interface, and what both executors share: a server started in its own process group that
dies with the launcher, signals to whole groups, and a group's live members read from /proc.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..plan import ServerSpec


def _die_with_parent() -> None:
    """Runs in the child before exec: a server gets SIGTERM if the launcher is killed outright."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc: the whole tree, not kept PIDs."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


class Executor(Protocol):
    """How servers run: as process groups here, or as SLURM job steps. The fleet starts, watches and
    stops servers only through this."""

    def launch(self, spec: ServerSpec, out: Any, err: Any, secret_env: Mapping[str, str]) -> subprocess.Popen:
        """Start one server, secret_env added to its environment; the process returned ends when it ends."""

    def signal(self, procs: Sequence[subprocess.Popen], sig: int) -> None:
        """SIGTERM: ask to stop. SIGKILL: end now, with everything the servers started."""

    def alive(self, proc: subprocess.Popen) -> bool:
        """Is anything of this server still running?"""


def start_process(spec: ServerSpec, out: Any, err: Any, env: Mapping[str, str],
                  secret_env: Mapping[str, str]) -> subprocess.Popen:
    """The server's command in its own process group, sent SIGTERM if the launcher dies outright; env is
    the launcher's environment, which the server's own variables extend, and then secret_env (its key:
    the environment of a process is its owner's alone to read, where its command line is everyone's)."""
    return subprocess.Popen(
        spec.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
        env={**env, **dict(spec.env), "PYTHONUNBUFFERED": "1", **secret_env},
        start_new_session=True, preexec_fn=_die_with_parent)


def kill_groups(procs: Sequence[subprocess.Popen], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
