"""The orchestration setting: the agent hands turns to expert models through its call_expert tool, and
`tau2 run`'s own knobs. The stand-in orchestrator (STANDIN_CALL_EXPERT) calls an expert on every turn;
the stand-in expert, asked without that tool, replays the task's gold actions, so every reward is known."""
from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import STANDIN, run_launcher

sys.path.insert(0, str(STANDIN))
from known_rewards import expected_reward  # noqa: E402  (tests/standin/, on sys.path above)

from tau2_run_local.defaults import ROUTED
from tau2_run_local.endpoint_file import write_model_config
from tau2_run_local.errors import UsageError
from tau2_run_local.plan import endpoint_url
from tau2_run_local.planner import eval_settings
from tau2_run_local.settings import parse_request
from tau2_run_local.tasks import load_tasks
from tau2_run_local.tau2_loader import load_tau2

DOMAIN, TASKS, MAX_STEPS = "retail", 6, 60
PRICES = {"standin": (1.0, 2.0), "gold": (10.0, 20.0), "standin-user": (0.5, 0.5)}


def stats(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        return json.load(response)


def endpoint_file(path: Path, pools: dict[str, list[int]]) -> Path:
    write_model_config(path, {name: [endpoint_url("127.0.0.1", p) for p in ports] for name, ports in pools.items()})
    return path


def orchestrated(tmp: Path, config: Path, *extra: str):
    args = ["--skip-server-start", "--model-config-path", str(config), "--served-model-name", "standin",
            "--user-llm", "standin-user", "--expert", "gold=gold", "--expert-description", "gold=knows every answer",
            "--domains", DOMAIN, "--num-tasks", str(TASKS), "--max-steps", str(MAX_STEPS), "--max-concurrency", "3",
            "--output-dir", str(tmp / "out"), "--log-dir", str(tmp / "logs"),
            *[f"--price={m}={i},{o}" for m, (i, o) in PRICES.items()], *extra]
    return run_launcher(args, timeout=300)


def test_an_orchestrator_that_calls_an_expert_on_every_turn(tmp_path: Path, standins):
    """Known rewards through the expert; its turns in the trajectory under its name; an expert server that
    dies mid-run is routed around; calls and costs add up from the trajectory's tokens and the prices."""
    agent = standins.start("standin", call_expert="gold")
    user = standins.start("standin-user")
    experts = [standins.start("gold", crash_after="5"), standins.start("gold")]
    config = endpoint_file(tmp_path / "endpoints.json", {"standin": [agent], "standin-user": [user], "gold": experts})
    # in two worker processes: the expert pool's pins, the dying expert server's relay to the coordinator
    # and the costs all cross the process boundary (the launcher's own process runs the other tests)
    result = orchestrated(tmp_path, config, "--workers", "2")
    assert result.returncode == 0, result.stderr
    from tau2.data_model.simulation import Results
    sims = Results.load(tmp_path / "out" / f"{DOMAIN}.json").simulations
    assert len(sims) == TASKS
    for sim in sims:
        assert sim.reward_info.reward == expected_reward(DOMAIN, sim.task_id, max_steps=MAX_STEPS)
    turns = [m for s in sims for m in s.messages if m.role == "assistant" and m.raw_data and "expert" in m.raw_data]
    assert turns and all(m.raw_data["expert"] == "gold" for m in turns)
    assert all(m.raw_data["orchestrator"]["call"]["name"] == "call_expert" for m in turns)
    # the agent's own turns after its greeting all went to the expert
    own = [m for s in sims for m in s.messages[1:] if m.role == "assistant" and not (m.raw_data or {}).get("expert")]
    assert own == []
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())["overall"]
    assert summary["expert_calls"] == {"gold": len(turns)}
    assert f"server http://127.0.0.1:{experts[0]}/v1 stopped answering" in result.stdout
    assert stats(experts[1])["chat_requests"] > 0
    # costs: the trajectory's tokens times the prices given
    used = {"agent": [0, 0], "gold": [0, 0], "user": [0, 0]}
    for sim in sims:
        for m in sim.messages:
            if m.role == "assistant" and m.raw_data and "expert" in m.raw_data:
                usage, orch = m.usage, m.raw_data["orchestrator"]["usage"]
                used["gold"][0] += usage["prompt_tokens"]
                used["gold"][1] += usage["completion_tokens"]
                used["agent"][0] += orch["prompt_tokens"]
                used["agent"][1] += orch["completion_tokens"]
            elif m.role == "user" and m.usage:
                used["user"][0] += m.usage["prompt_tokens"]
                used["user"][1] += m.usage["completion_tokens"]
    price = {"agent": PRICES["standin"], "gold": PRICES["gold"], "user": PRICES["standin-user"]}
    want = {side: (p * price[side][0] + c * price[side][1]) / 1e6 for side, (p, c) in used.items()}
    assert used["gold"][0] > 0 and used["agent"][0] > 0
    for side in want:
        assert summary["tokens"][side] == {"prompt": used[side][0], "completion": used[side][1]}
        assert summary["cost_usd"][side] == pytest.approx(want[side], abs=1e-6)
    assert summary["total_cost_usd"] == pytest.approx(sum(want.values()), abs=1e-5)
    rewards = sum(s.reward_info.reward for s in sims)
    assert summary["reward_per_dollar"] == pytest.approx(rewards / summary["total_cost_usd"], rel=1e-3)


