"""Telecom, where the user simulator has tools of its own (the user's phone). The stand-in plays both sides
of a gold replay (tests/standin/standin_server.py): its agent the task's gold actions of requestor
"assistant", its user those of requestor "user" as the user simulator's own tool calls, in gold order (the
agent hands each run of user actions over with one text). Real τ²-bench, run by the launcher with the user
simulator at an endpoint of its own, then shows that the user's tool calls go through the launcher's user
pool and its fault handling into τ²-bench's user environment, and that the tasks score as `tau2 run` scores
them.

Cost: three runs at once (the launcher, `tau2 run`, the launcher with faults) against three stand-ins, in
one module fixture: 27-31 s of CPU, most of it importing τ²-bench in each process; 20 s of wall time on 2
cores with little else running (54 s with four other test runs on them).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LAUNCHER, STANDIN, Standins

sys.path.insert(0, str(STANDIN))
from known_rewards import expected_reward, replayed_calls, steps_needed  # noqa: E402  (tests/standin/, on sys.path above)

from tau2_run_local.endpoint_file import write_model_config
from tau2_run_local.plan import endpoint_url

TASK_IDS = (  # telecom_small; their gold actions by requestor, in order
    "[service_issue]overdue_bill_suspension[PERSONA:Easy]",  # agent, user, agent, user
    "[mobile_data_issue]user_abroad_roaming_disabled_off[PERSONA:Hard]",  # agent, user
    "[service_issue]break_apn_settings[PERSONA:None]",  # user, user
    # the same scenario as break_apn_settings, so its user names that task: it replays that task's
    # actions, which do not fix this one (reward 0.0)
    "[service_issue]airplane_mode_on[PERSONA:None]",
)
OWN_SCENARIOS = TASK_IDS[:3]  # no two share a scenario: no two of their requests are the same
TASKS = tuple(f"telecom/{t}" for t in TASK_IDS)  # STANDIN_TASKS: a shared scenario names the first of these
MAX_STEPS = 20  # the longest replay, overdue_bill_suspension's, takes 15 steps
RESULTS = ("launcher/out/telecom.json", "tau2/tau2_run.json", "faults/out/telecom.json")


def launch(tmp: Path, agent: int, user: int, task_ids: tuple[str, ...] = TASK_IDS) -> subprocess.Popen:
    """The launcher on the tasks, against servers already up: the agent at one, the user simulator at the
    other. No preflight: its probes are not this test's subject and cost seconds."""
    config = tmp / "model_config_local.json"
    write_model_config(config, {"standin": [endpoint_url("127.0.0.1", agent)]})
    args = ["--skip-server-start", "--model-config-path", str(config), "--user-llm", "standin",
            "--user-api-base", endpoint_url("127.0.0.1", user), "--domains", "telecom",
            "--task-set-name", "telecom_small", "--task-ids", *task_ids, "--max-steps", str(MAX_STEPS),
            "--max-concurrency", "4", "--output-dir", str(tmp / "out"), "--log-dir", str(tmp / "logs"),
            "--skip-preflight"]
    return subprocess.Popen([sys.executable, str(LAUNCHER), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def tau2_run(tmp: Path, agent: int, user: int) -> subprocess.Popen:
    """Plain `tau2 run` on the same tasks and endpoints, through litellm's openai/ provider."""
    def llm_args(port: int) -> str:
        return json.dumps({"api_base": endpoint_url("127.0.0.1", port), "temperature": 0.0})
    tau2 = Path(sys.executable).with_name("tau2")
    args = [str(tau2), "run", "--domain", "telecom", "--task-split-name", "small", "--task-ids", *TASK_IDS,
            "--agent-llm", "openai/standin", "--agent-llm-args", llm_args(agent),
            "--user-llm", "openai/standin", "--user-llm-args", llm_args(user), "--max-steps", str(MAX_STEPS),
            "--max-concurrency", "4", "--save-to", "tau2_run", "--results-dir", str(tmp), "--log-level", "ERROR"]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OPENAI_API_KEY": "none"}, cwd=tmp)


def simulations(path: Path) -> dict:
    from tau2.data_model.simulation import Results
    return {sim.task_id: sim for sim in Results.load(path).simulations}


def tool_calls(sim) -> list[tuple[str, str, dict]]:
    """Every tool call of the simulation, in order: (requestor, name, arguments)."""
    return [(c.requestor, c.name, c.arguments) for m in sim.messages for c in (getattr(m, "tool_calls", None) or [])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs at once (each waits on the others' calls, the cores stay busy): the launcher and `tau2 run`
    on the same two stand-ins (the agent's, the user's), and the launcher with the user simulator at a
    stand-in whose first two tool-call turns fail (HTTP 500, then 429), on the tasks with scenarios of their
    own (so that a request sent again is a retry)."""
    tmp = tmp_path_factory.mktemp("telecom")
    servers, started = Standins(), {}
    try:
        agent, user = servers.start(tasks=",".join(TASKS)), servers.start(tasks=",".join(TASKS))
        faulty = servers.start(tasks=",".join(TASKS), fault_role="user", fault_tool_turns="500,429", retry_after="1")
        for name in ("launcher", "tau2", "faults"):
            (tmp / name).mkdir()
        started.update(launcher=launch(tmp / "launcher", agent, user), tau2=tau2_run(tmp / "tau2", agent, user),
                       faults=launch(tmp / "faults", agent, faulty, OWN_SCENARIOS))
        done = {}
        for name, proc in started.items():
            out, err = proc.communicate(timeout=300)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        yield {**done, "dir": tmp, "stats": {"agent": servers.stats(agent), "user": servers.stats(user),
                                             "faulty": servers.stats(faulty)}}
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for port in list(servers.procs):
            servers.stop(port)


def test_user_tool_calls_reach_the_user_environment(runs):
    """Every gold action, the user's as its own tool calls, in gold order; each user call answered by
    τ²-bench's user environment; the replays of each task's own gold actions score 1.0."""
    result = runs["launcher"]
    assert result.returncode == 0, result.stderr
    sims = simulations(runs["dir"] / "launcher" / "out" / "telecom.json")
    assert sorted(sims) == sorted(TASK_IDS)
    for task_id, sim in sims.items():
        assert steps_needed("telecom", task_id, tasks=TASKS) < MAX_STEPS
        assert tool_calls(sim) == replayed_calls("telecom", task_id, tasks=TASKS), task_id
        assert sim.termination_reason.value == "user_stop"
        answers = {m.id: m for m in sim.messages if m.role == "tool"}
        user_calls = [c for m in sim.messages if m.role == "user" for c in (m.tool_calls or [])]
        assert user_calls, task_id
        for call in user_calls:
            assert answers[call.id].requestor == "user" and not answers[call.id].error, (task_id, call.name)
        assert sim.reward_info.reward == expected_reward("telecom", task_id, max_steps=MAX_STEPS, tasks=TASKS)
    assert [sims[t].reward_info.reward for t in TASK_IDS] == [1.0, 1.0, 1.0, 0.0]
    # the user's calls went to the user simulator's endpoint only, one request a user turn (this run's and
    # `tau2 run`'s; the agent's endpoint served the run with faults too)
    stats = runs["stats"]

    def turns(role: str, *names: str) -> int:
        return sum(1 for name in names for s in simulations(runs["dir"] / name).values()
                   for m in s.messages[1:] if m.role == role)

    assert {c["role"] for c in stats["user"]["conversation_info"].values()} == {"user"}
    assert {c["role"] for c in stats["agent"]["conversation_info"].values()} == {"agent"}
    assert stats["user"]["chat_requests"] == turns("user", *RESULTS[:2])
    assert stats["agent"]["chat_requests"] == turns("assistant", *RESULTS)


def test_telecom_scores_as_tau2_run_scores_it(runs):
    """The same tasks, the same conversations (every tool call, by whom), the same rewards."""
    assert runs["tau2"].returncode == 0, runs["tau2"].stderr[-3000:]
    ours = simulations(runs["dir"] / "launcher" / "out" / "telecom.json")
    theirs = simulations(runs["dir"] / "tau2" / "tau2_run.json")
    assert sorted(theirs) == sorted(ours) == sorted(TASK_IDS)
    for task_id in TASK_IDS:
        assert tool_calls(ours[task_id]) == tool_calls(theirs[task_id]), task_id
        assert ours[task_id].termination_reason == theirs[task_id].termination_reason
        assert ours[task_id].reward_info.reward == theirs[task_id].reward_info.reward, task_id
    summary = json.loads((runs["dir"] / "launcher" / "out" / "summary.json").read_text())
    from tau2.data_model.simulation import Results
    from tau2.metrics.agent_metrics import compute_metrics
    metrics = compute_metrics(Results.load(runs["dir"] / "tau2" / "tau2_run.json"))
    assert summary["domains"]["telecom"]["avg_reward"] == pytest.approx(metrics.avg_reward) == 0.75


def test_a_fault_on_a_user_tool_call_turn_is_retried_and_never_scored(runs):
    """The user simulator's first two tool-call turns got HTTP 500, then 429: each was retried (the user's
    history as it was before the try), none is scored, every simulation is the clean run's."""
    result = runs["faults"]
    assert result.returncode == 0, result.stderr
    faulty = runs["stats"]["faulty"]
    assert (faulty["errors_500"], faulty["refused_429"]) == (1, 1)
    # each failed request was sent again byte for byte: the user's history rolled back to before the try
    assert faulty["tool_turn_faults"] and all(n >= 1 for n in faulty["tool_turn_faults"].values())
    clean = simulations(runs["dir"] / "launcher" / "out" / "telecom.json")
    sims = simulations(runs["dir"] / "faults" / "out" / "telecom.json")
    assert sorted(sims) == sorted(OWN_SCENARIOS)
    for task_id, sim in sims.items():
        assert tool_calls(sim) == tool_calls(clean[task_id]), task_id  # no call lost or made twice
        assert [m.role for m in sim.messages] == [m.role for m in clean[task_id].messages], task_id
        assert sim.reward_info.reward == clean[task_id].reward_info.reward, task_id
    domain = json.loads((runs["dir"] / "faults" / "out" / "summary.json").read_text())["domains"]["telecom"]
    failures = domain["failures"]
    assert failures["retried_calls"] == 2 and failures["recovered_calls"] >= 1
    assert failures["infrastructure_undone"] == failures["user_simulator_error"] == 0
    assert domain["not_scored"] == 0 and domain["status"] == "complete"
    assert result.stdout.count("HTTP 429 (rate limit); slowing the whole pool down") == 1
