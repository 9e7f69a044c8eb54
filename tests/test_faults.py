"""A fault of the machinery is never a score. The launcher runs real τ²-bench against stand-in servers
that fail on demand (tests/standin: 429 with Retry-After, 500 for a window, reset connections, hangs),
on the user-simulator side and on the agent side, with one endpoint and two. The stand-in agent's
rewards are known (tests/standin/known_rewards.py): every simulation written must have exactly its
known reward, none may be scored 0 because of a fault, and what could not finish is left undone and
finished by a rerun of the same command."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from conftest import STANDIN, free_port, run_launcher

sys.path.insert(0, str(STANDIN))
from known_rewards import canonical_task_id, expected_reward  # noqa: E402  (tests/standin/, on sys.path above)

from tau2_run_local.endpoint_file import write_model_config
from tau2_run_local.faults import judge_failure, retry_after_s
from tau2_run_local.pacing import BACKOFF_CAP_S, Pacer, backoff_s
from tau2_run_local.plan import endpoint_url
from tau2_run_local.scoring import api_cost

STANDIN_SERVER = STANDIN / "standin_server.py"
DOMAIN, TASKS, MAX_STEPS = "retail", 4, 60


def evaluate(tmp: Path, agent_ports: list[int], user_port: int | None = None, *extra: str):
    """The launcher against servers already up; the user simulator at user_port (a 'hosted API') or
    played by the agent's servers. No preflight: its probes would open the stand-ins' fault windows (timed
    from the first request) before the run's own calls (tests/test_first_turn.py probes a failing pool)."""
    config = tmp / "model_config_local.json"
    write_model_config(config, {"standin": [endpoint_url("127.0.0.1", p) for p in agent_ports]})
    user = ["--user-api-base", endpoint_url("127.0.0.1", user_port)] if user_port else []
    args = ["--skip-server-start", "--model-config-path", str(config), "--user-llm", "standin", *user,
            "--domains", DOMAIN, "--num-tasks", str(TASKS), "--max-steps", str(MAX_STEPS),
            "--max-concurrency", "4", "--output-dir", str(tmp / "out"), "--log-dir", str(tmp / "logs"),
            "--skip-preflight", *extra]
    return run_launcher(args, timeout=300)


def written(tmp: Path) -> list:
    from tau2.data_model.simulation import Results
    return Results.load(tmp / "out" / f"{DOMAIN}.json").simulations


def summary_of(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "summary.json").read_text())


def assert_known_rewards(tmp: Path, expect: int, malformed: tuple[str, ...] = ()) -> None:
    """Every written simulation has its known reward; the summary agrees with τ²-bench's own metrics."""
    sims = written(tmp)
    assert len(sims) == expect
    for sim in sims:
        assert sim.reward_info.reward == expected_reward(DOMAIN, sim.task_id, malformed_ids=malformed,
                                                         max_steps=MAX_STEPS), sim.task_id
    from tau2.data_model.simulation import Results
    from tau2.metrics.agent_metrics import compute_metrics
    metrics = compute_metrics(Results.load(tmp / "out" / f"{DOMAIN}.json"))
    domain = summary_of(tmp)["domains"][DOMAIN]
    assert domain["avg_reward"] == pytest.approx(metrics.avg_reward)
    assert domain["pass_hat_k"]["1"] == pytest.approx(metrics.pass_hat_ks[1])


# ----------------------------------------------------------------------------------------------
# Faults that pass: retried, and every simulation gets its known reward
# ----------------------------------------------------------------------------------------------


# each kind of fault once per side at least (HTTP 500 and a reset are judged alike: test_judge_failure)
@pytest.mark.parametrize("side, fault", [
    ("user", {"fault_window": "0:4:429", "retry_after": "1"}),
    ("user", {"fault_window": "0:3:500"}),
    ("user", {"fault_window": "0:3:hang", "hang_s": "30"}),
    ("agent", {"fault_window": "0:4:429", "retry_after": "1"}),
    ("agent", {"fault_window": "0:3:reset"}),
], ids=["user-429", "user-500", "user-hang", "agent-429", "agent-reset"])
def test_a_fault_that_passes_is_retried_and_never_scored(tmp_path: Path, standins, side: str, fault: dict):
    """One endpoint per side; the faulty side fails every call for seconds while /health stays 200."""
    faulty = standins.start(fault_role=side, **fault)
    healthy = standins.start()
    agent, user = (faulty, healthy) if side == "agent" else (healthy, faulty)
    result = evaluate(tmp_path, [agent], user, "--request-timeout", "2")
    assert result.returncode == 0, result.stderr
    assert_known_rewards(tmp_path, TASKS)
    failures = summary_of(tmp_path)["domains"][DOMAIN]["failures"]
    refused = standins.stats(faulty)
    assert sum(refused[k] for k in ("refused_429", "errors_500", "resets", "hangs")) > 0, "the fault never fired"
    assert failures["retried_calls"] > 0 and failures["recovered_calls"] > 0
    assert failures["infrastructure_undone"] == failures["user_simulator_error"] == 0
    assert summary_of(tmp_path)["domains"][DOMAIN]["termination_reasons"].get("agent_error", 0) == 0
    if "429" in fault["fault_window"]:
        assert result.stdout.count("HTTP 429 (rate limit); slowing the whole pool down") == 1


