"""The run's first turn, checked twice before a simulation is spent: its tokens, counted with each served
checkpoint's own tokenizer, against --max-model-len before anything starts; and, once the servers serve, a
few probes of each pool shaped like it (the preflight), whose verdict can stop the run at once.
"""
from __future__ import annotations

import concurrent.futures as futures
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError
from .plan import Plan, PoolParsers
from .preflight import ProbeRequest, first_requests, first_turn_tokens, judge, probe_pool
from .settings import Request

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
HOSTED = "hosted_vllm/"  # litellm's prefix; the servers answer to the name after it


@dataclass(frozen=True)
class FirstTurn:
    """One domain's first prompt as one pool's servers get it, counted by that pool's checkpoint."""

    pool: str  # "agent", "user" or "expert NAME": whose servers
    role: str  # "agent" or "user": who speaks
    domain: str
    tokens: int
    limit: int | None  # the checkpoint's own context (config.json), if it says


@dataclass(frozen=True)
class Probe:
    """One pool's preflight: the calls sent, where, and what the replies are judged by."""

    label: str
    urls: tuple[str, ...]
    model: str  # the name the servers answer to
    requests: tuple[ProbeRequest, ...]
    sampling: dict[str, Any]
    parsers: PoolParsers | None  # None: servers this run did not start
    prompt_tokens: int | None
    expect_calls: bool = True


def count_first_turns(request: Request, plan: Plan, load_tau2: Callable[[], Any]) -> tuple[FirstTurn, ...]:
    """Each requested domain's first turn, counted for every fleet pool whose folder has a tokenizer (a
    folder with config.json alone, as the tests' stand-in checkpoints, is skipped): the agent's prompt,
    and the user simulator's where its domain gives it tools (telecom)."""
    pools = {(s.role, s.served_name): s.model for s in plan.servers}
    self_play = plan.user_urls == plan.agent_urls
    wanted = []
    for (role, name), model in pools.items():
        if any((Path(model) / f).is_file() for f in TOKENIZER_FILES):
            speakers = (["agent"] if role != "user" else []) + (["user"] if role == "user" or (
                role == "agent" and self_play) else [])
            wanted += [(role if role != "expert" else f"expert {name}", model,
                        request.chat_template if role == "agent" else None, speaker) for speaker in speakers]
    if not wanted:
        return ()
    load_tau2()
    return tuple(FirstTurn(pool, speaker, domain, first_turn_tokens(model, domain, speaker, template),
                           model_limit(model))
                 for pool, model, template, speaker in wanted for domain in plan.eval.domains
                 if speaker == "agent" or first_requests(domain, "user")[0].tools)


