"""The OS layer: the child runs in its own namespaces with nothing of the host but Python.

In the forked child, before Python starts (`preexec_fn`), in this order:
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
import resource
import sys
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
