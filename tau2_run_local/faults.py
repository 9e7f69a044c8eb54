"""What a failed model call means, decided here and nowhere else: the machinery's faults are retried (with
backoff, on another server) and never scored; the model's are scored as τ²-bench scores them.
"""
from __future__ import annotations

import contextlib
import email.utils
import itertools
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .pacing import Pacer, backoff_s
from .routing import Lease

# What a failed call means is decided here and nowhere else. A score is a claim about the model: a
# fault of the machinery (rate limit, 5xx, timeout, lost connection, a server gone) is retried and, if
# it cannot be got past, leaves the simulation undone; it never becomes a reward of 0.
MACHINERY_STATUS = frozenset({408, 409, 425, 429})


MACHINERY_ERRORS = frozenset({"APIConnectionError", "APITimeoutError", "Timeout", "ConnectError", "ConnectTimeout",
                              "ReadTimeout", "ReadError", "WriteError", "RemoteProtocolError",
                              "ServiceUnavailableError", "InternalServerError", "BadGatewayError"})


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
            value = next((v for k, v in (headers or {}).items() if k.lower() == "retry-after"), None)
            if value is None:
                continue
            with contextlib.suppress(ValueError):
                return max(float(value), 0.0)
            with contextlib.suppress(TypeError, ValueError):
                when = email.utils.parsedate_to_datetime(value)
                return max((when - datetime.now(when.tzinfo)).total_seconds(), 0.0)
    return None


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