def test_sampling_args_reach_the_servers_and_a_change_refuses_the_resume(tmp_path: Path, standins):
    agent, user = standins.start("standin"), standins.start("standin-user")
    config = endpoint_file(tmp_path / "endpoints.json", {"standin": [agent], "standin-user": [user]})
    base = ["--skip-server-start", "--model-config-path", str(config), "--served-model-name", "standin",
            "--user-llm", "standin-user", "--domains", "mock", "--num-tasks", "2",
            "--output-dir", str(tmp_path / "out"), "--log-dir", str(tmp_path / "logs")]
    first = run_launcher([*base, "--agent-llm-args", '{"temperature": 0.3, "top_p": 0.9}',
                          "--user-llm-args", '{"temperature": 0.7}', "--max-new-tokens", "64"])
    assert first.returncode == 0, first.stderr
    assert stats(agent)["sampling"]["agent"] == [{"temperature": 0.3, "top_p": 0.9, "max_tokens": 64}]
    assert stats(user)["sampling"]["user"] == [{"temperature": 0.7, "max_tokens": 64}]
    before = (tmp_path / "out" / "mock.json").read_text()
    changed = run_launcher([*base, "--agent-llm-args", '{"temperature": 0.5}',
                            "--user-llm-args", '{"temperature": 0.7}', "--max-new-tokens", "64"])
    assert changed.returncode == 2 and "agent llm args changed" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    assert (tmp_path / "out" / "mock.json").read_text() == before
    again = run_launcher([*base, "--agent-llm-args", '{"temperature": 0.5}', "--user-llm-args", '{"temperature": 0.7}',
                          "--max-new-tokens", "64", "--overwrite"])
    assert again.returncode == 0, again.stderr


def test_an_expert_served_by_the_fleet_is_a_pool_of_its_own(tmp_path: Path, model_dir: Path, fake_gpus):
    """--expert NAME=FOLDER: its own servers on its own GPUs, in the endpoint file under its name."""
    gold = tmp_path / "gold-ckpt"
    gold.mkdir()
    (gold / "config.json").write_text("{}")
    result = run_launcher(["--agent-model", str(model_dir), "--served-model-name", "standin", "--user-llm", "standin",
                           "--expert", f"gold={gold}", "--expert-servers", "gold=2", "--expert-tensor-parallel-size",
                           "gold=2", "--num-servers", "2", "--start-port", "auto", "--dry-run",
                           "--model-config-path", str(tmp_path / "endpoints.json")], env=fake_gpus(8))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.count("expert gold ") == 2 and "GPUs 4,5" in out and "GPUs 6,7" in out  # the last free GPUs
    assert "  expert gold: --tool-call-parser hermes, no reasoning parser (" in out  # its pool's own parsers
    assert '"gold": [' in out  # the endpoint file lists the pool under its name
    assert '"name": "call_expert"' in out and '"enum": [' in out
    assert "agent policy addendum, from built in" in out and "## Consulting experts" in out


