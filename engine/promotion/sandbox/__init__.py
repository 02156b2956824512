"""Run generated (untrusted) scripts in three layers that each hold alone.

A promoted script defines `solve(inputs: dict) -> output | None` (None abstains).

1. **Language** (`static`): an AST allow-list, checked in the parent when a script is proposed,
   when an artifact is loaded and before every run. A refused script never starts a process. It
   closes every attribute path to dunders it can see: attribute reads, class patterns
   (`case C(__class__=c)`), format fields, dunder strings, `type(name, bases, dict)`, special
   methods outside an allow-list, `functools.update_wrapper`.
2. **Runtime** (`child`): in the child, an audit hook installed before the script's code exists in
   the process, every name it uses bound when it was defined (a script that rebinds `any`, `str` or
   `os.path.realpath` changes nothing); the script runs in a fresh namespace with restricted
   builtins, read-only copies of allowed modules, guarded attribute reads and checked class patterns.
3. **OS** (`isolation`): bubblewrap where it works (user, PID, mount, network, IPC, UTS namespaces,
   `nobody`), else the engine's own namespaces; a read-only root holding only the Python
   installation, an empty environment, rlimits; and a seccomp filter: no signals to other
   processes, no new processes or programs. **Fails closed**: if the isolation cannot be set up,
   the script does not run (`isolation_problem()` says why).

What the parent reads back is capped: the reply at the outputs' size, stderr (prints, tracebacks)
at `OUTPUT_CAP_BYTES`, then truncated with a marker.

Only the step's declared inputs reach the child, as JSON on stdin. Every failure (a refused
script or call, a crash, a limit, a timeout, output that is not strict JSON) becomes a
`SandboxResult` with `error` set; callers then fall back to the llm.
"""

from __future__ import annotations

import json
import functools
import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Collection

from engine.promotion.sandbox import isolation
from engine.promotion.sandbox.child import child_source
from engine.promotion.sandbox.static import check_script

LAYERS = frozenset({"static", "runtime", "os"})


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 2
    memory_bytes: int = 512 * 1024 * 1024
    file_bytes: int = 1024 * 1024
    wall_seconds: float = 5.0
    per_item_seconds: float = 1.0
    max_output_chars: int = 1_000_000


@dataclass
class SandboxResult:
    output: Any = None
    abstained: bool = False
    error: str | None = None
    confidence: float | None = None
    """A classifier's top probability for the answer it gave (scripts and lookups: None)."""

    @property
    def answered(self) -> bool:
        return self.error is None and not self.abstained


class IsolationUnavailable(Exception):
    """The OS layer could not be set up; carries the reason."""


OUTPUT_CAP_BYTES = 1024 * 1024
"""What the parent keeps of a child's stderr (prints, tracebacks); the rest is read and dropped."""
TRUNCATED = b"\n[... output truncated by the sandbox]"


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str


