"""Checks and small parsers of the request's values (counts, GPU lists, ports, JSON sampling arguments,
NAME=VALUE options): each failure is bad input, one line.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .defaults import DEFAULT_LLM_ARGS, KNOWN_DOMAINS
from .errors import UsageError
from .settings import Request


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


def check_numbers(request: Request) -> None:
    """Counts and sizes that must be positive."""
    positive = {
        "--num-servers": request.num_servers, "--max-steps": request.max_steps, "--num-trials": request.num_trials,
        "--max-concurrency": request.max_concurrency, "--num-tasks": request.num_tasks,
        "--tensor-parallel-size": request.tensor_parallel_size, "--servers-per-gpu": request.servers_per_gpu,
        "--user-tensor-parallel-size": request.user_tensor_parallel_size, "--max-model-len": request.max_model_len,
        "--server-timeout": request.server_timeout, "--max-new-tokens": request.max_new_tokens,
        "--retry-timeout": request.retry_timeout, "--request-timeout": request.request_timeout,
        "--user-max-concurrency": request.user_max_concurrency, "--user-max-rpm": request.user_max_rpm,
        "--slurm-nodes": request.slurm_nodes, "--max-errors": request.max_errors, "--workers": request.workers,
    }
    for flag, value in positive.items():
        if value is not None and value <= 0:
            raise UsageError(f"{flag} must be positive, not {value}")
    if request.slurm_max_resubmits < 0:
        raise UsageError(f"--slurm-max-resubmits must not be negative, not {request.slurm_max_resubmits}")
    if request.slurm_time is not None:
        slurm_seconds(request.slurm_time)
    if request.api_key_env is not None and not request.api_key_env.isidentifier():
        raise UsageError(f"--api-key-env takes the name of an environment variable, not {request.api_key_env!r}")
    if request.stagger_delay is not None and request.stagger_delay < 0:
        raise UsageError(f"--stagger-delay must not be negative, not {request.stagger_delay}")
    if request.gpu_memory_utilization is not None and not 0 < request.gpu_memory_utilization <= 1:
        raise UsageError(f"--gpu-memory-utilization must be in (0, 1], not {request.gpu_memory_utilization}")
    unknown = [d for d in request.domains if d not in KNOWN_DOMAINS]
    if unknown:
        raise UsageError(f"unknown domain {unknown[0]!r}; choose from {', '.join(KNOWN_DOMAINS)}")
    if len(set(request.domains)) != len(request.domains):
        raise UsageError("--domains lists a domain twice")


def slurm_seconds(text: str) -> int | None:
    """SLURM's time limit in seconds (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS); None for no limit."""
    if text.upper() in ("INFINITE", "UNLIMITED"):
        return None
    days, dash, clock = text.partition("-")
    if not dash:
        days, clock = "0", text
    parts = clock.split(":")
    if not days.isdigit() or len(parts) > 3 or not all(p.isdigit() for p in parts):
        raise UsageError(f"--slurm-time takes SLURM's formats (MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]), not {text!r}")
    n = [int(p) for p in parts]
    if dash:  # D-HH, D-HH:MM, D-HH:MM:SS
        hours, minutes, seconds = (n + [0, 0])[:3]
    elif len(n) == 3:  # HH:MM:SS
        hours, minutes, seconds = n
    else:  # MM, MM:SS
        hours, minutes, seconds = 0, n[0], (n[1:] or [0])[0]
    return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds


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


def check_implementations(request: Request) -> None:
    """τ²-bench's solo agent works only with its dummy user, and the dummy user only with it."""
    if (request.agent == "llm_agent_solo") != (request.user == "dummy_user"):
        raise UsageError("--agent llm_agent_solo and --user dummy_user go together (τ²-bench's solo mode)")
    if request.expert and request.agent != "llm_agent":
        raise UsageError(f"--expert works with --agent llm_agent, not {request.agent}")