def test_two_agent_endpoints_one_failing_the_other_takes_the_calls(tmp_path: Path, standins):
    """One of two agent servers answers 500 for 6 s while its /health stays 200: its calls move to the
    other server; every simulation gets its known reward."""
    failing = free_port()
    standins.start(port=failing, fault_window="0:6:500", fault_role="agent")
    good = standins.start()
    result = evaluate(tmp_path, [failing, good], None)
    assert result.returncode == 0, result.stderr
    assert_known_rewards(tmp_path, TASKS)
    assert standins.stats(failing)["errors_500"] > 0
    assert summary_of(tmp_path)["domains"][DOMAIN]["failures"]["retried_calls"] > 0
    assert standins.stats(good)["chat_requests"] > standins.stats(failing)["chat_requests"]


# ----------------------------------------------------------------------------------------------
# A fault that does not pass: left undone, the domain stopped loudly, a rerun finishes it
# ----------------------------------------------------------------------------------------------


def test_an_endpoint_that_only_fails_stops_the_domain_and_a_rerun_finishes(tmp_path: Path, standins):
    agent = standins.start()
    user = standins.start(fault_window="0:100000:500", fault_role="user")
    result = evaluate(tmp_path, [agent], user, "--retry-timeout", "3")
    assert result.returncode == 1
    assert written(tmp_path) == []  # nothing scored 0 for the fault
    domain = summary_of(tmp_path)["domains"][DOMAIN]
    assert domain["status"] == "failed" and domain["not_scored"] == TASKS and domain["simulations"] == 0
    assert domain["failures"]["infrastructure_undone"] >= 1
    assert domain["failures"]["infrastructure_undone"] + domain["failures"]["not_started"] == TASKS
    assert (f"user endpoint http://127.0.0.1:{user}/v1 answered nothing but errors for the whole retry window"
            in result.stderr)
    assert "InternalServerError" in result.stderr  # the last error, named
    side = json.loads((tmp_path / "out" / f"{DOMAIN}.not_scored.json").read_text())
    assert side and all(entry["reason"] == "infrastructure" for entry in side)
    last = result.stderr.strip().splitlines()
    assert "run the same command again" in last[-2] and "--retry-timeout 3" in last[-1]

    standins.stop(user)
    standins.start(port=user)  # the API is back, at the same address
    rerun = evaluate(tmp_path, [agent], user, "--retry-timeout", "3")
    assert rerun.returncode == 0, rerun.stderr
    assert_known_rewards(tmp_path, TASKS)
    assert summary_of(tmp_path)["domains"][DOMAIN]["status"] == "complete"
    assert json.loads((tmp_path / "out" / f"{DOMAIN}.not_scored.json").read_text()) == []


# ----------------------------------------------------------------------------------------------
# The model's failures: the agent's scored 0 as τ²-bench scores them, the user simulator's not scored
# ----------------------------------------------------------------------------------------------


def test_model_failures_score_zero_and_user_failures_are_left_out(tmp_path: Path, standins):
    ids = [t for t in __import__("known_rewards").valid_task_ids(DOMAIN)][:TASKS]
    malformed, overflow, user_broken = canonical_task_id(DOMAIN, ids[0]), canonical_task_id(DOMAIN, ids[1]), ids[2]
    agent = standins.start(malformed_tool_json=malformed, context_overflow=overflow)
    user = standins.start(user_overflow=user_broken)
    result = evaluate(tmp_path, [agent], user)
    assert result.returncode == 1  # a simulation is not scored: the run says so and how to finish
    sims = {s.task_id: s for s in written(tmp_path)}
    assert user_broken not in sims and len(sims) == TASKS - 1
    for task in (malformed, overflow):
        assert sims[task].termination_reason.value == "agent_error" and sims[task].reward_info.reward == 0.0
    assert sims[malformed].reward_info.info["category"] == "malformed_tool_call"
    assert sims[overflow].reward_info.info["category"] == "context_overflow"
    assert_known_rewards(tmp_path, TASKS - 1, malformed=(malformed, overflow))
    domain = summary_of(tmp_path)["domains"][DOMAIN]
    failures = domain["failures"]
    assert (failures["malformed_tool_call"], failures["context_overflow"],
            failures["user_simulator_error"]) == (1, 1, 1)
    assert failures["retried_calls"] == 0  # the model's failures are never retried
    assert domain["not_scored"] == 1 and domain["status"] == "incomplete"
    side = json.loads((tmp_path / "out" / f"{DOMAIN}.not_scored.json").read_text())
    assert [(e["task_id"], e["reason"]) for e in side] == [(user_broken, "user_simulator_error")]
    assert "maximum context length" in side[0]["error"]


