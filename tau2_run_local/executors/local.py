"""executors/local"""
from __future__ import annotations

import subprocess

from .base import group_members, kill_groups, start_process


class LocalExecutor:
    """Servers as process groups on this machine: a signal reaches the server and its engine children."""

    launch = staticmethod(start_process)
    signal = staticmethod(kill_groups)

    @staticmethod
    def alive(proc: subprocess.Popen) -> bool:
        proc.poll()  # reap the leader so a zombie does not count
        return bool(group_members(proc.pid))
