"""Servers as process groups on this machine."""
from __future__ import annotations

import subprocess
from collections.abc import Mapping
from typing import Any

from ..plan import ServerSpec
from .base import group_members, kill_groups, start_process


class LocalExecutor:
    """Servers as process groups on this machine: a signal reaches the server and its engine children."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env

    def launch(self, spec: ServerSpec, out: Any, err: Any, secret_env: Mapping[str, str]) -> subprocess.Popen:
        return start_process(spec, out, err, self.env, secret_env)

    signal = staticmethod(kill_groups)

    @staticmethod
    def alive(proc: subprocess.Popen) -> bool:
        proc.poll()  # reap the leader so a zombie does not count
        return bool(group_members(proc.pid))
