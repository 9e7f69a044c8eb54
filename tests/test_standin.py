"""Tests for the deterministic vLLM stand-in (tests/standin) used by launcher tests/benchmarks."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # before litellm is imported

STANDIN_DIR = Path(__file__).resolve().parent / "standin"


def _load(name: str):
    # by path, so that tests/standin (and its fake ``vllm``) never lands on this process's sys.path
    spec = importlib.util.spec_from_file_location(name, STANDIN_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


known_rewards = _load("known_rewards")

SERVED = "standin"
SOLVED_TASK = "create_task_1"  # mock: 1 gold action, reward basis DB + COMMUNICATE
FAILED_TASK = "update_task_1"  # mock: 1 gold action, listed in STANDIN_FAIL_TASKS
MALFORMED_TASK = "impossible_task_1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int, extra_env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(STANDIN_DIR), env.get("PYTHONPATH")]))
    env["STANDIN_QUIET"] = "1"
    env.update(extra_env or {})
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", "/models/some-model", "--served-model-name", SERVED,
           "--host", "127.0.0.1", "--port", str(port),
           # real vLLM flags the stand-in must accept and ignore
           "--gpu-memory-utilization", "0.9", "--max-model-len", "32768",
           "--enable-auto-tool-choice", "--tool-call-parser", "hermes", "--trust-remote-code"]
    return subprocess.Popen(cmd, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whole group: server + any child it spawned
    proc.wait(timeout=10)
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


def _wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stand-in exited rc={proc.returncode}: {proc.stderr.read()}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise TimeoutError("stand-in did not become healthy")


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = _start(port, {"STANDIN_FAIL_TASKS": FAILED_TASK,
                         "STANDIN_MALFORMED_TOOL_JSON": MALFORMED_TASK})
    try:
        t0 = time.time()
        _wait_healthy(port, proc)
        startup = time.time() - t0
        yield {"port": port, "base": f"http://127.0.0.1:{port}", "startup": startup}
    finally:
        _kill(proc)


def test_endpoints(server):
    base = server["base"]
    assert server["startup"] < 5.0
    assert requests.get(f"{base}/health", timeout=5).status_code == 200
    models = requests.get(f"{base}/v1/models", timeout=5).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == [SERVED]

    r = requests.post(f"{base}/v1/chat/completions", timeout=5,
                      json={"model": SERVED, "messages": [{"role": "user", "content": "Say hi"}]})
    assert r.status_code == 200
    body = r.json()
    assert body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0

    # a wrong model name is rejected like vLLM does
    r = requests.post(f"{base}/v1/chat/completions", timeout=5,
                      json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404

    stats = requests.get(f"{base}/stats", timeout=5).json()
    assert stats["chat_requests"] >= 1
    assert stats["conversations"] == len(stats["conversation_keys"]) >= 1


def test_malformed_tool_json(server):
    """Agent's first turn for a STANDIN_MALFORMED_TOOL_JSON task has unparsable arguments."""
    msgs = [
        {"role": "system",
         "content": "<instructions>\nYou are a customer service agent\n</instructions>\n<policy>\nx\n</policy>"},
        {"role": "assistant", "content": "Hi! How can I help you today?"},
        {"role": "user", "content": f"Hi, I need help. [domain:mock] [task:{MALFORMED_TASK}]"},
    ]
    r = requests.post(f"{server['base']}/v1/chat/completions", timeout=30,
                      json={"model": SERVED, "messages": msgs})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["function"]["name"] == "transfer_to_human_agents"
    with pytest.raises(json.JSONDecodeError):
        json.loads(call["function"]["arguments"])


def test_crash_at_start():
    port = _free_port()
    proc = _start(port, {"STANDIN_CRASH_AT_START": "1"})
    try:
        rc = proc.wait(timeout=15)
        err = proc.stderr.read()
    finally:
        _kill(proc)
    assert rc == 1
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: Engine core initialization failed" in err


def test_tau2_mock_simulations(server):
    """Real tau2 simulations against the stand-in get exactly the predicted rewards."""
    from tau2.run import get_tasks, run_task

    tasks = {t.id: t for t in get_tasks("mock")}
    llm_args = {"api_base": f"{server['base']}/v1", "temperature": 0}
    before = requests.get(f"{server['base']}/stats", timeout=5).json()
    results = {}
    for task_id in (SOLVED_TASK, FAILED_TASK):
        t0 = time.time()
        sim = run_task(domain="mock", task=tasks[task_id], agent="llm_agent", user="user_simulator",
                       llm_agent=f"hosted_vllm/{SERVED}", llm_args_agent=llm_args,
                       llm_user=f"hosted_vllm/{SERVED}", llm_args_user=llm_args, max_steps=30)
        results[task_id] = (sim, time.time() - t0)

    solved, _ = results[SOLVED_TASK]
    failed, _ = results[FAILED_TASK]
    assert known_rewards.expected_reward("mock", SOLVED_TASK, [FAILED_TASK], max_steps=30) == 1.0
    assert known_rewards.expected_reward("mock", FAILED_TASK, [FAILED_TASK], max_steps=30) == 0.0
    assert solved.reward_info.reward == 1.0
    assert failed.reward_info.reward == 0.0
    for sim in (solved, failed):
        assert sim.termination_reason == "user_stop"
        assert sim.messages[-1].content == "###STOP###"
    # the solved run replayed the gold action through a real tool call
    calls = [tc for m in solved.messages if getattr(m, "tool_calls", None) for tc in m.tool_calls]
    assert ([(c.name, c.arguments) for c in calls]
            == [("create_task", {"user_id": "user_1", "title": "Important Meeting"})])

    after = requests.get(f"{server['base']}/stats", timeout=5).json()
    # each simulation = one agent conversation + one user-simulator conversation
    assert after["conversations"] - before["conversations"] == 4
    # solved: user greet, agent tool call, agent text, user STOP; failed: 3 requests
    assert after["chat_requests"] - before["chat_requests"] == 4 + 3


def test_a_key_in_vllm_api_key_guards_the_v1_routes_as_vllm_does():
    """VLLM_API_KEY set: /v1/... answers 401 without `Authorization: Bearer <key>` (or with another key);
    /health and /stats stay open, as vLLM leaves everything outside /v1 open. Unset: nothing is guarded
    (the module's server above)."""
    port = _free_port()
    proc = _start(port, {"VLLM_API_KEY": "the-run-key"})
    base = f"http://127.0.0.1:{port}"
    chat = {"model": SERVED, "messages": [{"role": "user", "content": "Say hi"}]}
    try:
        _wait_healthy(port, proc)
        assert requests.get(f"{base}/v1/models", timeout=5).status_code == 401
        wrong = {"Authorization": "Bearer other"}
        assert requests.get(f"{base}/v1/models", headers=wrong, timeout=5).status_code == 401
        refused = requests.post(f"{base}/v1/chat/completions", json=chat, timeout=5)
        assert (refused.status_code, refused.json()) == (401, {"error": "Unauthorized"})
        key = {"Authorization": "Bearer the-run-key"}
        assert [m["id"] for m in requests.get(f"{base}/v1/models", headers=key, timeout=5).json()["data"]] == [SERVED]
        assert requests.post(f"{base}/v1/chat/completions", json=chat, headers=key, timeout=5).status_code == 200
        stats = requests.get(f"{base}/stats", timeout=5).json()
        assert (stats["unauthorized"], stats["chat_requests"], stats["keyed"]) == (3, 1, True)
    finally:
        _kill(proc)
