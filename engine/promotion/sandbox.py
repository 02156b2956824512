"""Run generated (untrusted) scripts in a separate, locked-down process.

A promoted script defines `solve(inputs: dict) -> output | None` (None abstains). It runs in a
child Python (`-I -S`: isolated, no site) with:

- resource limits (`setrlimit`): CPU seconds, address space, file size, no new processes;
  plus a wall-clock timeout from the parent;
- no network: the child enters a fresh user + network namespace where the kernel allows it
  (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`), and in every case an audit hook refuses sockets;
- no writes outside its temporary directory, and no reads outside the standard library and that
  directory (so neither `/proc/<parent>/environ` nor project files): enforced by a
  `sys.addaudithook` hook installed before the script's code runs (hooks cannot be removed);
  subprocesses, `os.system`, `exec*`, `fork`, `ctypes` and signals to other processes are refused;
- a scrubbed environment (PATH and a HOME/TMPDIR inside the temp dir; no keys) and only the step's
  declared inputs, passed as JSON on stdin.

Every failure (a refused call, a crash, a limit, a timeout, bad JSON) becomes a `SandboxResult`
with `error` set; callers then fall back to the llm.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Limits:
    cpu_seconds: int = 2
    memory_bytes: int = 512 * 1024 * 1024
    file_bytes: int = 1024 * 1024
    wall_seconds: float = 5.0
    per_item_seconds: float = 1.0


@dataclass
class SandboxResult:
    output: Any = None
    abstained: bool = False
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.error is None and not self.abstained


# The child's entry point. Reads the job from stdin, then locks itself down, then runs the code.
_BOOTSTRAP = r'''
import json, os, sys, signal
job = json.loads(sys.stdin.read())
TMP = os.path.realpath(job["tmp"])
ALLOWED_READ = tuple(os.path.realpath(p) for p in job["read_roots"]) + (TMP,)
_out = sys.stdout
code = compile(job["code"], "promoted.py", "exec")

def _inside(path, roots):
    try:
        p = os.path.realpath(os.fsdecode(path)) if not isinstance(path, int) else None
    except Exception:
        return False
    return p is not None and any(p == r or p.startswith(r + os.sep) for r in roots)

DENY_PREFIX = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
               "os.forkpty", "os.system", "os.kill", "os.killpg", "pty.", "ctypes.", "winreg.",
               "os.putenv", "os.unsetenv", "signal.pthread_kill", "sys.addaudithook", "webbrowser.",
               "urllib.Request", "ftplib.", "http.client.", "smtplib.", "imaplib.", "poplib.", "nntplib.",
               "telnetlib.", "sys._current_frames", "sys.settrace", "sys.setprofile", "os.setxattr",
               "os.chown", "os.chflags", "os.lchown", "resource.setrlimit", "resource.prlimit")
PATH_WRITE = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.symlink", "os.link",
              "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile", "shutil.copytree",
              "os.removexattr")
DENY_IMPORT = {"ctypes", "_ctypes", "cffi", "_posixsubprocess", "multiprocessing", "_multiprocessing"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _hook(event, args):
    if event.startswith(DENY_PREFIX):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args and str(args[0]).split(".")[0] in DENY_IMPORT:
        raise PermissionError(f"sandbox: import {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE_FLAGS)
        if writing and not _inside(path, (TMP,)):
            raise PermissionError(f"sandbox: writing {path} is not allowed")
        if not _inside(path, ALLOWED_READ):
            raise PermissionError(f"sandbox: reading {path} is not allowed")
    elif event in PATH_WRITE:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a, (TMP,)):
                raise PermissionError(f"sandbox: {event} on {a} is not allowed")

sys.addaudithook(_hook)
sys.stdin = None

class _Timeout(BaseException):
    pass

def _alarm(signum, frame):
    raise _Timeout()

signal.signal(signal.SIGALRM, _alarm)
ns = {"__name__": "promoted"}
results = []
try:
    exec(code, ns)
    solve = ns["solve"]
except BaseException as e:
    _out.write(json.dumps({"fatal": f"{type(e).__name__}: {e}"}))
    _out.flush()
    os._exit(0)
timed_out = False
for inputs in job["inputs"]:
    if timed_out:
        results.append({"error": "skipped: an earlier input timed out"})
        continue
    signal.setitimer(signal.ITIMER_REAL, job["per_item"])
    try:
        value = solve(dict(inputs))
        signal.setitimer(signal.ITIMER_REAL, 0)
        results.append({"output": json.loads(json.dumps(value))})
    except _Timeout:
        timed_out = True
        results.append({"error": "timeout"})
    except BaseException as e:
        signal.setitimer(signal.ITIMER_REAL, 0)
        results.append({"error": f"{type(e).__name__}: {e}"[:300]})
_out.write(json.dumps({"results": results}))
_out.flush()
os._exit(0)
'''


def _libc() -> Any:
    """libc, loaded in the parent (importing in a forked child of a threaded process can deadlock)."""
    global _LIBC
    if _LIBC is None:
        try:
            import ctypes

            _LIBC = ctypes.CDLL(None, use_errno=True)
        except Exception:  # noqa: BLE001
            _LIBC = False
    return _LIBC


_LIBC: Any = None


def _preexec(limits: Limits, libc: Any) -> None:  # pragma: no cover - runs in the forked child
    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if libc:
        libc.unshare(CLONE_NEWUSER | CLONE_NEWNET)  # best effort: the audit hook refuses sockets anyway
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def _read_roots() -> list[str]:
    import sysconfig

    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
    return sorted(roots)


def run_script(code: str, inputs: list[dict[str, Any]], limits: Limits | None = None) -> list[SandboxResult]:
    """Run `solve` over each input in one sandboxed child; one result per input, in order."""
    limits = limits or Limits()
    tmp = tempfile.mkdtemp(prefix="engine-sandbox-")
    job = {"code": code, "inputs": inputs, "tmp": tmp, "read_roots": _read_roots(),
           "per_item": limits.per_item_seconds}
    env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    wall = limits.wall_seconds + limits.per_item_seconds * len(inputs)
    libc = _libc()
    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _BOOTSTRAP], input=json.dumps(job), capture_output=True,
            text=True, cwd=tmp, env=env, timeout=wall, preexec_fn=lambda: _preexec(limits, libc))
    except subprocess.TimeoutExpired:
        return [SandboxResult(error=f"timeout after {wall:.1f}s")] * len(inputs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        why = f"exit {proc.returncode}" + (f" (signal {-proc.returncode})" if proc.returncode < 0 else "")
        tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr else []
        return [SandboxResult(error=f"sandbox died: {why} {' '.join(tail)}".strip())] * len(inputs)
    if "fatal" in reply:
        return [SandboxResult(error=f"script failed to load: {reply['fatal']}")] * len(inputs)
    out = []
    for item in reply["results"]:
        if "error" in item:
            out.append(SandboxResult(error=item["error"]))
        elif item["output"] is None:
            out.append(SandboxResult(abstained=True))
        else:
            out.append(SandboxResult(output=item["output"]))
    return out


def run_one(code: str, inputs: dict[str, Any], limits: Limits | None = None) -> SandboxResult:
    return run_script(code, [inputs], limits)[0]
