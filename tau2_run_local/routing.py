"""Which server holds a conversation: the least busy live server of its pool, kept for the whole
conversation (its prefix cache stays there), moved only when that server fails.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping

from .readiness import http_get_json


class NoLiveServer(Exception):
    """Every server of a pool is gone: the simulations that need it cannot run."""


class Router:
    """Sends each conversation to a live server with the fewest conversations in flight, so load stays
    even and each conversation's prefix cache stays on one server. Servers within one conversation of
    the fewest count as equally busy; of those the one that has served the fewest conversations wins,
    so conversation counts stay even too when conversations differ in length. `keys`: what each keyed
    server requires, sent with every call to it."""

    def __init__(self, urls: Iterable[str], keys: Mapping[str, str] | None = None):
        self._lock = threading.Lock()
        self.urls = list(urls)
        self.keys = {u: k for u, k in (keys or {}).items() if u in self.urls}
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
            url = min((u for u in live if self.in_flight[u] <= least + 1),
                      key=lambda u: (self.served[u], self.in_flight[u]))
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

    @property
    def key(self) -> str:
        """What the held server requires ('' for none)."""
        return self.router.keys.get(self.url, "")

    def call_args(self) -> dict[str, str]:
        """litellm's arguments that send a call to the held server: its URL, and its key if it requires one."""
        return {"api_base": self.url, **({"api_key": self.key} if self.key else {})}

    def server_gone(self) -> bool:
        """Nothing answers at the server's address any more (any HTTP answer means it is there)."""
        return http_get_json(f"{self.url.removesuffix('/v1')}/health", timeout=2.0, key=self.key)[0] == 0

    def move(self, server_gone: bool) -> None:
        """Hold another server of the pool: the gone one leaves routing; a failing one stays in it."""
        if server_gone:
            self.on_dead(self.url)
        elif not self.router.others_live(self.url):
            return
        failed, self.url = self.url, ""  # held by none until acquire() returns: __exit__ releases nothing
        self.router.release(failed)
        self.url = self.router.acquire(avoid=failed)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.url:
            self.router.release(self.url)
