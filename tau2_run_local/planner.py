"""From a Request and a Host to a Plan, pure: the pools, the servers, where the user simulator and the
experts are reached, the evaluation's settings. Testable with no process and no GPU.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from .defaults import ADAPTIVE_CEILING_PER_SERVER, SEED_SCRIPT_SERVERS, SIMULATIONS_PER_WORKER
from .errors import UsageError
from .expert_plan import expert_pools, read_addendum, read_expert_info, read_prices, resolve_experts
from .plan import EvalSettings, FaultPolicy, Host, Node, Plan, PoolParsers, PoolSettings, ServerSpec, hosted
from .servers import build_servers
from .settings import Request
from .tool_parsers import NOT_READ, check_parser_names
from .util import command_words
from .validation import check_implementations, check_numbers, parse_gpu_ids, parse_llm_args
from .vllm_flags import check_serve_flags


def pool_settings(request: Request) -> tuple[PoolSettings, ...]:
    """The pools to start, read from the command line once: the agent's, and a local user simulator's."""
    assert request.agent_model  # build_plan checks it before starting servers
    pools = [PoolSettings("agent", request.agent_model, agent_served_name(request), request.num_servers,
                          request.tensor_parallel_size, parse_gpu_ids(request.gpu_ids, "--gpu-ids"),
                          request.servers_per_gpu, "")]
    if request.user_model:
        pools.append(PoolSettings("user", request.user_model, request.user_model, 1, request.user_tensor_parallel_size,
                                  parse_gpu_ids(request.user_gpu_ids, "--user-gpu-ids"), 1, "user-"))
    return (*pools, *expert_pools(request))


AUTO, NONE = "auto", "none"


def pool_parsers(request: Request, pools: tuple[PoolSettings, ...], host: Host) -> tuple[PoolParsers, ...]:
    """The parsers each pool's servers run: a value given on the command line (--tool-call-parser for every
    pool, --reasoning-parser for the agent's), else what the model's files call for (the host survey read
    them); each name one the installed vLLM has."""
    chosen = []
    for pool in pools:
        agent = pool.role == "agent"
        choice = host.parsers.get((pool.model, request.chat_template if agent else None), NOT_READ)
        tool_given, reasoning_given = request.tool_call_parser != AUTO, agent and request.reasoning_parser != AUTO
        tool = request.tool_call_parser if tool_given else choice.tool_call_parser
        reasoning = ((None if request.reasoning_parser == NONE else request.reasoning_parser) if reasoning_given
                     else choice.reasoning_parser)
        how = ("both given" if tool_given and reasoning_given else
               ("--tool-call-parser given; " if tool_given else "--reasoning-parser given; " if reasoning_given
                else "") + choice.evidence)
        wrong = check_parser_names(tool, reasoning, host.vllm_parsers, host.vllm_version or "(installed)")
        if wrong:
            raise UsageError(wrong if tool_given and reasoning_given else f"{wrong} (auto, for the {pool.role} "
                                                                          f"{pool.served_name}: {how})")
        chosen.append(PoolParsers(pool.role, pool.served_name, tool, reasoning, how))
    return tuple(chosen)


def agent_served_name(request: Request) -> str:
    assert request.agent_model  # build_plan checks it before starting servers
    return request.served_model_name or request.agent_model


def resolve_user(request: Request, agent_name: str, agent_urls: tuple[str, ...],
                 user_server_urls: tuple[str, ...], config: dict[str, tuple[str, ...]]) -> tuple[str, tuple[str, ...]]:
    """Where the user simulator talks: its own local server, a given URL, the agent's servers, or an API."""
    if request.user_model:
        return hosted(request.user_model), user_server_urls
    if request.user_api_base:
        return hosted(request.user_llm), (request.user_api_base.rstrip("/"),)
    if request.user_llm == agent_name:
        return hosted(agent_name), agent_urls
    if request.user_llm in config:
        return hosted(request.user_llm), config[request.user_llm]
    return request.user_llm, ()


