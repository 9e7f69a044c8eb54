"""Shared test fixtures: running the launcher as a user would, fake GPUs, free ports."""
from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tau2_run_local.host import port_is_free
from tau2_run_local.plan import Host, endpoint_url, this_machine
from tau2_run_local.planner import build_plan
from tau2_run_local.readiness import serves
from tau2_run_local.settings import parse_request

# Offline, as the launcher runs: litellm (imported with tau2) must not try to fetch its cost map.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
# Tests send the launcher SIGINT (Ctrl-C). A suite started in the background inherits SIGINT ignored,
# which the launcher rightly keeps ignored; a handler here makes the launchers it starts get the default.
signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "run_local.py"
STANDIN = ROOT / "tests" / "standin"
TINY_MODEL = ROOT / "models" / "smollm2-135m"
TOOL_MODEL = ROOT / "models" / "qwen2.5-coder-0.5b"  # `make tool-model`: calls tools as bare JSON


# `make test` runs the suite in worker processes (pytest-xdist), each test wherever a worker is free, except
# the tests of these modules: each module's tests in one worker, one after another, handed out first:
#   test_slurm       one emulated cluster for the run, on fixed network-namespace names (rlc-*)
#   test_real_vllm   real vLLM takes the CPU, and its tests count every vLLM process of the tiny model
#   test_report      the two launcher runs its tests share (a module fixture) made once; one Chromium at a time
# (Declared here, not as xdist_group marks: pytest 9.2's node ids drop the group xdist 3.8 adds to them,
# pytest-xdist issue 1386.)
ONE_WORKER_MODULES = ("tests/test_slurm.py", "tests/test_real_vllm.py", "tests/test_report.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ModulesInOneWorker(LoadScopeScheduling):
        """Every test a work unit of its own, but a module of ONE_WORKER_MODULES one unit; the units with
        the most tests are handed out first."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in ONE_WORKER_MODULES else nodeid

    return ModulesInOneWorker(config, log)


def standin_env(**faults: str) -> dict[str, str]:
    """Environment under which the launcher's `python -m vllm.entrypoints...` runs the stand-in
    (STANDIN_<NAME> variables from `faults`)."""
    return {"PYTHONPATH": str(STANDIN), **{f"STANDIN_{k.upper()}": v for k, v in faults.items()}}


def launcher_args(tmp: Path, *extra: str) -> list[str]:
    """A launcher run with everything it writes under tmp; the stand-in plays agent and user."""
    model = tmp / "ckpt"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    return ["--agent-model", str(model), "--served-model-name", "standin", "--user-llm", "standin",
            "--output-dir", str(tmp / "out"), "--log-dir", str(tmp / "logs"),
            "--model-config-path", str(tmp / "model_config_local.json"), *extra]


class Standins:
    """Stand-in servers started directly: endpoints that are 'already up', each serving one name with
    its own STANDIN_<NAME> settings (faults, an orchestrator's habits)."""

    def __init__(self) -> None:
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, name: str = "standin", port: int | None = None, key: str = "", **env: str) -> int:
        """A stand-in serving `name`, requiring `key` (VLLM_API_KEY) if one is given."""
        port = port or free_port()
        self.procs[port] = subprocess.Popen(
            [sys.executable, str(STANDIN / "standin_server.py"), "--model", name, "--host", "127.0.0.1",
             "--port", str(port)], env={**os.environ, "STANDIN_QUIET": "1", **({"VLLM_API_KEY": key} if key else {}),
                                        **{f"STANDIN_{k.upper()}": v for k, v in env.items()}},
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not serves(endpoint_url("127.0.0.1", port), name, key=key):
            assert time.monotonic() < deadline, "stand-in did not start"
            time.sleep(0.1)
        return port

    def stop(self, port: int) -> None:
        proc = self.procs.pop(port)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    @staticmethod
    def stats(port: int) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
            return json.load(response)


@pytest.fixture
def standins():
    servers = Standins()
    yield servers
    for port in list(servers.procs):
        servers.stop(port)


def cpu_plan(*argv: str):
    """A plan built the pure way (no GPU, no process), for tests that need one without running it."""
    request = parse_request(["--agent-model", "/ckpt", *argv], {})
    return build_plan(request, Host(this_machine(()), iter(range(1900, 2000)), "/cache"))


# Ports the tests pick lie below the kernel's ephemeral range (32768-60999 by default), a block of its own for
# each pytest-xdist worker: the kernel never hands one of them to another process's bind(0) or connection while
# a test's server is still starting, stopped for a restart at the same port, or only expected there.
TEST_PORTS, PORTS_PER_WORKER = range(20000, 32000), 2000
_port_picks = random.Random()  # its own: a test seeding `random` must not make every run pick the same ports


def free_port(count: int = 1) -> int:
    """A port free now, and the count - 1 after it too (a launcher given --start-port PORT and N servers takes
    PORT to PORT+N-1), checked as the launcher checks them, from this worker's block of TEST_PORTS."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    blocks = len(TEST_PORTS) // PORTS_PER_WORKER
    first = TEST_PORTS.start + (int(worker) if worker.isdigit() else 0) % blocks * PORTS_PER_WORKER
    for _ in range(50):
        port = _port_picks.randrange(first, first + PORTS_PER_WORKER - count + 1)
        if all(port_is_free("127.0.0.1", port + i) for i in range(count)):
            return port
    raise RuntimeError(f"no {count} free ports in a row from {first}")


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


def word_tokenizer_model(folder: Path) -> Path:
    """A checkpoint folder with no weights whose tokenizer counts words and whose chat template writes each
    message and the tools: enough for the launcher to count a first turn's tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(folder / "tokenizer.json"))
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{{ tools | tojson }}"
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "chat_template": template}))
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
    return folder


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A folder that passes the launcher's model checks (config.json present)."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder
