"""The OS layer: the child runs in its own namespaces with nothing of the host but Python.

Two backends, chosen once per process (`backend()`):
- **bubblewrap** (`bwrap`, the Debian package `bubblewrap`), preferred where it works: user, PID,
  mount, network, IPC, UTS and cgroup namespaces; a read-only root holding only read-only binds of
  /usr, the Python installation and the loader cache, a small tmpfs at /tmp; an unprivileged id
  (run as root, the engine first becomes `nobody`, and what only root can reach is staged for it);
  no other process is visible, so none can be signalled; dies with its parent.
- **namespaces**, today's own setup, as the fallback (described below).
Either way the child installs `seccomp_program()` before it reads untrusted bytes: no signals to
other processes (kill, tkill, tgkill, pidfd_send_signal, rt_sigqueueinfo), no fork, clone or exec,
no ptrace, namespaces, mounts or sockets. When neither backend can be set up, or the filter cannot be
installed, the script does not run (fail closed).

The fallback, in the forked child, before Python starts (`preexec_fn`), in this order:
- a new session, and rlimits: CPU seconds, address space, file size, open files, no core dumps;
- run as root, it first becomes `nobody` (so that the no-new-processes limit applies: the kernel
  never applies RLIMIT_NPROC to root);
- new user, mount, network, IPC and UTS namespaces (`unshare`): no network at all, not even
  loopback to the host; the user is mapped to an unprivileged id, so capabilities end at `exec`;
- a fresh read-only root (tmpfs) holding only read-only binds of /usr, the Python installation,
  the loader cache and /dev/null, /dev/zero, /dev/urandom, plus a small writable tmpfs at /tmp:
  no /etc, /home, /proc, project files or the parent's environment exist in there;
- `chroot` into it, no-new-privileges, and RLIMIT_NPROC 0 (no fork).
The environment is empty but for LANG and HOME. When any step fails the child never starts
Python: the sandbox fails closed, and `isolation_problem()` says why (`engine promotions` shows it).
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import shutil
import struct
import subprocess
import sys
import threading
import _json as _json_c  # a C extension: where lib-dynload is
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
UNSHARE_FLAGS = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 4, 38
INSIDE_ID = 1000
NOBODY = 65534
_ST_TO_MS = ((os.ST_RDONLY, MS_RDONLY), (os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV),
             (os.ST_NOEXEC, MS_NOEXEC), (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME),
             (os.ST_RELATIME, MS_RELATIME))


@dataclass
class Plan:
    """Everything the forked child needs, prepared in the parent (no imports after fork)."""

    root: str
    binds: list[tuple[str, bool, int]] = field(default_factory=list)  # (path, is_dir, mount flags)
    symlinks: list[tuple[str, str]] = field(default_factory=list)
    python: str = ""
    cpu_seconds: int = 2
    memory_bytes: int = 512 * 1024 * 1024
    file_bytes: int = 1024 * 1024
    tmp_bytes: int = 8 * 1024 * 1024
    report_fd: int = -1
    allow_fork: bool = False
    """A serving worker forks one confined child per call itself (each one then forks no more)."""
    staged: list[tuple[str, str]] = field(default_factory=list)
    """bubblewrap run as root: (source, stage) binds that make a root-only path readable by nobody."""


def libc() -> Any:
    """libc, loaded in the parent (importing in a forked child of a threaded process can deadlock)."""
    return _load_libc()


@lru_cache(maxsize=1)
def _load_libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def python_executable() -> str:
    return os.path.realpath(sys.executable)


def read_roots() -> tuple[str, ...]:
    """Where the child may read: the base installation's standard library (never a virtualenv's
    site-packages), at the same path inside and outside the chroot."""
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    dynload = os.path.realpath(os.path.dirname(getattr(_json_c, "__file__", os.__file__)))
    return tuple(sorted({stdlib, dynload}))


def _mount_flags(path: str) -> int:
    flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in _ST_TO_MS if flags & st)


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def make_plan(root: str, *, cpu_seconds: int, memory_bytes: int, file_bytes: int) -> Plan:
    """What to mount, decided in the parent."""
    plan = Plan(root=root, python=python_executable(), cpu_seconds=cpu_seconds, memory_bytes=memory_bytes,
                file_bytes=file_bytes)
    dirs: list[str] = []
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            plan.symlinks.append((top, os.readlink(top)))
        elif os.path.isdir(top):
            dirs.append(top)
    dirs.append("/usr")
    prefix = os.path.realpath(sys.base_prefix)
    for extra in (prefix, os.path.dirname(plan.python), *read_roots()):
        if not _under(extra, dirs):
            dirs.append(extra)
    files = [f for f in ("/etc/ld.so.cache", "/dev/null", "/dev/zero", "/dev/urandom") if os.path.exists(f)]
    plan.binds = [(p, True, _mount_flags(p)) for p in dirs] + [(p, False, _mount_flags(p)) for p in files]
    return plan


# System calls the sandboxed script never needs: signals to other processes, new processes and
# programs, tracing other processes, namespaces, mounts, sockets, kernel keyrings, bpf, io_uring.
_DENIED_SYSCALLS = (
    "kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open", "pidfd_send_signal",
    "pidfd_getfd", "fork", "vfork", "clone", "clone3", "execve", "execveat", "ptrace", "process_vm_readv",
    "process_vm_writev", "kcmp", "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "open_tree",
    "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "socket", "socketpair", "keyctl", "add_key",
    "request_key", "bpf", "userfaultfd", "perf_event_open", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "personality",
)
_COMMON_SYSCALLS = {"pidfd_send_signal": 424, "io_uring_setup": 425, "io_uring_enter": 426,
                    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
                    "fsmount": 432, "fspick": 433, "pidfd_open": 434, "clone3": 435, "pidfd_getfd": 438}
_SYSCALLS: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {
        "socket": 41, "socketpair": 53, "clone": 56, "fork": 57, "vfork": 58, "execve": 59, "kill": 62,
        "ptrace": 101, "rt_sigqueueinfo": 129, "personality": 135, "pivot_root": 155, "chroot": 161,
        "mount": 165, "umount2": 166, "tkill": 200, "tgkill": 234, "add_key": 248, "request_key": 249,
        "keyctl": 250, "unshare": 272, "rt_tgsigqueueinfo": 297, "perf_event_open": 298, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "bpf": 321, "execveat": 322,
        "userfaultfd": 323, **_COMMON_SYSCALLS}),
    "aarch64": (0xC00000B7, {
        "socket": 198, "socketpair": 199, "clone": 220, "execve": 221, "kill": 129, "tkill": 130, "tgkill": 131,
        "rt_sigqueueinfo": 138, "ptrace": 117, "personality": 92, "pivot_root": 41, "chroot": 51, "mount": 40,
        "umount2": 39, "add_key": 217, "request_key": 218, "keyctl": 219, "unshare": 97,
        "rt_tgsigqueueinfo": 240, "perf_event_open": 241, "setns": 268, "process_vm_readv": 270,
        "process_vm_writev": 271, "kcmp": 272, "bpf": 280, "execveat": 281, "userfaultfd": 282,
        **_COMMON_SYSCALLS}),
}
_BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW, _RET_KILL_PROCESS, _RET_EPERM = 0x7FFF0000, 0x80000000, 0x00050001
_X32_SYSCALL_BIT = 0x40000000


def seccomp_program(machine: str | None = None) -> bytes:
    """The classic-BPF seccomp filter the child installs (`struct sock_filter[]`): the system calls
    in `_DENIED_SYSCALLS` fail with EPERM, a foreign architecture (or x32 on x86_64) ends the process.
    Empty where this machine's system-call numbers are not known (the sandbox then fails closed)."""
    machine = machine or platform.machine()
    if machine not in _SYSCALLS:
        return b""
    arch, numbers = _SYSCALLS[machine]
    denied = sorted({numbers[name] for name in _DENIED_SYSCALLS if name in numbers})
    checks: list[tuple[int, int]] = [(_BPF_JGE_K, _X32_SYSCALL_BIT)] if machine == "x86_64" else []
    checks += [(_BPF_JEQ_K, nr) for nr in denied]
    allow = 4 + len(checks)  # index of the ALLOW return; EPERM follows it
    program = [(_BPF_LD_W_ABS, 0, 0, 4), (_BPF_JEQ_K, 1, 0, arch), (_BPF_RET_K, 0, 0, _RET_KILL_PROCESS),
               (_BPF_LD_W_ABS, 0, 0, 0)]
    program += [(code, allow - i, 0, k) for i, (code, k) in enumerate(checks, start=4)]
    program += [(_BPF_RET_K, 0, 0, _RET_ALLOW), (_BPF_RET_K, 0, 0, _RET_EPERM)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in program)


