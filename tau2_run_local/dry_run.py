"""--dry-run: the plan as a person reads it (placement, commands, endpoint file) and `tau2 run` equivalents."""
from __future__ import annotations

import json
import shlex

from .concurrency import make_concurrency
from .endpoint_file import config_pools, split_url
from .experts import expert_tool
from .plan import Plan, hosted


def describe_plan(plan: Plan) -> str:
    """The plan as a person reads it: placement, commands, endpoint file, and the stock equivalents."""
    lines = []
    if plan.servers:
        lines.append(f"servers, {plan.executor} executor (lanes start together; in a lane, servers with a fixed "
                     "KV cache start together, the others one after another):")
        if plan.executor == "slurm":
            lines.append("  (each server is a job step; SLURM picks its GPUs of the node "
                         "and sets CUDA_VISIBLE_DEVICES)")
        for node in dict.fromkeys(s.node for s in plan.servers):
            on_node = [s for s in plan.servers if s.node == node]
            indent = "    " if node else "  "
            if node:
                lines.append(f"  node {node} (clients reach it at {on_node[0].address}):")
            lines += [f"{indent}{s.role:6} {s.served_name if s.role == 'expert' else '':10} port {s.port}  "
                      f"GPUs {','.join(s.gpus) or 'cpu':8} lane {s.lane}"
                      + (f"  KV cache {s.kv_cache_bytes / 2**30:.1f} GiB" if s.kv_cache_bytes else "")
                      + ("  key" if s.keyed else "") for s in on_node]
        lines.append("server commands:")
        lines += [f"  {s.shell_command()}" for s in plan.servers]
        lines += [f"note: {note}" for note in plan.notes]
        lines.append("parsers:")
        lines += [f"  {p.line()}" for p in plan.parsers]
    else:
        lines.append(f"servers: already running, from {plan.config_path}")
    lines += key_lines(plan)
    lines.append(f"endpoint file {plan.config_path}:")
    pools = config_pools(plan)
    doc = {name: [{"ip_addr": h, "port": p} for h, p in map(split_url, urls)] for name, urls in pools.items()}
    lines += ["  " + line for line in json.dumps(doc, indent=2).splitlines()]
    lines.append(f"user simulator: {plan.user_llm}" + (f" at {', '.join(plan.user_urls)}" if plan.user_urls else ""))
    if plan.experts:
        lines.append("experts (the agent's call_expert tool hands them its turn):")
        lines += [f"  {x.name}: {x.model} ({x.source}{': ' + ', '.join(x.urls) if x.urls else ''}) - {x.description}"
                  for x in plan.experts]
        lines.append("call_expert tool schema:")
        lines += ["  " + line for line in json.dumps(expert_tool(plan.experts).openai_schema, indent=2).splitlines()]
        lines.append(f"agent policy addendum, from {plan.addendum_source}:")
        lines += ["  " + line for line in plan.policy_addendum.splitlines()]
    e = plan.eval
    lines.append(f"simulations: domains {' '.join(e.domains)}, trials {e.num_trials}, max steps {e.max_steps}, "
                 + (f"concurrency adaptive, {make_concurrency(plan).target} at first, at most {e.max_concurrency}"
                    if e.adaptive_concurrency else f"concurrency {e.max_concurrency}")
                 + f"{', domains in parallel' if e.parallel_domains else ''}, "
                 + ("deterministic (batch-invariant servers, sampling seeded per simulation), " if e.deterministic
                    else "")
                 + (f"{e.workers} worker processes" if e.workers > 1 else "in the launcher's process")
                 + f"; results in {e.output_dir}")
    lines.append("benchmark: stock τ²-bench run_task per simulation, each conversation on the least busy "
                 "server; the one-endpoint equivalent with τ²-bench's CLI"
                 + (" (which has no experts: the agent alone):" if plan.experts else ":"))
    for domain in e.domains:
        user_args = {**({"api_base": plan.user_urls[0]} if plan.user_urls else {}), **e.user_args()}
        agent_args = {"api_base": plan.agent_urls[0] if plan.agent_urls else "", **e.agent_args()}
        cmd = ["tau2", "run", "--domain", domain, "--agent", e.agent, "--user", e.user,
               "--agent-llm", hosted(plan.agent_name), "--agent-llm-args", json.dumps(agent_args),
               "--user-llm", plan.user_llm, "--user-llm-args", json.dumps(user_args),
               "--num-trials", str(e.num_trials), "--max-steps", str(e.max_steps), "--max-errors",
               str(e.max_errors), "--seed", str(e.seed), "--max-concurrency", str(e.max_concurrency),
               *(["--task-set-name", e.task_set_name] if e.task_set_name else []),
               "--task-split-name", e.task_split_name]
        if e.num_tasks:
            cmd += ["--num-tasks", str(e.num_tasks)]
        if e.task_ids:
            cmd += ["--task-ids", *e.task_ids]
        lines.append("  " + shlex.join(cmd))
    return "\n".join(lines)


def key_lines(plan: Plan) -> list[str]:
    """Which servers require a key and whose, and which endpoints are called with one (never the key)."""
    keyed = [s for s in plan.servers if s.keyed]
    lines = []
    if keyed:
        whose = f"the key in ${plan.api_key_env}" if plan.api_key_env else "a fresh random key made for this run"
        why = "" if plan.api_key_env else f" (they bind {keyed[0].host}, beyond loopback)"
        lines.append(f"keys: the {len(keyed)} server(s) marked 'key' require {whose}{why}, given to each in "
                     "VLLM_API_KEY of its environment, never on a command line nor in a file; every call of this "
                     "run sends it")
    given = sorted(set(plan.endpoint_keys("*")) - {s.url for s in plan.servers})
    if given:
        lines.append(f"keys: {', '.join(given)} are called with the key in ${plan.api_key_env}")
    return lines