def model_limit(folder: str) -> int | None:
    """The context a checkpoint's config.json gives, which vLLM takes when --max-model-len is not given."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    for doc in (config, config.get("text_config") or {}):
        for key in ("max_position_embeddings", "max_seq_len", "seq_length"):
            if isinstance(doc.get(key), int):
                return doc[key]
    return None


def context_line(request: Request, turns: tuple[FirstTurn, ...]) -> str | None:
    """One line for the plan: what the first turns need and what holds them. A --max-model-len that cannot
    hold one with --max-new-tokens of room is bad input: every call of that domain would be refused."""
    if not turns:
        return None
    room = request.max_new_tokens or 0
    worst = max(turns, key=lambda t: t.tokens)
    length = request.max_model_len
    if length and worst.tokens + max(room, 1) > length:
        whose = "the agent's" if worst.role == "agent" else "the user simulator's"
        raise UsageError(f"--max-model-len {length} cannot hold {worst.domain}'s first turn: {whose} prompt has "
                         f"{worst.tokens} tokens on the {worst.pool} servers (their checkpoint's tokenizer)"
                         + (f" and --max-new-tokens {room} more" if room else "")
                         + f"; give --max-model-len {worst.tokens + max(room, 1)} or more, and more still for "
                           f"the conversation that follows")
    groups: dict[str, list[str]] = {}
    for t in turns:
        groups.setdefault(t.pool if t.role == "agent" else "user simulator", []).append(f"{t.domain} {t.tokens}")
    needs = "; ".join(f"{who}: {', '.join(counts)}" for who, counts in groups.items())
    if length:
        holds = f"--max-model-len {length} holds the longest" + (f" with --max-new-tokens {room}" if room else "")
    else:
        limits = {t.pool: t.limit for t in turns if t.limit}
        holds = "no --max-model-len: each server takes its checkpoint's own context" + (
            f" ({', '.join(f'{pool} {limit}' for pool, limit in limits.items())})" if limits else "")
    return f"first turns, in tokens by each checkpoint's tokenizer: {needs}; {holds}"


def plan_probes(plan: Plan, turns: tuple[FirstTurn, ...]) -> list[Probe]:
    """The pools to probe: the agent's; the user simulator's when it is served here or at an endpoint (a
    hosted API is not called), with its own opening and, where its domain gives it tools, those; served
    experts, as the agent."""
    e = plan.eval
    parsers = {(p.role, p.name): p for p in plan.parsers}
    agent_parsers = parsers.get(("agent", plan.agent_name))

    def tokens(pool: str, role: str) -> int | None:
        return max((t.tokens for t in turns if t.pool == pool and t.role == role), default=None)

    agent_asks = tuple(r for d in e.domains for r in first_requests(d, "agent"))
    probes = [Probe("agent", plan.agent_urls, plan.agent_name, agent_asks, e.agent_args(), agent_parsers,
                    tokens("agent", "agent"))]
    if plan.user_urls:
        self_play = plan.user_urls == plan.agent_urls
        served = next((p for p in plan.parsers if p.role == "user"), None)
        user_parsers, pool = (agent_parsers, "agent") if self_play else (served, "user")
        asks = [r for d in e.domains for r in first_requests(d, "user")]
        model = plan.user_llm.removeprefix(HOSTED)
        opening = tuple(r for r in asks if not r.tools)
        if opening and not self_play:  # the agent's probes already judge those servers
            probes.append(Probe("user simulator", plan.user_urls, model, opening, e.user_args(), user_parsers, None,
                                expect_calls=False))
        with_tools = tuple(r for r in asks if r.tools)
        if with_tools:
            probes.append(Probe("user simulator with its tools", plan.user_urls, model, with_tools, e.user_args(),
                                user_parsers, tokens(pool, "user")))
    for x in plan.experts:
        if x.source == "served":
            probes.append(Probe(f"expert {x.name}", x.urls, x.name, agent_asks, e.agent_args(),
                                parsers.get(("expert", x.name)), tokens(f"expert {x.name}", "agent")))
    return probes


def preflight(plan: Plan, turns: tuple[FirstTurn, ...], say: Callable[[str], None],
              keys: Mapping[str, str] | None = None) -> str | None:
    """Probe every pool at once and say one line for each; the first verdict that should stop the run, or
    None. Probes go straight to the servers: never into results, tokens or routing counts, but with the key
    the run's own calls send (keys: endpoint -> key; one key a run, so a pool's first endpoint says). A pool
    that answered nothing because of the machinery (refused, 5xx, 429, a key) is left to the run's own fault
    handling, which retries or stops its domain with its own message."""
    keys = keys or {}
    began = time.monotonic()
    probes = plan_probes(plan, turns)
    timeout = plan.eval.faults.request_timeout
    with futures.ThreadPoolExecutor(len(probes)) as pool:
        answers = list(pool.map(lambda p: probe_pool(p.urls, p.model, p.requests, p.sampling, keys.get(p.urls[0]),
                                                     timeout), probes))
    stop = None
    for probe, replies in zip(probes, answers, strict=True):
        tool, reasoning = (probe.parsers.tool_call_parser, probe.parsers.reasoning_parser) if probe.parsers \
            else (None, None)
        verdict = judge(replies, tool, reasoning, probe.sampling.get("max_tokens"), probe.prompt_tokens,
                        probe.expect_calls)
        machinery = verdict.kind == "unusable" and any(r.status != 200 for r in replies)
        blocking = verdict.blocking and not machinery
        stop = stop or (f"{probe.label}: {verdict.message}" if blocking else None)
        say(f"preflight: {probe.label}: " + ("" if verdict.kind == "ok" else "stop: " if blocking else "warning: ")
            + verdict.message + ("; the run's fault handling takes it from here" if machinery else ""))
    say(f"preflight: {sum(map(len, answers))} probes of {len(probes)} pool(s) in {time.monotonic() - began:.1f}s")
    return stop