def eval_settings(request: Request, agent_servers: int, cpus: int = 1) -> EvalSettings:
    """--max-concurrency fixes the simulations in flight; without it they start at 16 per agent server and
    follow the servers' gauges up to 256 per server. Workers: --workers, else one process per 8 simulations
    of that ceiling, at most half the CPUs (the servers and this coordinator need the rest)."""
    ceiling = request.max_concurrency or ADAPTIVE_CEILING_PER_SERVER * max(agent_servers, 1)
    workers = request.workers or max(1, min(cpus // 2, math.ceil(ceiling / SIMULATIONS_PER_WORKER)))
    return EvalSettings(
        domains=tuple(request.domains), num_tasks=request.num_tasks,
        task_ids=tuple(request.task_ids) if request.task_ids else None, num_trials=request.num_trials,
        max_steps=request.max_steps, max_concurrency=ceiling, adaptive_concurrency=not request.max_concurrency,
        workers=min(workers, ceiling),
        deterministic=request.deterministic,
        seed=request.seed, max_new_tokens=request.max_new_tokens, parallel_domains=request.parallel_domains,
        overwrite=request.overwrite,
        output_dir=Path(request.output_dir),
        faults=FaultPolicy(request.retry_timeout, request.request_timeout, request.user_max_concurrency,
                           request.user_max_rpm),
        agent=request.agent, user=request.user,
        agent_llm_args=parse_llm_args(request.agent_llm_args, "--agent-llm-args"),
        user_llm_args=parse_llm_args(request.user_llm_args, "--user-llm-args"), max_errors=request.max_errors,
        task_set_name=request.task_set_name, task_split_name=request.task_split_name)


def build_plan(request: Request, host: Host) -> Plan:
    """Turn the request into a plan. Pure: what the host showed (nodes and GPUs, ports, a read endpoint
    file, the CPUs the simulations may use here) comes in."""
    config, executor = host.config, host.executor
    check_numbers(request)
    check_implementations(request)
    if request.skip_server_start:
        agent_name = pick_agent_name(request, config)
        servers: tuple[ServerSpec, ...] = ()
        parsers: tuple[PoolParsers, ...] = ()
        agent_urls = config[agent_name]
        user_server_urls: tuple[str, ...] = ()
    else:
        if not request.agent_model:
            raise UsageError("--agent-model is required (or set $CKPT_DIR), unless --skip-server-start")
        if executor == "slurm" and request.servers_per_gpu > 1:
            raise UsageError("--servers-per-gpu is not supported with the SLURM executor: "
                             "SLURM gives every job step GPUs of its own")
        agent_name = agent_served_name(request)
        pools = pool_settings(request)
        parsers = pool_parsers(request, pools, host)
        servers = build_servers(request, pools, host.nodes, host.ports, host.cache_root,
                                host.cpu_kv_gib, parsers, slurm=executor == "slurm", gpu_mib=host.gpu_mib,
                                weight_bytes=host.weight_bytes, vllm_cli=host.vllm_cli, cpu_bf16=host.cpu_bf16)
        wrong = check_serve_flags((s.argv for s in servers), command_words(request.vllm_arg), host.vllm_flags,
                                  host.vllm_version)
        if wrong:
            raise UsageError(wrong)
        agent_urls = tuple(s.url for s in servers if s.role == "agent")
        user_server_urls = tuple(s.url for s in servers if s.role == "user")
    user_llm, user_urls = resolve_user(request, agent_name, agent_urls, user_server_urls, config)
    experts = resolve_experts(request, servers, config)
    addendum, source = read_addendum(request.agent_policy_addendum) if experts else ("", "")
    prices = read_prices(request, read_expert_info(request.expert_info), {e.name: e.model for e in experts})
    notes = (("CPU servers serve in float32: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 in "
              "/proc/cpuinfo), where float32 prefills 3.6-5x faster; --vllm-arg=--dtype=... chooses",)
             if any("--dtype" in s.argv and "float32" in s.argv for s in servers) and not host.cpu_bf16 else ())
    if request.deterministic:
        check_deterministic(servers, host)
    settings = eval_settings(request, len(agent_urls), host.cpus)
    return Plan(servers, agent_name, agent_urls, user_llm, user_urls, settings, Path(request.model_config_path),
                Path(request.log_dir), executor, experts, addendum, source, prices, notes, parsers,
                request.api_key_env or "")


def check_deterministic(servers: Sequence[ServerSpec], host: Host) -> None:
    """--deterministic holds only where vLLM's batch invariance does: servers this run starts, on GPUs of
    compute capability 9.0 or newer (Hopper), with a vLLM that has VLLM_BATCH_INVARIANT."""
    if not servers:
        raise UsageError("--deterministic needs servers this run starts (batch-invariant, VLLM_BATCH_INVARIANT=1); "
                         "servers already up cannot be checked: compare runs statistically (--compare) instead")
    if not host.batch_invariant_vllm:
        raise UsageError("--deterministic: the installed vLLM has no batch invariance (VLLM_BATCH_INVARIANT); "
                         "install one that has, or compare runs statistically (--compare)")
    for spec in servers:
        caps = [host.gpu_compute.get(g) for g in spec.gpus]
        if not spec.gpus or None in caps or min(c for c in caps if c is not None) < 9.0:
            where = f"GPUs {','.join(spec.gpus)}" if spec.gpus else "no GPU"
            raise UsageError(f"--deterministic needs GPUs of compute capability 9.0 or newer (H100, H200, B200) for "
                             f"vLLM's batch invariance; the {spec.role} server on port {spec.port} has {where}"
                             + (f" (compute capability {caps})" if spec.gpus else ""))


def pick_agent_name(request: Request, config: dict[str, tuple[str, ...]]) -> str:
    """Which model of a read endpoint file is the agent."""
    wanted = request.served_model_name or request.agent_model
    if wanted:
        if wanted not in config:
            raise UsageError(f"{request.model_config_path} lists no model {wanted!r} (it lists: {', '.join(config)})")
        return wanted
    agents = list(config) if len(config) == 1 else [name for name in config if name != request.user_llm]
    if len(agents) != 1:
        raise UsageError(f"{request.model_config_path} lists several models; name the agent with --served-model-name")
    return agents[0]


def sbatch_nodes(request: Request) -> tuple[Node, ...]:
    """The allocation --sbatch asks for, planned before it exists: --slurm-nodes nodes with GPUs enough
    for the pools spread over them, and a CPU per server plus one for the launcher."""
    given = [x for ids in (request.gpu_ids, request.user_gpu_ids) for x in (parse_gpu_ids(ids, "--gpu-ids") or ())]
    if any(":" in x for x in given):
        raise UsageError("--sbatch: node names are unknown before the job starts; give plain GPU ids")
    count = request.num_servers or SEED_SCRIPT_SERVERS
    user_tp = request.user_tensor_parallel_size if request.user_model else 0
    nodes = request.slurm_nodes or 1
    per_node = max(math.ceil((count * request.tensor_parallel_size + user_tp) / nodes), request.tensor_parallel_size,
                   user_tp, *(int(x) + 1 for x in given if x.isdigit()))
    gpus = tuple(str(i) for i in range(per_node))
    return tuple(Node(f"node{i + 1}", f"node{i + 1}", gpus, per_node + 1) for i in range(nodes))