def _others_can_reach(path: str) -> bool:
    """Every directory above `path` is searchable by anyone (so `nobody` can bind it)."""
    current = path
    while True:
        parent = os.path.dirname(current)
        if parent == current:
            return True
        try:
            if not os.stat(parent).st_mode & 0o001:
                return False
        except OSError:
            return False
        current = parent


def bwrap_executable() -> str | None:
    return shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")


def bwrap_argv(plan: Plan, argv: list[str]) -> list[str]:
    """The bubblewrap command running `argv` under the plan (binds at the same paths inside)."""
    bwrap = bwrap_executable()
    if bwrap is None:
        raise OSError("bubblewrap (bwrap) is not installed")
    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", str(INSIDE_ID), "--gid", str(INSIDE_ID), "--hostname", "sandbox"]
    staged = dict(plan.staged)
    for link, target in plan.symlinks:
        cmd += ["--symlink", target, link]
    for path, _is_dir, _flags in plan.binds:
        cmd += ["--ro-bind", staged.get(path, path), path]
    cmd += ["--size", str(plan.tmp_bytes), "--perms", "0700", "--tmpfs", "/tmp", "--remount-ro", "/",
            "--chdir", "/tmp", "--unsetenv", "PWD", "--", *argv]
    return cmd


def stage_for_nobody(plan: Plan, stage_dir: str) -> None:
    """Run as root, bubblewrap runs as `nobody`: binds below a root-only directory (a Python
    under /root) are first bound, in the child's own mount namespace, at a path nobody can reach."""
    if os.geteuid() != 0:
        return
    for n, (path, is_dir, _flags) in enumerate(plan.binds):
        if not _others_can_reach(path):
            stage = os.path.join(stage_dir, f"s{n}")
            if is_dir:
                os.makedirs(stage, mode=0o755)
            else:
                os.close(os.open(stage, os.O_WRONLY | os.O_CREAT, 0o644))
            plan.staged.append((path, stage))