# ----------------------------------------------------------------------------------------------
# The one place that decides what a failure means
# ----------------------------------------------------------------------------------------------


class _HTTPError(Exception):
    def __init__(self, status: int, text: str = "", headers: dict | None = None):
        super().__init__(text)
        self.status_code = status
        self.headers = headers or {}


@pytest.mark.parametrize("exc, kind", [
    (_HTTPError(429, "rate limit"), "infrastructure"),
    (_HTTPError(408), "infrastructure"), (_HTTPError(409), "infrastructure"), (_HTTPError(425), "infrastructure"),
    (_HTTPError(500), "infrastructure"), (_HTTPError(503), "infrastructure"),
    (ConnectionResetError("reset by peer"), "infrastructure"), (TimeoutError("timed out"), "infrastructure"),
    (_HTTPError(400, "This model's maximum context length is 8192 tokens"), "context_overflow"),
    (json.JSONDecodeError("Expecting value", '{"a": ', 6), "malformed_tool_call"),
    (_HTTPError(401, "invalid api key"), "configuration"), (_HTTPError(404, "no such model"), "configuration"),
    (ValueError("reply could not be read"), "bad_reply"),
])
def test_judge_failure(exc: BaseException, kind: str):
    assert judge_failure(exc).kind == kind


def test_retry_after_and_backoff():
    import random
    assert retry_after_s(_HTTPError(429, headers={"Retry-After": "7"})) == 7.0
    assert retry_after_s(_HTTPError(500)) is None
    rng = random.Random(0)
    waits = [backoff_s(attempt, None, rng) for attempt in range(8)]
    assert all(0 <= w <= BACKOFF_CAP_S * 1.2 for w in waits)
    assert all(backoff_s(0, 7.0, rng) >= 7.0 for _ in range(20))  # never shorter than asked


def test_pacer_slows_the_whole_pool_on_429_and_grows_back():
    said: list[str] = []
    pacer = Pacer("user simulator", ceiling=8, rpm=None, say=said.append)
    pacer.in_flight = 7  # seven calls out when the 429 came back
    pacer.rate_limited(0.0)
    assert pacer.limit == 4 and len(said) == 1
    pacer.rate_limited(0.0)  # the same burst: no second halving, nothing said again
    assert pacer.limit == 4 and len(said) == 1
    pacer.in_flight = 0
    for _ in range(4):
        pacer.succeeded()
    assert pacer.limit == 5


def test_pacer_rpm_spaces_call_starts():
    pacer = Pacer("user simulator", ceiling=4, rpm=600, say=lambda _: None)  # one start per 0.1 s
    began = time.monotonic()
    for _ in range(4):
        with pacer.slot():
            pass
    assert time.monotonic() - began >= 0.3


def test_api_cost_from_litellms_price_map():
    import litellm
    price = litellm.model_cost["gpt-4o"]
    want = 1000 * price["input_cost_per_token"] + 100 * price["output_cost_per_token"]
    assert api_cost("gpt-4o", {"prompt": 1000, "completion": 100}) == pytest.approx(want)
    assert api_cost("hosted_vllm/standin", {"prompt": 1000, "completion": 100}) == "unknown"
    assert api_cost("no-such-model-anywhere", {"prompt": 1, "completion": 1}) == "unknown"


def test_an_endpoint_that_refuses_the_request_stops_the_domain_at_once(tmp_path: Path, standins):
    """A key the API refuses (HTTP 401) cannot pass by retrying: nothing is scored, the domain stops at
    once (well within --retry-timeout) and says why."""
    agent = standins.start()
    user = standins.start(fault_window="0:100000:401", fault_role="user")
    began = time.monotonic()
    result = evaluate(tmp_path, [agent], user)  # the default --retry-timeout, 600 s
    assert time.monotonic() - began < 120
    assert result.returncode == 1
    assert written(tmp_path) == []
    assert f"user endpoint http://127.0.0.1:{user}/v1 refuses the request (HTTP 401" in result.stderr
    assert standins.stats(user)["errors_401"] >= 1
