"""Shared test fixtures: running the launcher as a user would, fake GPUs, free ports."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# Offline, as the launcher runs: litellm (imported with tau2) must not try to fetch its cost map.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "run_local.py"
STANDIN = ROOT / "tests" / "standin"
TINY_MODEL = ROOT / "models" / "smollm2-135m"


def cpu_plan(*argv: str):
    """A plan built the pure way (no GPU, no process), for tests that need one without running it."""
    import run_local as rl
    args = rl.build_parser().parse_args(["--agent-model", "/ckpt", *argv])
    return rl.build_plan(args, rl.this_machine(()), iter(range(1900, 2000)), {}, "/cache")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_launcher(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """`python run_local.py ARGS` in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, str(LAUNCHER), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=timeout)


@pytest.fixture
def fake_gpus(tmp_path: Path):
    """A PATH whose nvidia-smi lists N GPUs, for placement tests on a machine without GPU."""
    def make(count: int) -> dict[str, str]:
        bin_dir = tmp_path / "fakebin"
        bin_dir.mkdir(exist_ok=True)
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\n" + "".join(f"echo {i}\n" for i in range(count)))
        smi.chmod(0o755)
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
        return env
    return make


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder that passes the launcher's model checks (config.json present)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder
