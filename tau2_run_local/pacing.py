"""How fast a pool is called: at most so many calls in flight and started a minute, halved on HTTP 429 and
won back one success at a time; exponential backoff with full jitter between retries.
"""
from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator

BACKOFF_BASE_S, BACKOFF_CAP_S = 1.0, 30.0  # exponential backoff between retries of a failed call


def backoff_s(attempt: int, retry_after: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter (callers that failed together do not come back together),
    never shorter than what the endpoint asked for."""
    jittered = rng.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt))
    return max(retry_after or 0.0, jittered) * rng.uniform(1.0, 1.2)


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
