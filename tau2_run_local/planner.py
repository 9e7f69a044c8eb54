"""planner"""
from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Iterator, Sequence

from .defaults import ADAPTIVE_CEILING_PER_SERVER, SEED_SCRIPT_SERVERS, SIMULATIONS_PER_WORKER
from .errors import UsageError
from .expert_plan import expert_pools, read_addendum, read_expert_info, read_prices, resolve_experts
from .plan import EvalSettings, FaultPolicy, Node, Plan, PoolSettings, ServerSpec, hosted
from .servers import CPU_KV_CACHE_GIB, build_servers
from .validation import check_implementations, check_numbers, parse_gpu_ids, parse_llm_args


def pool_settings(args: argparse.Namespace) -> tuple[PoolSettings, ...]:
    """The pools to start, read from the command line once: the agent's, and a local user simulator's."""
    pools = [PoolSettings("agent", args.agent_model, agent_served_name(args), args.num_servers,
                          args.tensor_parallel_size, parse_gpu_ids(args.gpu_ids, "--gpu-ids"),
                          args.servers_per_gpu, "")]
    if args.user_model:
        pools.append(PoolSettings("user", args.user_model, args.user_model, 1, args.user_tensor_parallel_size,
                                  parse_gpu_ids(args.user_gpu_ids, "--user-gpu-ids"), 1, "user-"))
    return (*pools, *expert_pools(args))


def agent_served_name(args: argparse.Namespace) -> str:
    return args.served_model_name or args.agent_model


def resolve_user(args: argparse.Namespace, agent_name: str, agent_urls: tuple[str, ...],
                 user_server_urls: tuple[str, ...], config: dict[str, tuple[str, ...]]) -> tuple[str, tuple[str, ...]]:
    """Where the user simulator talks: its own local server, a given URL, the agent's servers, or an API."""
    if args.user_model:
        return hosted(args.user_model), user_server_urls
    if args.user_api_base:
        return hosted(args.user_llm), (args.user_api_base.rstrip("/"),)
    if args.user_llm == agent_name:
        return hosted(agent_name), agent_urls
    if args.user_llm in config:
        return hosted(args.user_llm), config[args.user_llm]
    return args.user_llm, ()


def eval_settings(args: argparse.Namespace, agent_servers: int, cpus: int = 1) -> EvalSettings:
    """--max-concurrency fixes the simulations in flight; without it they start at 16 per agent server and
    follow the servers' gauges up to 256 per server. Workers: --workers, else one process per 8 simulations
    of that ceiling, at most half the CPUs (the servers and this coordinator need the rest)."""
    ceiling = args.max_concurrency or ADAPTIVE_CEILING_PER_SERVER * max(agent_servers, 1)
    workers = args.workers or max(1, min(cpus // 2, math.ceil(ceiling / SIMULATIONS_PER_WORKER)))
    return EvalSettings(
        domains=tuple(args.domains), num_tasks=args.num_tasks,
        task_ids=tuple(args.task_ids) if args.task_ids else None, num_trials=args.num_trials,
        max_steps=args.max_steps, max_concurrency=ceiling, adaptive_concurrency=not args.max_concurrency,
        workers=min(workers, ceiling),
        seed=args.seed, max_new_tokens=args.max_new_tokens, parallel_domains=args.parallel_domains, overwrite=args.overwrite,
        output_dir=Path(args.output_dir),
        faults=FaultPolicy(args.retry_timeout, args.request_timeout, args.user_max_concurrency, args.user_max_rpm),
        agent=args.agent, user=args.user, agent_llm_args=parse_llm_args(args.agent_llm_args, "--agent-llm-args"),
        user_llm_args=parse_llm_args(args.user_llm_args, "--user-llm-args"), max_errors=args.max_errors,
        task_set_name=args.task_set_name, task_split_name=args.task_split_name)


def build_plan(args: argparse.Namespace, nodes: Sequence[Node], ports: Iterator[int],
               config: dict[str, tuple[str, ...]], cache_root: str, cpu_kv_gib: str = CPU_KV_CACHE_GIB,
               executor: str = "local", gpu_mib: dict[str, int] | None = None,
               weight_bytes: dict[str, int] | None = None, client_cpus: int = 1) -> Plan:
    """Turn arguments into a plan. Pure: the nodes and GPUs seen, the ports, a read endpoint file and the
    CPUs the simulations may use here come in."""
    check_numbers(args)
    check_implementations(args)
    if args.skip_server_start:
        agent_name = pick_agent_name(args, config)
        servers: tuple[ServerSpec, ...] = ()
        agent_urls = config[agent_name]
        user_server_urls: tuple[str, ...] = ()
    else:
        if not args.agent_model:
            raise UsageError("--agent-model is required (or set $CKPT_DIR), unless --skip-server-start")
        if executor == "slurm" and args.servers_per_gpu > 1:
            raise UsageError("--servers-per-gpu is not supported with the SLURM executor: "
                             "SLURM gives every job step GPUs of its own")
        agent_name = agent_served_name(args)
        servers = build_servers(args, pool_settings(args), nodes, ports, cache_root, cpu_kv_gib,
                                slurm=executor == "slurm", gpu_mib=gpu_mib, weight_bytes=weight_bytes)
        agent_urls = tuple(s.url for s in servers if s.role == "agent")
        user_server_urls = tuple(s.url for s in servers if s.role == "user")
    user_llm, user_urls = resolve_user(args, agent_name, agent_urls, user_server_urls, config)
    experts = resolve_experts(args, servers, config)
    addendum, source = read_addendum(args.agent_policy_addendum) if experts else ("", "")
    prices = read_prices(args, read_expert_info(args.expert_info), {e.name: e.model for e in experts})
    return Plan(servers, agent_name, agent_urls, user_llm, user_urls, eval_settings(args, len(agent_urls), client_cpus),
                Path(args.model_config_path), Path(args.log_dir), executor, experts, addendum, source, prices)


def pick_agent_name(args: argparse.Namespace, config: dict[str, tuple[str, ...]]) -> str:
    """Which model of a read endpoint file is the agent."""
    wanted = args.served_model_name or args.agent_model
    if wanted:
        if wanted not in config:
            raise UsageError(f"{args.model_config_path} lists no model {wanted!r} (it lists: {', '.join(config)})")
        return wanted
    agents = list(config) if len(config) == 1 else [name for name in config if name != args.user_llm]
    if len(agents) != 1:
        raise UsageError(f"{args.model_config_path} lists several models; name the agent with --served-model-name")
    return agents[0]


def sbatch_nodes(args: argparse.Namespace) -> tuple[Node, ...]:
    """The allocation --sbatch asks for, planned before it exists: --slurm-nodes nodes with GPUs enough
    for the pools spread over them, and a CPU per server plus one for the launcher."""
    given = [x for ids in (args.gpu_ids, args.user_gpu_ids) for x in (parse_gpu_ids(ids, "--gpu-ids") or ())]
    if any(":" in x for x in given):
        raise UsageError("--sbatch: node names are unknown before the job starts; give plain GPU ids")
    count = args.num_servers or SEED_SCRIPT_SERVERS
    user_tp = args.user_tensor_parallel_size if args.user_model else 0
    nodes = args.slurm_nodes or 1
    per_node = max(math.ceil((count * args.tensor_parallel_size + user_tp) / nodes), args.tensor_parallel_size,
                   user_tp, *(int(x) + 1 for x in given if x.isdigit()))
    gpus = tuple(str(i) for i in range(per_node))
    return tuple(Node(f"node{i + 1}", f"node{i + 1}", gpus, per_node + 1) for i in range(nodes))