@pytest.mark.parametrize("extra, message", [
    (["--expert", "a=gpt-4o", "--expert", "a=gpt-4o-mini"], "--expert names 'a' twice"),
    (["--expert", "gold=./ckpt"], "is a checkpoint folder, but --skip-server-start starts no server"),
    (["--expert", "gpt=gpt-4o"], "expert gpt (gpt-4o) needs OPENAI_API_KEY"),
    (["--agent-llm-args", "{temperature: 0}"], "--agent-llm-args is not valid JSON"),
    (["--user-llm-args", "[1, 2]"], "--user-llm-args must be a JSON object"),
    (["--task-set-name", "no_such_set"], "unknown task set 'no_such_set'"),
    (["--agent", "llm_agent_solo"], "--agent llm_agent_solo and --user dummy_user go together"),
    (["--expert-description", "ghost=boo"], "'ghost' is described but no --expert ghost=MODEL is given"),
])
def test_bad_orchestration_input_is_one_line_and_exit_2(tmp_path: Path, standins, extra: list[str], message: str):
    agent = standins.start("standin")
    config = endpoint_file(tmp_path / "endpoints.json", {"standin": [agent]})
    result = run_launcher(["--skip-server-start", "--model-config-path", str(config), "--user-llm", "standin",
                           "--domains", "mock", "--output-dir", str(tmp_path / "out"),
                           "--log-dir", str(tmp_path / "logs"), *extra], env={"OPENAI_API_KEY": ""})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "mock.json").exists()


@pytest.mark.parametrize("folder, message", [("not-a-model", "not a model folder (no config.json)"),
                                             ("missing", "no such directory")])
def test_an_expert_folder_that_is_no_model(tmp_path: Path, model_dir: Path, folder: str, message: str):
    if folder == "not-a-model":
        (tmp_path / folder).mkdir()
    result = run_launcher(["--agent-model", str(model_dir), "--user-llm", "standin",
                           "--expert", f"x={tmp_path / folder}", "--start-port", "auto",
                           "--output-dir", str(tmp_path / "out"), "--log-dir", str(tmp_path / "logs"),
                           "--model-config-path", str(tmp_path / "endpoints.json")])
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").glob("vllm_port_*"))


def test_task_sets_splits_and_tau2s_other_agents_pick_tasks_as_tau2_run_does(tmp_path: Path):
    import tau2.run
    log = tmp_path / "tau2.log"
    tau2_run = load_tau2(log)
    settings = eval_settings(parse_request(["--task-set-name", "telecom_small"], {}), 1)
    small = load_tasks(tau2_run, "telecom", settings)
    assert small and [t.id for t in small] == [t.id for t in tau2.run.get_tasks("telecom", task_split_name="small")]
    workflow = load_tasks(tau2_run, "telecom-workflow", eval_settings(parse_request([], {}), 1))
    assert [t.id for t in workflow] == [t.id for t in tau2.run.get_tasks("telecom", task_split_name="base")]
    with pytest.raises(UsageError, match="has no split 'nope'"):
        load_tasks(tau2_run, "retail", eval_settings(parse_request(["--task-split-name", "nope"], {}), 1))
    gt = eval_settings(parse_request(["--agent", "llm_agent_gt"], {}), 1)
    from tau2.agent.llm_agent import LLMGTAgent
    assert [t.id for t in load_tasks(tau2_run, "mock", gt)] == [
        t.id for t in tau2.run.get_tasks("mock") if LLMGTAgent.check_valid_task(t)]


def test_the_ground_truth_agent_runs_routed(tmp_path: Path, standins):
    agent = standins.start("standin")
    config = endpoint_file(tmp_path / "endpoints.json", {"standin": [agent]})
    result = run_launcher(["--skip-server-start", "--model-config-path", str(config), "--user-llm", "standin",
                           "--agent", "llm_agent_gt", "--domains", "mock", "--num-tasks", "3",
                           "--output-dir", str(tmp_path / "out"), "--log-dir", str(tmp_path / "logs")])
    assert result.returncode == 0, result.stderr
    from tau2.data_model.simulation import Results
    results = Results.load(tmp_path / "out" / "mock.json")
    assert results.info.agent_info.implementation == ROUTED["llm_agent_gt"] and results.simulations
    assert stats(agent)["chat_requests"] > 0
