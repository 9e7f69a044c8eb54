"""How many simulations are in flight: fixed, or steered by vLLM's own /metrics gauges (requests running
and waiting, KV-cache use) between a start and a ceiling.
"""
from __future__ import annotations

import contextlib
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from .defaults import ADAPTIVE_START_PER_SERVER
from .plan import Plan

KV_CACHE_FULL = 0.9  # above this share of the KV cache in use, vLLM starts preempting: shrink


KV_CACHE_ROOM = 0.75  # below it, with no request waiting, the servers can take more: grow


@dataclass
class Concurrency:
    """How many simulations are in flight. Fixed with --max-concurrency. Otherwise it starts at 16 per
    agent server and follows vLLM's /metrics on the servers the simulations use: it grows by half while
    every slot was taken during the last reading period, no request waits and the KV cache has room, and
    shrinks by a quarter when requests queue (two readings in a row) or the KV cache is nearly full, so
    the GPUs stay busy without preemption. Servers without vLLM's metrics (hosted APIs) leave it where it starts."""

    target: int
    ceiling: int
    gauges: tuple[str, ...]  # server roots whose /metrics steer it; () = fixed
    keys: dict[str, str] = field(default_factory=dict, repr=False)  # root -> the key that server requires
    period: float = 5.0
    in_flight: int = 0
    peak: int = 0
    readings: list[dict[str, float]] = field(default_factory=list)  # per reading: t, target, running, waiting, kv
    _next: float = 0.0
    _queued: int = 0
    _period_peak: int = 0  # the most in flight since the last reading
    _t0: float = field(default_factory=time.monotonic)

    @property
    def adaptive(self) -> bool:
        return bool(self.gauges)

    def observe(self) -> None:
        """Note the simulations in flight now (right after new ones started): whether every slot was
        taken is judged over the whole period, since with fast calls one is always just finishing."""
        self.peak = max(self.peak, self.in_flight)
        self._period_peak = max(self._period_peak, self.in_flight)

    def steer(self, backlog: bool) -> None:
        """One look at the servers, at most every `period` seconds. backlog: simulations wait for a slot."""
        now = time.monotonic()
        self.observe()
        if not self.gauges or now < self._next:
            return
        self._next = now + self.period
        seen = [g for g in (vllm_gauges(root, key=self.keys.get(root, "")) for root in self.gauges) if g]
        if not seen:
            return
        waiting, kv = sum(g["waiting"] for g in seen), max(g["kv"] for g in seen)
        self._queued = self._queued + 1 if waiting > 0 else 0
        floor = min(len(self.gauges), self.ceiling)
        if kv >= KV_CACHE_FULL or self._queued >= 2:
            self.target = max(floor, self.target - max(1, self.target // 4))
        elif backlog and waiting == 0 and kv < KV_CACHE_ROOM and self._period_peak >= self.target:
            self.target = min(self.ceiling, self.target + max(1, self.target // 2))
        self._period_peak = self.in_flight
        self.readings.append({"t": round(now - self._t0, 1), "in_flight": self.in_flight, "waiting": waiting,
                              "running": sum(g["running"] for g in seen), "kv": kv, "target": self.target})

    def summary(self) -> dict[str, Any]:
        return {"adaptive": self.adaptive, "ceiling": self.ceiling, "final_target": self.target,
                "peak_in_flight": self.peak, "readings": self.readings[-720:]}


VLLM_GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
               "vllm:kv_cache_usage_perc": "kv", "vllm:gpu_cache_usage_perc": "kv"}


def vllm_gauges(root: str, timeout: float = 1.0, key: str = "") -> dict[str, float] | None:
    """A vLLM server's requests running and waiting and its KV-cache use (0-1), from /metrics (which vLLM
    leaves open; a keyed server gets its key all the same); None when it has no such metrics."""
    request = urllib.request.Request(f"{root}/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
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


def make_concurrency(plan: Plan, keys: dict[str, str] | None = None) -> Concurrency:
    e = plan.eval
    start = min(e.max_concurrency, ADAPTIVE_START_PER_SERVER * max(len(plan.agent_urls), 1))
    gauges = tuple(dict.fromkeys(u.removesuffix("/v1") for u in (*plan.agent_urls, *plan.user_urls)))
    if not e.adaptive_concurrency:
        return Concurrency(e.max_concurrency, e.max_concurrency, ())
    return Concurrency(start, e.max_concurrency, gauges, {u.removesuffix("/v1"): k for u, k in (keys or {}).items()})
