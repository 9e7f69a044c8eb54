"""tau2_run_local.first_turn: the first turn's tokens against --max-model-len before anything starts, and
which pools the preflight probes (and how a pool that only fails is left to the run's fault handling)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import word_tokenizer_model
from tau2_run_local.errors import UsageError
from tau2_run_local.first_turn import FirstTurn, context_line, count_first_turns, plan_probes, preflight
from tau2_run_local.plan import Host, endpoint_url, this_machine
from tau2_run_local.planner import build_plan
from tau2_run_local.settings import parse_request


def planned(*argv: str, config: dict | None = None):
    request = parse_request([*argv], {})
    host = Host(this_machine(("0", "1", "2")), iter(range(1900, 2000)), "/cache", config or {})
    return request, build_plan(request, host)


def test_the_line_says_what_the_first_turns_need_and_a_short_context_is_refused():
    turns = (FirstTurn("agent", "agent", "retail", 5199, 8192), FirstTurn("agent", "agent", "telecom", 7970, 8192),
             FirstTurn("agent", "user", "telecom", 2100, 8192))
    request, _ = planned("--agent-model", "/ckpt")
    assert context_line(request, turns) == (
        "first turns, in tokens by each checkpoint's tokenizer: agent: retail 5199, telecom 7970; user simulator: "
        "telecom 2100; no --max-model-len: each server takes its checkpoint's own context (agent 8192)")
    request, _ = planned("--agent-model", "/ckpt", "--max-model-len", "9000", "--max-new-tokens", "512")
    assert context_line(request, turns).endswith("--max-model-len 9000 holds the longest with --max-new-tokens 512")
    request, _ = planned("--agent-model", "/ckpt", "--max-model-len", "8192", "--max-new-tokens", "512")
    with pytest.raises(UsageError) as refused:
        context_line(request, turns)
    assert str(refused.value) == (
        "--max-model-len 8192 cannot hold telecom's first turn: the agent's prompt has 7970 tokens on the agent "
        "servers (their checkpoint's tokenizer) and --max-new-tokens 512 more; give --max-model-len 8482 or more, "
        "and more still for the conversation that follows")
    assert context_line(request, ()) is None


def test_first_turns_are_counted_only_where_the_folder_has_a_tokenizer(tmp_path: Path):
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text("{}")  # the tests' stand-in checkpoints: skipped, τ²-bench unloaded
    request, plan = planned("--agent-model", str(tmp_path / "bare"), "--domains", "mock", "telecom")
    assert count_first_turns(request, plan, lambda: pytest.fail("τ²-bench loaded for a folder without tokenizer")) == ()
    model = word_tokenizer_model(tmp_path / "words")
    request, plan = planned("--agent-model", str(model), "--served-model-name", "a", "--user-llm", "a",
                            "--domains", "mock", "telecom")
    loads = []
    turns = count_first_turns(request, plan, lambda: loads.append(1))
    assert loads == [1]
    assert [(t.pool, t.role, t.domain, t.limit) for t in turns] == [
        ("agent", "agent", "mock", 4096), ("agent", "agent", "telecom", 4096), ("agent", "user", "telecom", 4096)]
    assert all(t.tokens > 100 for t in turns) and turns[1].tokens > turns[0].tokens


def test_which_pools_are_probed_and_with_what():
    # the agent plays the user in mock: one pool, the agent's first turns
    _, plan = planned("--agent-model", "/ckpt", "--served-model-name", "a", "--user-llm", "a", "--domains", "mock")
    (agent,) = plan_probes(plan, ())
    assert (agent.label, agent.model, agent.parsers.tool_call_parser) == ("agent", "a", "hermes")
    assert len(agent.requests) == 2 and all(r.role == "agent" and r.tools for r in agent.requests)
    # a hosted user simulator is never called
    _, plan = planned("--agent-model", "/ckpt", "--domains", "mock")
    assert [p.label for p in plan_probes(plan, ())] == ["agent"]
    # a user served by this fleet: its opening, with no tools; in telecom also with its tools; served experts
    _, plan = planned("--agent-model", "/ckpt", "--num-servers", "1", "--user-model", "/user", "--domains", "mock",
                      "telecom", "--expert", "big=/big", "--max-new-tokens", "64")
    turns = (FirstTurn("user", "user", "telecom", 2100, None),)
    probes = {p.label: p for p in plan_probes(plan, turns)}
    assert list(probes) == ["agent", "user simulator", "user simulator with its tools", "expert big"]
    opening, tools = probes["user simulator"], probes["user simulator with its tools"]
    assert opening.model == "/user" and not opening.expect_calls and opening.parsers.role == "user"
    assert [r.domain for r in opening.requests] == ["mock"] and not opening.requests[0].tools
    assert {r.domain for r in tools.requests} == {"telecom"} and tools.prompt_tokens == 2100
    assert tools.sampling == {"max_tokens": 64, "temperature": 0.0}
    assert probes["expert big"].urls == plan.experts[0].urls and probes["expert big"].parsers.name == "big"


def test_a_pool_that_answers_only_errors_is_left_to_the_runs_fault_handling(standins):
    port = standins.start(fault_window="0:100000:500", fault_role="agent")
    _, plan = planned("--skip-server-start", "--user-llm", "standin", "--domains", "mock",
                      config={"standin": (endpoint_url("127.0.0.1", port),)})
    said: list[str] = []
    assert preflight(plan, (), said.append) is None
    assert said[0].startswith("preflight: agent: warning: no usable reply to 2 probe(s)")
    assert said[0].endswith("the run's fault handling takes it from here")
    assert standins.stats(port)["errors_500"] == 2
