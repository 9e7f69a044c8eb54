"""Simulations in worker processes score exactly as in one process; a worker that dies takes nothing
into the score; the concurrency follows vLLM's gauges. Real τ²-bench against stand-in servers already
up (tests/standin), whose rewards are known (tests/standin/known_rewards.py)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import LAUNCHER, ROOT, STANDIN

sys.path.insert(0, str(STANDIN))
from known_rewards import expected_reward  # noqa: E402  (tests/standin/, on sys.path above)

from tau2_run_local.concurrency import Concurrency, make_concurrency, vllm_gauges
from tau2_run_local.endpoint_file import write_model_config
from tau2_run_local.plan import Host, endpoint_url
from tau2_run_local.planner import build_plan
from tau2_run_local.settings import parse_request

DOMAIN, TASKS, MAX_STEPS = "retail", 8, 60
FAILED = "retail/3,retail/8"  # the stand-in agent does not solve these: rewards are not all 1


def launcher(tmp: Path, ports: list[int], *extra: str) -> list[str]:
    config = tmp / "model_config_local.json"
    write_model_config(config, {"standin": [endpoint_url("127.0.0.1", p) for p in ports]})
    return [sys.executable, str(LAUNCHER), "--skip-server-start", "--model-config-path", str(config),
            "--user-llm", "standin", "--domains", DOMAIN, "--num-tasks", str(TASKS), "--max-steps",
            str(MAX_STEPS), "--output-dir", str(tmp / "out"), "--log-dir", str(tmp / "logs"), *extra]


def results(tmp: Path) -> dict[str, float]:
    sims = json.loads((tmp / "out" / f"{DOMAIN}.json").read_text())["simulations"]
    assert len({s["task_id"] for s in sims}) == len(sims), "a simulation written twice"
    return {s["task_id"]: s["reward_info"]["reward"] for s in sims}


def known(task_ids) -> dict[str, float]:
    return {t: expected_reward(DOMAIN, t, FAILED.split(","), max_steps=MAX_STEPS) for t in task_ids}


def worker_pids(launcher_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(launcher_pid), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_worker_processes_route_and_score_as_one_process_and_a_dead_one_costs_no_score(tmp_path: Path, standins):
    """Known rewards are what one process scores (test_faults and test_launcher hold it to them). Two
    workers over two servers: the coordinator still routes (conversations even over the servers, the
    in-flight cap held); one worker killed mid-run leaves its simulations undone, never scored 0, and a
    rerun of the same command finishes them."""
    ports = [standins.start(FAIL_TASKS=FAILED, TOKEN_DELAY="0.005"), standins.start(FAIL_TASKS=FAILED)]
    cmd = launcher(tmp_path, ports, "--max-concurrency", "4", "--workers", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    saved = tmp_path / "out" / f"{DOMAIN}.json"
    deadline = time.monotonic() + 120
    while not (saved.exists() and json.loads(saved.read_text())["simulations"]):  # one finished, 4 in flight
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.kill(worker_pids(proc.pid)[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr + stdout  # incomplete: what the worker held is not scored
    assert "simulation worker process died" in stdout
    scored = results(tmp_path)
    undone = json.loads((tmp_path / "out" / f"{DOMAIN}.not_scored.json").read_text())
    assert undone and all(u["reason"] == "infrastructure" for u in undone)
    assert len(scored) + len(undone) == TASKS and scored == known(scored)  # nothing scored 0 by the death
    assert worker_pids(proc.pid) == []

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr + rerun.stdout
    scored, summary = results(tmp_path), json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(scored) == TASKS and scored == known(scored) and 0 < summary["overall"]["avg_reward"] < 1
    assert json.loads((tmp_path / "out" / f"{DOMAIN}.not_scored.json").read_text()) == []
    assert summary["concurrency"]["workers"] == 2 and summary["concurrency"]["peak_in_flight"] == min(4, len(undone))
    routed = sorted(summary["agent_conversations_per_server"].values())
    assert routed[1] - routed[0] <= 1 and sum(routed) == len(undone)  # the rerun's conversations, evenly
    assert all(standins.stats(p)["conversations"] for p in ports)  # and the servers saw both get some


# -- adaptive concurrency, against a server that shows vLLM's /metrics ---------------------------------

VLLM_METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="qwen"}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="qwen"}} {waiting}
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="qwen"}} {kv}
vllm:num_requests_waiting_by_reason{{engine="0",reason="capacity"}} 99.0
"""


