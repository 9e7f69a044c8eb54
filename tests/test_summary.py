"""Summary math: the reward and pass^k the launcher reports equal what tau2.metrics computes."""
from __future__ import annotations

import random

import pytest

from conftest import cpu_plan
from tau2_run_local.evaluation import Evaluation
from tau2_run_local.preflight import tool_call_format
from tau2_run_local.report_files import summary_markdown
from tau2_run_local.results import DomainRun
from tau2_run_local.routing import Router
from tau2_run_local.scoring import is_success, parser_hint, pass_hat_k, score, summarize, unparsed_tool_calls


def synthetic_results(domain: str, trials: int, seed: int):
    """Real τ²-bench Results over a domain's tasks, with rewards drawn at random (0, 1 or partial)."""
    import tau2.run
    from tau2.data_model.simulation import Results, RewardInfo, SimulationRun, TerminationReason

    rng = random.Random(seed)
    tasks = tau2.run.get_tasks(domain, num_tasks=6)
    info = tau2.run.get_info(domain=domain, agent="llm_agent", user="user_simulator", llm_agent="hosted_vllm/m",
                             llm_args_agent={}, llm_user="hosted_vllm/m", llm_args_user={}, num_trials=trials)
    sims = [SimulationRun(id=f"{t.id}-{k}", task_id=t.id, start_time="", end_time="", duration=1.0,
                          termination_reason=rng.choice(list(TerminationReason)), messages=[], trial=k, seed=k,
                          reward_info=RewardInfo(reward=rng.choice([0.0, 1.0, 1.0, 0.5])))
            for k in range(trials) for t in tasks]
    return Results(info=info, tasks=tasks, simulations=sims)


@pytest.mark.parametrize("trials, seed", [(1, 1), (3, 2), (4, 3)])
def test_score_matches_tau2_metrics(trials: int, seed: int):
    from tau2.metrics.agent_metrics import compute_metrics
    results = synthetic_results("mock", trials, seed)
    ours = score(results.simulations)
    theirs = compute_metrics(results)
    assert ours["avg_reward"] == pytest.approx(theirs.avg_reward)
    assert {int(k): v for k, v in ours["pass_hat_k"].items()} == pytest.approx(theirs.pass_hat_ks)
    assert len(ours["pass_hat_k"]) == trials


def test_pass_hat_k_formula():
    assert pass_hat_k(4, 2, 1) == 0.5
    assert pass_hat_k(4, 2, 2) == pytest.approx(1 / 6)
    assert pass_hat_k(3, 3, 3) == 1.0
    assert is_success(1.0) and not is_success(0.5)


def test_overall_keeps_domains_apart(tmp_path):
    """Retail and airline both have a task '0': overall pass^k must not merge them."""
    retail, airline = synthetic_results("retail", 2, 5), synthetic_results("airline", 2, 6)
    runs = {d: DomainRun(d, tmp_path / f"{d}.json", r, len(r.simulations), ()) for d, r in
            (("retail", retail), ("airline", airline))}
    ev = Evaluation(tau2=None, plan=cpu_plan(), agent_pool=Router(["u"]), user_pool=None, runs=runs, say=print)
    summary = summarize(ev, wall_s=1.0)
    both = [*retail.simulations, *airline.simulations]
    assert summary["overall"]["simulations"] == len(both)
    assert summary["overall"]["avg_reward"] == pytest.approx(sum(s.reward_info.reward for s in both) / len(both))
    per_task = [summary["domains"][d]["pass_hat_k"]["2"] * summary["domains"][d]["tasks"] for d in runs]
    assert summary["overall"]["pass_hat_k"]["2"] == pytest.approx(sum(per_task) / summary["overall"]["tasks"])
    assert summary["overall"]["tasks"] == 12
    assert sum(summary["overall"]["termination_reasons"].values()) == len(both)
    md = summary_markdown(summary)
    assert "| retail |" in md and "| overall |" in md and "pass^2" in md


def test_tool_calls_left_in_text_are_counted_for_the_parser_hint():
    from types import SimpleNamespace as NS

    call = '{"name": "get_order_details", "arguments": {"order_id": "#W1"}}'
    messages = [
        NS(role="assistant", content=call, tool_calls=None),  # bare JSON, missed by the parser
        NS(role="assistant", content="Sure:\n```json\n" + call + "\n```", tool_calls=[]),  # fenced
        NS(role="assistant", content=None, tool_calls=[NS(name="get_order_details")]),  # parsed
        NS(role="assistant", content="[get_order_details(order_id='#W1')]", tool_calls=None),  # pythonic
        NS(role="assistant", content='Your order is {"id": "#W1"}.', tool_calls=None),  # data, no call
        NS(role="user", content=call, tool_calls=None),  # the user simulator's text does not count
    ]
    found = unparsed_tool_calls([NS(messages=messages)])  # judged as the preflight judges a probe's reply
    assert found.total() == 3 and found[('bare JSON {"name": ..., "arguments": ...}', "llama3_json")] == 2
    assert parser_hint([NS(messages=messages)], "hermes") == (
        'run_local.py: 3 agent replies hold a tool call as text (bare JSON {"name": ..., "arguments": ...}) that '
        "the servers' tool-call parser did not turn into a call: serve with --tool-call-parser llama3_json "
        "(this run used hermes)")
    assert parser_hint([NS(messages=messages[2:3])], "hermes") is None
    assert not tool_call_format('{"name": "x", "arguments": "not an object"}')
    assert not tool_call_format("{ not json")
