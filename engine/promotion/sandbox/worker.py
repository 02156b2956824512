"""Serving a promoted script with no process per call: one long-lived sandboxed worker per script.

`run_script` starts a child per batch of inputs (about 100 ms here): right for verification, far
too slow for serving. A worker is the same child, under the same three layers (the static check
in the parent before it starts; the runtime layer's audit hook, restricted builtins and guarded
attributes; the OS layer's namespaces, read-only root, empty environment, rlimits and no new
processes), started once and then sent one request per line on its stdin. What differs:

- the worker never runs the script itself: for every call it forks a child from its pristine state
  (the allowed modules imported, the script compiled, nothing of it run), and that child installs the
  system-call filter and the audit hook, executes the script's module afresh and answers. Nothing a
  call changes (module globals, class attributes, the decimal context, caches) reaches the next
  call: call 61 behaves exactly like call 1, which is what verification saw. A call that dies or
  loops is killed alone (its own CPU limit);
- each call's process has its own CPU limit (`per_item_seconds` + 1); the worker's covers its own
  work (`WORKER_CPU_SECONDS`); when a worker is killed, times out or has served `MAX_CALLS`, the
  call in flight fails (the caller falls back to the tiers) and the next call starts a new worker;
- its output is read with a wall-clock timeout per call (`Limits.per_item_seconds` plus a margin).

When the OS layer is unavailable, no worker starts: the result is the same error `run_script`
gives (fail closed).
"""

from __future__ import annotations

import atexit
import json
import functools
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any

from engine.promotion.sandbox import IsolationUnavailable, Limits, SandboxResult, isolation
from engine.promotion.sandbox.child import child_source
from engine.promotion.sandbox.static import check_script

MAX_CALLS = 10_000
"""Calls one worker serves before it is replaced."""
WORKER_CPU_SECONDS = 60
"""The worker's RLIMIT_CPU (all its calls together); past it the kernel ends it and a new one starts."""
_MARGIN_S = 1.0


class Worker:
    """One sandboxed child serving `code`, one request at a time."""

    def __init__(self, code: str, limits: Limits):
        self.code, self.limits = code, limits
        self.calls = 0
        self.lock = threading.Lock()
        self.tmp = tempfile.mkdtemp(prefix="engine-sandbox-worker-")
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        root = os.path.join(self.tmp, "root")
        os.chmod(self.tmp, 0o711)
        plan = isolation.make_plan(root, cpu_seconds=max(self.limits.cpu_seconds, WORKER_CPU_SECONDS),
                                   memory_bytes=self.limits.memory_bytes, file_bytes=self.limits.file_bytes)
        plan.allow_fork = True  # the worker forks each call's child; that child can fork no more
        seccomp = isolation.seccomp_program()
        if not seccomp:
            raise IsolationUnavailable(f"no system-call filter for this machine ({isolation.platform.machine()})")
        report_r, report_w = os.pipe()
        plan.report_fd = report_w
        libc = isolation.libc()
        source = child_source(tmp="/tmp", read_roots=isolation.read_roots(), runtime=True, serve=True, seccomp=seccomp)
        argv = [isolation.python_executable(), "-I", "-S", "-X", "utf8", "-c", source]
        if isolation.backend() == "bwrap":
            isolation.stage_for_nobody(plan, self.tmp)
            argv = isolation.bwrap_argv(plan, argv)
            preexec = functools.partial(isolation.enter_bwrap, plan, libc)
        else:
            os.mkdir(root)
            preexec = functools.partial(isolation.isolate, plan, libc)
        env = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/tmp"}
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    env=env, preexec_fn=preexec)
        except subprocess.SubprocessError as e:
            os.close(report_w)
            reason = os.read(report_r, 1000).decode(errors="replace") or str(e)
            os.close(report_r)
            raise IsolationUnavailable(reason) from None
        os.close(report_w)
        os.close(report_r)
        assert proc.stdin is not None
        job = {"code": self.code, "per_item": self.limits.per_item_seconds, "max_output": self.limits.max_output_chars}
        proc.stdin.write((json.dumps(job) + "\n").encode())
        proc.stdin.flush()
        first = self._read_line(proc, self.limits.wall_seconds)
        if first is None or first.get("ready") is not True:
            proc.kill()
            proc.wait()
            if first is not None and "fatal" in first:
                raise _Fatal(f"script failed to load: {first['fatal']}")
            raise OSError("the sandbox worker did not start")
        return proc

    @staticmethod
    def _read_line(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any] | None:
        """One JSON line from the worker within `timeout` seconds, else None (dead, hung, garbage)."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        buf = b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # exited: a fatal load error is written without a newline
                break
            buf += chunk
            if len(buf) > 4 * 1_000_000 + 1024:
                return None
        try:
            value = json.loads(buf)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def call(self, inputs: dict[str, Any]) -> SandboxResult | None:
        """The script's answer; None when the worker failed (it is then closed)."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(inputs) + "\n").encode())
            self.proc.stdin.flush()
        except (OSError, ValueError):
            self.close()
            return None
        reply = self._read_line(self.proc, self.limits.per_item_seconds + _MARGIN_S)
        self.calls += 1
        if reply is None:
            self.close()
            return None
        if "error" in reply:
            if reply["error"] == "timeout":
                self.close()
            return SandboxResult(error=str(reply["error"]))
        if reply.get("output") is None:
            return SandboxResult(abstained=True)
        return SandboxResult(output=reply["output"])

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None and self.calls < MAX_CALLS

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a killed child always exits
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


class _Fatal(Exception):
    """The script did not load (a syntax error, `solve` missing): no point in retrying."""


_workers: dict[str, Worker] = {}
_workers_lock = threading.Lock()
STARTED = [0]
"""Workers started in this process (tests check that calls reuse one)."""


def serve_one(code: str, inputs: dict[str, Any], limits: Limits | None = None) -> SandboxResult:
    """`run_one` through the script's long-lived worker (started on first use, replaced when it
    dies or has served `MAX_CALLS`)."""
    limits = limits or Limits()
    problems = check_script(code)  # cached per script
    if problems:
        return SandboxResult(error="refused by the static check: " + "; ".join(problems))
    with _workers_lock:
        worker = _workers.get(code)
        if worker is None or not worker.alive:
            if worker is not None:
                worker.close()
            try:
                worker = _workers[code] = Worker(code, limits)
                STARTED[0] += 1
            except IsolationUnavailable as e:
                return SandboxResult(error=f"sandbox isolation unavailable, the script was not run: {e}")
            except _Fatal as e:
                return SandboxResult(error=str(e))
            except OSError as e:
                return SandboxResult(error=f"sandbox could not start: {e}")
    with worker.lock:
        result = worker.call(inputs)
    if result is None:
        with _workers_lock:
            if _workers.get(code) is worker:
                del _workers[code]
        return SandboxResult(error="the sandbox worker died or did not answer in time")
    return result


def close_all() -> None:
    with _workers_lock:
        workers = list(_workers.values())
        _workers.clear()
    for worker in workers:
        worker.close()


atexit.register(close_all)