@pytest.fixture
def gauges():
    """A server answering /metrics in vLLM's format with the gauges the test sets."""
    state = {"running": 0.0, "waiting": 0.0, "kv": 0.0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = VLLM_METRICS.format(**state).encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()


def test_vllm_gauges_read_from_metrics(gauges):
    root, state = gauges
    state.update(running=12, waiting=3, kv=0.42)
    assert vllm_gauges(root) == {"running": 12.0, "waiting": 3.0, "kv": 0.42}
    assert vllm_gauges("http://127.0.0.1:9") is None  # nothing there: not steered


def test_concurrency_grows_while_the_server_has_room_and_shrinks_when_it_queues(gauges):
    root, state = gauges
    conc = Concurrency(16, 100, (root,), period=0.0)
    conc.in_flight = 16
    conc.steer(backlog=True)
    assert conc.target == 24  # no request waiting, KV cache nearly empty, every slot taken: +50%
    conc.steer(backlog=False)
    assert conc.target == 24  # nothing left to start: no reason to grow
    conc.in_flight = 10
    conc.steer(backlog=True)
    assert conc.target == 24  # slots still free: the client is the limit, not the target
    for _ in range(5):
        conc.in_flight = conc.target
        conc.steer(backlog=True)
    assert conc.target == 100  # capped at the ceiling
    state.update(waiting=4)
    conc.steer(backlog=True)
    assert conc.target == 100  # one reading with requests queued may be a burst
    conc.steer(backlog=True)
    assert conc.target == 75  # two in a row: -25%
    state.update(waiting=0, kv=0.95)
    conc.steer(backlog=True)
    assert conc.target == 57  # KV cache nearly full: vLLM would preempt
    state.update(kv=0.8)
    conc.steer(backlog=True)
    assert conc.target == 57  # between the marks: hold
    assert [r["target"] for r in conc.readings][-3:] == [75, 57, 57]  # each reading with the target it led to


def test_concurrency_judges_full_slots_over_the_whole_reading_period(gauges):
    """With fast calls one simulation is always just finishing when the servers are read: every slot
    taken right after each start counts, though the reading itself sees one free."""
    root, state = gauges
    conc = Concurrency(24, 164, (root,), period=0.0)
    for _ in range(3):
        conc.in_flight = conc.target  # the loop filled every slot ...
        conc.observe()
        conc.in_flight -= 1  # ... and one finished just before the look
        conc.steer(backlog=True)
    assert [r["target"] for r in conc.readings] == [36, 54, 81] and conc.peak == 54
    conc.in_flight = 40  # slots left free for a whole period: the client is the limit, hold
    conc.observe()
    conc.steer(backlog=True)
    assert conc.target == 81


def test_concurrency_is_fixed_with_max_concurrency_or_without_gauges(gauges):
    root, _ = gauges
    fixed = make_concurrency(build_plan(parse_request(
        ["--skip-server-start", "--max-concurrency", "40", "--workers", "2"], {}),
        Host((), iter(()), "/cache", {"m": ("http://127.0.0.1:1/v1",)})))
    assert (fixed.target, fixed.ceiling, fixed.adaptive) == (40, 40, False)
    plan = build_plan(parse_request(["--skip-server-start"], {}), Host(
        (), iter(()), "/cache", {"m": ("http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1")}, cpus=16))
    adaptive = make_concurrency(plan)
    assert (adaptive.target, adaptive.ceiling, adaptive.adaptive) == (32, 512, True)
    assert plan.eval.workers == 8  # half of 16 CPUs
    assert build_plan(parse_request(["--skip-server-start"], {}), Host(
        (), iter(()), "/cache", {"m": ("http://127.0.0.1:1/v1",)}, cpus=2)).eval.workers == 1
    blind = Concurrency(16, 256, ("http://127.0.0.1:9",), period=0.0)
    blind.in_flight = 16
    blind.steer(backlog=True)
    assert blind.target == 16 and blind.readings == []