def enter_bwrap(plan: Plan, libc: Any) -> None:  # pragma: no cover - runs in the forked child
    """The `preexec_fn` before exec'ing bubblewrap: rlimits, and as root, staged binds and `nobody`."""
    try:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (plan.cpu_seconds, plan.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (plan.memory_bytes, plan.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (plan.file_bytes, plan.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if os.getuid() == 0 or os.geteuid() == 0:
            _check(libc.unshare(CLONE_NEWNS), "unshare(mount)")
            _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
            for source, stage in plan.staged:
                _check(libc.mount(source.encode(), stage.encode(), None, MS_BIND | MS_REC, None), f"bind {source}")
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    except BaseException as e:
        if plan.report_fd >= 0:
            try:
                os.write(plan.report_fd, f"{type(e).__name__}: {e}"[:500].encode())
            except OSError:
                pass
        raise


_backend_lock = threading.Lock()
_backend: list[str] = []


def backend(refresh: bool = False) -> str:
    """"bwrap" where bubblewrap is installed and works here, else "namespaces" (the fallback).
    `ENGINE_SANDBOX_BACKEND=namespaces` forces the fallback, `=bwrap` requires bubblewrap."""
    forced = os.environ.get("ENGINE_SANDBOX_BACKEND", "")
    if forced in ("bwrap", "namespaces"):
        return forced
    with _backend_lock:
        if refresh or not _backend:
            _backend[:] = ["bwrap" if bubblewrap_problem() is None else "namespaces"]
        return _backend[0]


def bubblewrap_problem() -> str | None:
    """None when bubblewrap can run a program here under the sandbox's options; else why not."""
    if bwrap_executable() is None:
        return "bubblewrap (bwrap) is not installed"
    import tempfile

    tmp = tempfile.mkdtemp(prefix="engine-sandbox-probe-")
    try:
        os.chmod(tmp, 0o711)
        plan = make_plan(os.path.join(tmp, "root"), cpu_seconds=5, memory_bytes=512 * 1024 * 1024,
                         file_bytes=1024 * 1024)
        stage_for_nobody(plan, tmp)
        handle = libc()
        try:
            proc = subprocess.run(bwrap_argv(plan, [plan.python, "-I", "-S", "-c", "pass"]), capture_output=True,
                                  timeout=20, env={"LANG": "C.UTF-8"}, preexec_fn=lambda: enter_bwrap(plan, handle))
        except (OSError, subprocess.SubprocessError) as e:
            return f"bubblewrap did not start: {e}"
        if proc.returncode != 0:
            return "bubblewrap failed: " + proc.stderr.decode(errors="replace").strip()[-300:]
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _bind(libc: Any, source: str, target: str, is_dir: bool, flags: int) -> None:
    if is_dir:
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
    _check(libc.mount(source.encode(), target.encode(), None, MS_BIND | MS_REC, None), f"bind {source}")
    ro = flags | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_BIND | MS_REMOUNT
    _check(libc.mount(None, target.encode(), None, ro, None), f"read-only {target}")


def _build_root(plan: Plan, libc: Any, tmp_owner: int) -> None:  # pragma: no cover - forked child
    root = plan.root
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    _check(libc.mount(b"tmpfs", root.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=4m,mode=0755"),
           "mount the new root")
    for link, target in plan.symlinks:
        os.symlink(target, root + link)
    for source, is_dir, flags in plan.binds:
        _bind(libc, source, root + source, is_dir, flags)
    os.makedirs(root + "/tmp")
    _check(libc.mount(b"tmpfs", (root + "/tmp").encode(), b"tmpfs", MS_NOSUID | MS_NODEV,
                      f"size={plan.tmp_bytes},mode=0700,uid={tmp_owner},gid={tmp_owner}".encode()), "mount /tmp")
    _check(libc.mount(None, root.encode(), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None),
           "make the new root read-only")


def _enter_user_namespace(libc: Any, flags: int) -> None:  # pragma: no cover - forked child
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(flags), "unshare(" + ", ".join(
        n for f, n in ((CLONE_NEWUSER, "user"), (CLONE_NEWNS, "mount"), (CLONE_NEWNET, "net"),
                       (CLONE_NEWIPC, "ipc"), (CLONE_NEWUTS, "uts")) if flags & f) + ")")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{INSIDE_ID} {uid} 1")
    _write("/proc/self/gid_map", f"{INSIDE_ID} {gid} 1")


LAUNCHER = """\
import importlib.util, json, os, sys
spec = importlib.util.spec_from_file_location("engine_sandbox_isolation", sys.argv[1])
isolation = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = isolation
spec.loader.exec_module(isolation)
job = json.loads(sys.argv[2])
plan = isolation.Plan(**job["plan"])
try:
    isolation.isolate(plan, isolation.libc())
except BaseException:
    os._exit(120)
os.set_inheritable(plan.report_fd, False)
os.execve(job["argv"][0], job["argv"], job["env"])
"""
"""A fresh interpreter that sets up the OS layer on itself, then execs the sandboxed child: for
when `isolate` cannot run as a `preexec_fn`. The parent's `os.register_at_fork` hooks (an
OpenTelemetry span processor, for one) run in a forked child before its `preexec_fn` and may start
a thread there, and a process with two threads cannot enter a user namespace (EINVAL). A process
started without a `preexec_fn` runs no Python code between fork and exec, so it starts with one
thread. It loads this file alone (standard library only), not the engine package."""


def launcher_argv(plan: Plan, argv: list[str], env: dict[str, str]) -> list[str]:
    """The command that runs `argv` (with `env`) under `plan` through `LAUNCHER`."""
    import dataclasses
    import json

    job = {"plan": dataclasses.asdict(plan), "argv": argv, "env": env}
    return [python_executable(), "-I", "-S", "-c", LAUNCHER, os.path.abspath(__file__), json.dumps(job)]


def isolate(plan: Plan, libc: Any) -> None:  # pragma: no cover - runs in the forked child
    """The `preexec_fn`: set up the OS layer or raise (the child then never runs)."""
    try:
        os.setsid()
        resource.setrlimit(resource.RLIMIT_CPU, (plan.cpu_seconds, plan.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (plan.memory_bytes, plan.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (plan.file_bytes, plan.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if os.getuid() == 0 or os.geteuid() == 0:
            # As root: build the root in a private mount namespace (root can reach every source),
            # then become nobody and enter the other namespaces without any host privilege.
            _check(libc.unshare(CLONE_NEWNS), "unshare(mount)")
            _build_root(plan, libc, NOBODY)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(dumpable)")
            _enter_user_namespace(libc, UNSHARE_FLAGS & ~CLONE_NEWNS)
        else:
            _enter_user_namespace(libc, UNSHARE_FLAGS)
            _build_root(plan, libc, INSIDE_ID)
        os.chroot(plan.root)
        os.chdir("/tmp")
        _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(no_new_privs)")
        if not plan.allow_fork:
            resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        # Last: the parent may hold descriptors numbered above this (closed at exec).
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    except BaseException as e:
        if plan.report_fd >= 0:
            try:
                os.write(plan.report_fd, f"{type(e).__name__}: {e}"[:500].encode())
            except OSError:
                pass
        raise
