"""Advisory leases held in the store (table `leases`, migration 085), the same on SQLite and
PostgreSQL: one row per name, with its owner (host, pid and a random token) and an expiry.

    lease = try_acquire(store, "batch:3f2a", ttl_s=60)   # None: someone else holds it (`holder`)
    lease.keep_alive()                                    # renewed on a daemon thread ...
    lease.release()                                       # ... until released

A lease is taken when the name is free, its lease has expired, or it was held by a process of
this host that is gone (a SIGKILLed run frees its leases at once for the next one on the host).
A holder that dies on another host frees its lease when it expires; a live holder renews it.
Leases are advisory: only code that asks for one is kept out.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from engine.clock import now_iso

log = logging.getLogger("engine.store.leases")

HOST = socket.gethostname()

_TAKE = ("INSERT INTO leases (name, owner, host, pid, acquired_at, expires) VALUES (?, ?, ?, ?, ?, ?) "
         "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, host = excluded.host, pid = excluded.pid, "
         "acquired_at = excluded.acquired_at, expires = excluded.expires "
         "WHERE leases.expires < ? OR leases.owner = ? RETURNING owner")


@dataclass
class Lease:
    store: Any
    name: str
    owner: str
    ttl_s: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def renew(self) -> bool:
        """Push the expiry on; False when the lease was lost (it expired and another took it)."""
        return bool(self.store.execute("UPDATE leases SET expires = ? WHERE name = ? AND owner = ?",
                                       [time.time() + self.ttl_s, self.name, self.owner], flush=False))

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.store.execute("DELETE FROM leases WHERE name = ? AND owner = ?", [self.name, self.owner], flush=False)

    def keep_alive(self) -> None:
        """Renew the lease every third of its time to live, on a daemon thread, until released."""
        def beat() -> None:
            while not self._stop.wait(self.ttl_s / 3):
                try:
                    if not self.renew():
                        log.warning("lease %s was lost (it expired and was taken over)", self.name)
                        return
                except Exception as e:  # noqa: BLE001 - a store outage: try again at the next beat
                    log.warning("renewing lease %s failed: %s", self.name, e)

        self._thread = threading.Thread(target=beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def new_owner() -> str:
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def try_acquire(store: Any, name: str, *, ttl_s: float, owner: str | None = None) -> Lease | None:
    """The lease on `name`, or None while another live holder has it."""
    owner = owner or new_owner()
    now = time.time()
    taken = store.execute_returning(_TAKE, [name, owner, HOST, os.getpid(), now_iso(), now + ttl_s, now, owner])
    if taken is not None and taken.get("owner") == owner:
        return Lease(store, name, owner, ttl_s)
    current = holder(store, name)
    if current is None:  # released between the two statements: try once more
        taken = store.execute_returning(_TAKE, [name, owner, HOST, os.getpid(), now_iso(), now + ttl_s, now, owner])
        return Lease(store, name, owner, ttl_s) if taken is not None and taken.get("owner") == owner else None
    if current["host"] == HOST and not _alive(int(current["pid"] or 0)):  # its process is gone
        if store.execute("UPDATE leases SET owner = ?, pid = ?, acquired_at = ?, expires = ? "
                         "WHERE name = ? AND owner = ?",
                         [owner, os.getpid(), now_iso(), time.time() + ttl_s, name, current["owner"]], flush=False):
            return Lease(store, name, owner, ttl_s)
    return None


def holder(store: Any, name: str) -> dict[str, Any] | None:
    """The row of the lease on `name` (owner, host, pid, acquired_at, expires), or None when free."""
    return store.execute_returning("SELECT owner, host, pid, acquired_at, expires FROM leases WHERE name = ?",
                                   [name])


def describe(row: dict[str, Any]) -> str:
    return f"process {row.get('pid')} on {row.get('host')}, since {str(row.get('acquired_at') or '?')[:19]}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
