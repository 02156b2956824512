"""The review console's logins: server-side sessions and a limit on failed logins.

A session is a random id (32 bytes from `secrets`) that the server keeps with its expiry; the
cookie carries only the id, with a Max-Age of the same length. Logging out deletes the id, so a
copy of the old cookie no longer works; so does a server restart. Failed logins are counted per
client: after `max_failures` within `window` seconds, the login answers 429 until the oldest
failure leaves the window. `clock` is injectable (tests move time instead of sleeping).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict, deque
from typing import Callable

SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
LOGIN_FAILURES = 5
LOGIN_WINDOW = 60.0
MAX_CLIENTS = 10_000


class Sessions:
    """Live session ids and their expiry (monotonic seconds); the oldest go first past `limit`."""

    def __init__(self, seconds: int = SESSION_SECONDS, *, limit: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic):
        self.seconds = seconds
        self.limit = limit
        self.clock = clock
        self._live: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def start(self) -> str:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._live[sid] = self.clock() + self.seconds
            while len(self._live) > self.limit:
                self._live.popitem(last=False)
        return sid

    def valid(self, sid: str) -> bool:
        if not sid:
            return False
        with self._lock:
            expires = self._live.get(sid)
            if expires is None:
                return False
            if self.clock() >= expires:
                del self._live[sid]
                return False
            return True

    def end(self, sid: str) -> None:
        with self._lock:
            self._live.pop(sid, None)


class LoginLimiter:
    """At most `max_failures` failed logins per client within `window` seconds."""

    def __init__(self, max_failures: int = LOGIN_FAILURES, window: float = LOGIN_WINDOW, *,
                 clients: int = MAX_CLIENTS, clock: Callable[[], float] = time.monotonic):
        self.max_failures = max_failures
        self.window = window
        self.clients = clients
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        seen = self._failures.get(client)
        if seen is None:
            return deque()
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if not seen:
            del self._failures[client]
        return seen

    def retry_after(self, client: str) -> int:
        """0 when `client` may try to log in now, else the seconds until it may."""
        with self._lock:
            now = self.clock()
            seen = self._recent(client, now)
            if len(seen) < self.max_failures:
                return 0
            return max(1, int(seen[0] + self.window - now + 0.999))

    def failed(self, client: str) -> None:
        with self._lock:
            now = self.clock()
            seen = self._recent(client, now)
            self._failures[client] = seen
            self._failures.move_to_end(client)
            seen.append(now)
            while len(self._failures) > self.clients:
                self._failures.popitem(last=False)