def _drain(proc: subprocess.Popen[bytes], job: bytes, deadline: float, caps: tuple[int, int]) -> tuple[bytes, bytes]:
    """Write the job, then read both pipes until they close, keeping at most `caps` bytes of each
    (then a marker): a script that prints gigabytes costs the parent no more than the caps."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    kept = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    cap = {proc.stdout.fileno(): caps[0], proc.stderr.fileno(): caps[1]}
    dropped = dict.fromkeys(kept, False)
    to_write = memoryview(job)
    os.set_blocking(proc.stdin.fileno(), False)
    writer: int | None = proc.stdin.fileno()
    readers = set(kept)
    while readers or writer is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(proc.args, 0)
        ready_r, ready_w, _ = select.select(list(readers), [writer] if writer is not None else [], [], left)
        if ready_w and writer is not None:
            try:
                to_write = to_write[os.write(writer, to_write[:1 << 16]):]
            except (BrokenPipeError, BlockingIOError) as e:
                if isinstance(e, BrokenPipeError):
                    to_write = to_write[len(to_write):]
            if not to_write:
                proc.stdin.close()
                writer = None
        for fd in ready_r:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                readers.discard(fd)
                continue
            room = cap[fd] - len(kept[fd])
            if room > 0:
                kept[fd] += chunk[:room]
            if len(chunk) > room:
                dropped[fd] = True
    out, err = (bytes(kept[f.fileno()]) + (TRUNCATED if dropped[f.fileno()] else b"")
                for f in (proc.stdout, proc.stderr))
    return out, err


def _communicate(argv: list[str], job: bytes, env: dict[str, str], wall: float, caps: tuple[int, int],
                 preexec_fn: Any, cwd: str | None = None, pass_fds: tuple[int, ...] = ()) -> Finished:
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=cwd, preexec_fn=preexec_fn, pass_fds=pass_fds)
    try:
        out, err = _drain(proc, job, time.monotonic() + wall, caps)
        returncode = proc.wait(timeout=max(1.0, wall))
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    return Finished(returncode, out.decode(errors="replace"), err.decode(errors="replace"))


def _spawn(source: str, job: dict[str, Any], limits: Limits, layers: Collection[str], wall: float,
           tmp: str) -> Finished:
    env = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/tmp"}
    argv = [isolation.python_executable(), "-I", "-S", "-X", "utf8", "-c", source]
    data = json.dumps(job).encode()
    # The reply holds every output (each at most max_output characters) plus a little framing.
    caps = (limits.max_output_chars * len(job["inputs"]) + 64 * len(job["inputs"]) + 4096, OUTPUT_CAP_BYTES)
    if "os" not in layers:  # tests only: prove that the other layers hold alone
        import resource

        def limits_only() -> None:  # pragma: no cover - runs in the forked child
            os.setsid()
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))

        return _communicate(argv, data, env, wall, caps, limits_only, cwd=tmp)
    root = os.path.join(tmp, "root")
    os.chmod(tmp, 0o711)
    plan = isolation.make_plan(root, cpu_seconds=limits.cpu_seconds, memory_bytes=limits.memory_bytes,
                               file_bytes=limits.file_bytes)
    report_r, report_w = os.pipe()
    plan.report_fd = report_w
    libc = isolation.libc()
    if isolation.backend() == "bwrap":
        isolation.stage_for_nobody(plan, tmp)
        argv = isolation.bwrap_argv(plan, argv)
        preexec = functools.partial(isolation.enter_bwrap, plan, libc)
    else:
        os.mkdir(root)
        preexec = functools.partial(isolation.isolate, plan, libc)
    try:
        return _communicate(argv, data, env, wall, caps, preexec)
    except subprocess.SubprocessError as e:
        if isinstance(e, subprocess.TimeoutExpired):
            raise
        os.close(report_w)
        report_w = -1
        reason = os.read(report_r, 1000).decode(errors="replace") or str(e)
        if isolation.backend() == "bwrap" or "Invalid argument" not in reason:
            raise IsolationUnavailable(reason) from None
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
    # The forked child had a second thread (started by an at-fork hook of this process) and could
    # not enter a user namespace: once more through a fresh interpreter, which starts with one.
    return _launch(plan, argv, data, env, wall, caps)


def _launch(plan: isolation.Plan, argv: list[str], data: bytes, env: dict[str, str], wall: float,
            caps: tuple[int, int]) -> Finished:
    report_r, report_w = os.pipe()
    plan.report_fd = report_w
    try:
        finished = _communicate(isolation.launcher_argv(plan, argv, env), data, {"LANG": "C.UTF-8"}, wall, caps,
                                None, pass_fds=(report_w,))
        os.close(report_w)
        report_w = -1
        reason = os.read(report_r, 1000).decode(errors="replace")
        if reason:
            raise IsolationUnavailable(reason)
        return finished
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)


def run_script(code: str, inputs: list[dict[str, Any]], limits: Limits | None = None, *,
               layers: Collection[str] = LAYERS) -> list[SandboxResult]:
    """Run `solve` over each input in one sandboxed child; one result per input, in order.
    `layers` exists for tests that show each layer holding alone; never narrow it otherwise."""
    limits = limits or Limits()
    if not inputs:
        return []
    if "static" in layers:
        problems = check_script(code)
        if problems:
            return [SandboxResult(error="refused by the static check: " + "; ".join(problems))] * len(inputs)
    seccomp = b""
    if "os" in layers:
        seccomp = isolation.seccomp_program()
        if not seccomp:
            return [SandboxResult(error="sandbox isolation unavailable, the script was not run: no system-call "
                                        f"filter for this machine ({isolation.platform.machine()})")] * len(inputs)
    tmp = tempfile.mkdtemp(prefix="engine-sandbox-")
    inside_tmp = "/tmp" if "os" in layers else os.path.realpath(tmp)
    source = child_source(tmp=inside_tmp, read_roots=isolation.read_roots(), runtime="runtime" in layers,
                          seccomp=seccomp)
    job = {"code": code, "inputs": inputs, "per_item": limits.per_item_seconds,
           "max_output": limits.max_output_chars}
    wall = limits.wall_seconds + limits.per_item_seconds * len(inputs)
    try:
        proc = _spawn(source, job, limits, layers, wall, tmp)
    except subprocess.TimeoutExpired:
        return [SandboxResult(error=f"timeout after {wall:.1f}s")] * len(inputs)
    except IsolationUnavailable as e:
        return [SandboxResult(error=f"sandbox isolation unavailable, the script was not run: {e}")] * len(inputs)
    except OSError as e:
        return [SandboxResult(error=f"sandbox could not start: {e}")] * len(inputs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _results(proc, len(inputs))


def _results(proc: Finished, n: int) -> list[SandboxResult]:
    try:
        reply = json.loads(proc.stdout)
        if not isinstance(reply, dict):
            raise ValueError("not an object")
    except ValueError:
        why = f"exit {proc.returncode}" + (f" (signal {-proc.returncode})" if proc.returncode < 0 else "")
        tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
        return [SandboxResult(error=f"sandbox died: {why} {' '.join(tail)}"[:500].strip())] * n
    if "isolation" in reply:
        return [SandboxResult(error=f"sandbox isolation unavailable, the script was not run: {reply['isolation']}")] * n
    if "fatal" in reply:
        return [SandboxResult(error=f"script failed to load: {reply['fatal']}")] * n
    items = reply.get("results")
    if not isinstance(items, list) or len(items) != n:
        return [SandboxResult(error="sandbox returned a malformed reply")] * n
    out = []
    for item in items:
        if not isinstance(item, dict):
            out.append(SandboxResult(error="sandbox returned a malformed reply"))
        elif "error" in item:
            out.append(SandboxResult(error=str(item["error"])))
        elif item.get("output") is None:
            out.append(SandboxResult(abstained=True))
        else:
            out.append(SandboxResult(output=item["output"]))
    return out


def run_one(code: str, inputs: dict[str, Any], limits: Limits | None = None) -> SandboxResult:
    return run_script(code, [inputs], limits)[0]


_probe_lock = threading.Lock()
_probe: list[str | None] = []


def isolation_problem(refresh: bool = False) -> str | None:
    """None when the OS layer can be set up here; else why not (scripts then never run). Cached."""
    with _probe_lock:
        if refresh or not _probe:
            result = run_script("def solve(inputs):\n    return 1\n", [{}],
                                Limits(wall_seconds=20, per_item_seconds=5))[0]
            _probe[:] = [None if result.output == 1 else (result.error or "the probe script did not answer")]
        return _probe[0]


__all__ = ["LAYERS", "IsolationUnavailable", "Limits", "SandboxResult", "check_script", "isolation_problem",
           "run_one", "run_script"]
