"""The sandbox's layers, each attacked where the others would have to help.

- the audit hook holds when a script rebinds `any`, `str`, `os.path.realpath` wherever it can;
- no script can signal another process (kill, killpg, pidfd_send_signal), under either OS backend;
- a flood of prints costs the parent at most the output cap;
- a serving worker's calls share no state: a script that turns wrong after N calls never does;
- the pattern-matching and attribute-path rules refuse only what they must.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.promotion import sandbox
from engine.promotion.sandbox import Limits, check_script, isolation, run_one, run_script
from engine.promotion.sandbox import worker as workers
from engine.promotion.sandbox.child import child_source
from engine.promotion.sandbox.worker import serve_one
from sandboxmark import needs_isolation, os_backend  # noqa: F401 (a fixture)

FAST = Limits(cpu_seconds=2, memory_bytes=256 * 1024 * 1024, wall_seconds=30, per_item_seconds=1.0)
API_KEY = "sk-ant-key-only-the-parent-holds"


# --- the audit hook binds everything it uses ---------------------------------------------------

REBIND_AND_ATTACK = r"""
import builtins, json
sys.addaudithook(__sandbox_hook)
real_repr, real_open = repr, open
anything = lambda *a, **k: True
harmless = lambda *a, **k: "json"
# Wherever the hook could look a name up (the builtins module keeps `str` and `isinstance`, which
# the import system itself needs: shadowed in the globals, which come first).
for space in (globals(), vars(builtins)):
    space["any"] = anything
    space["all"] = anything
globals()["str"] = harmless
globals()["isinstance"] = lambda *a: False
out = {}
try:
    import _posixsubprocess
    r, w = os.pipe()
    pid = _posixsubprocess.fork_exec(
        [b"/bin/sh", b"-c", ("touch " + SHELL_MARK).encode()], [b"/bin/sh"], True, (), None, None,
        -1, -1, -1, -1, -1, -1, r, w, False, False, -1, None, None, None, -1, None, False)
    os.close(w)
    os.waitpid(pid, 0)
    out["shell"] = "ran"
except Exception as e:
    out["shell"] = real_repr(e)
os.path.realpath = lambda path, *a, **k: SCRATCH + "/harmless"
os.fsdecode = lambda path: SCRATCH + "/harmless"
try:
    out["environ"] = real_open("/proc/%d/environ" % os.getppid(), "rb").read().decode("latin-1")
except Exception as e:
    out["environ"] = real_repr(e)
try:
    real_open(MARK, "w").write("x")
    out["write"] = "written"
except Exception as e:
    out["write"] = real_repr(e)
sys.stdout.write(json.dumps(out))
"""


def test_the_audit_hook_holds_when_a_script_rebinds_the_names_it_would_use(tmp_path: Path) -> None:
    """The runtime layer alone, attacked from the inside: the script has reached the child's globals
    and builtins (as the class-pattern hole once allowed) and rebinds `any`, `str`, `isinstance`,
    `os.path.realpath`, `os.fsdecode`. The hook still refuses the parent's environment, a write
    outside the scratch directory and a shell."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    mark, shell_mark = tmp_path / "mark", tmp_path / "shell-mark"
    source = child_source(tmp=str(scratch), read_roots=isolation.read_roots(), runtime=True)
    program = (source[:source.index("def __sandbox_main():")]
               + f"SCRATCH, MARK, SHELL_MARK = {str(scratch)!r}, {str(mark)!r}, {str(shell_mark)!r}\n"
               + REBIND_AND_ATTACK)
    # The parent's environment holds a key (the child's own is empty); `; :` keeps sh as the parent.
    proc = subprocess.run(["/bin/sh", "-c", 'env -i "$0" -I -S -c "$1"; :', sys.executable, program],
                          env={"ANTHROPIC_API_KEY": API_KEY, "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout.startswith("{"), proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert API_KEY not in out["environ"] and "PermissionError" in out["environ"], out
    assert out["write"] != "written" and not mark.exists(), out
    assert out["shell"] != "ran" and not shell_mark.exists(), out


# --- no signals to other processes ---------------------------------------------------------------

@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process running as the id the sandbox runs as (nobody, when the engine runs as root)."""
    def as_nobody() -> None:  # pragma: no cover - runs in the forked child
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)

    proc = subprocess.Popen(["sleep", "120"], preexec_fn=as_nobody,
                            start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


SIGNALLER = """
import os, signal
def solve(inputs):
    pid = inputs['pid']
    out = {'visible': os.path.exists('/proc/%d' % pid)}
    attempts = {
        'kill': lambda: os.kill(pid, signal.SIGKILL),
        'killpg': lambda: os.killpg(pid, signal.SIGKILL),
        'pidfd_send_signal': lambda: signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            out[name] = 'sent'
        except Exception as e:
            out[name] = type(e).__name__
    return out
"""


@needs_isolation
def test_the_os_layer_alone_lets_no_script_signal_another_process(os_backend: str,
                                                                   victim: subprocess.Popen[bytes]) -> None:
    result = run_script(SIGNALLER, [{"pid": victim.pid}], FAST, layers={"os"})[0]
    assert result.output is not None, result.error
    assert "sent" not in result.output.values(), result.output
    assert victim.poll() is None, "the script killed a process outside the sandbox"


def test_the_other_layers_refuse_the_signalling_script() -> None:
    assert check_script(SIGNALLER)
    result = run_script(SIGNALLER, [{"pid": os.getpid()}], FAST, layers={"runtime"})[0]
    assert result.error and "not allowed" in result.error


@needs_isolation
def test_bubblewrap_gives_a_pid_namespace_an_unprivileged_id_and_no_network(os_backend: str) -> None:
    code = """
import os
def solve(inputs):
    return {'uid': os.getuid(), 'pids': sorted(p for p in os.listdir('/proc') if p.isdigit())
            if os.path.isdir('/proc') else [], 'pid': os.getpid(), 'net': sorted(os.listdir('/sys/class/net'))
            if os.path.isdir('/sys/class/net') else []}
"""
    out = run_script(code, [{}], FAST, layers={"os"})[0].output
    assert out is not None
    assert out["uid"] != 0 and out["pids"] == [] and out["net"] in ([], ["lo"])
    if os_backend == "bwrap":
        assert out["pid"] <= 3  # a PID namespace of its own: nothing else is there to see


def test_fails_closed_without_a_system_call_filter_for_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation.platform, "machine", lambda: "vax")
    assert isolation.seccomp_program() == b""
    result = run_one("def solve(inputs):\n    return 1\n", {}, FAST)
    assert result.output is None and "isolation unavailable" in (result.error or "")
    workers.close_all()
    served = serve_one("def solve(inputs):\n    return 2\n", {}, FAST)
    assert served.output is None and "isolation unavailable" in (served.error or "")


# --- bounded output ------------------------------------------------------------------------------

FLOOD = "def solve(inputs):\n    line = 'x' * 1000000\n    for _ in range(120):\n        print(line)\n    return 'done'\n"


@needs_isolation
def test_a_flood_of_prints_costs_the_parent_at_most_the_cap() -> None:
    tracemalloc.start()
    try:
        result = run_one(FLOOD, {}, Limits(cpu_seconds=5, wall_seconds=60, per_item_seconds=20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.output == "done", result.error
    assert peak < 16 * 1024 * 1024, f"the parent held {peak / 1e6:.0f} MB for 120 MB of prints"


def test_captured_output_is_truncated_with_a_marker() -> None:
    finished = sandbox._communicate(
        [sys.executable, "-c", "import sys; sys.stdout.write('o' * 5000); sys.stderr.write('e' * 3000000)"],
        b"", {"PATH": "/usr/bin:/bin"}, 60.0, (100, 1000), None)
    assert finished.stdout == "o" * 100 + sandbox.TRUNCATED.decode()
    assert finished.stderr == "e" * 1000 + sandbox.TRUNCATED.decode()
    assert finished.returncode == 0


# --- a serving worker's calls share nothing ------------------------------------------------------

TIME_BOMB = """
import decimal, json
COUNT = []
def solve(inputs):
    COUNT.append(1)
    if not hasattr(json.JSONDecoder, 'calls'):
        json.JSONDecoder.calls = []
    json.JSONDecoder.calls.append(1)
    decimal.getcontext().prec += 1
    if len(COUNT) > 3 or len(json.JSONDecoder.calls) > 3 or decimal.getcontext().prec > 31:
        return 'wrong'
    return inputs['text'].upper()
"""


@needs_isolation
def test_a_script_that_turns_wrong_after_n_calls_behaves_the_same_on_every_served_call() -> None:
    assert check_script(TIME_BOMB) == ()
    verified = run_one(TIME_BOMB, {"text": "a"}, FAST)
    assert verified.output == "A", verified.error
    workers.close_all()
    before = workers.STARTED[0]
    served = [serve_one(TIME_BOMB, {"text": t}, FAST) for t in "abcdefghijklmnopqrst"]
    assert workers.STARTED[0] == before + 1  # one worker served them all
    assert [r.output for r in served] == [t.upper() for t in "abcdefghijklmnopqrst"], [r.error for r in served]
    # Verification over many inputs in one process does see the module-level counter trip.
    batch = run_script(TIME_BOMB, [{"text": t} for t in "abcdef"], FAST)
    assert "wrong" in [r.output for r in batch]
    workers.close_all()


@needs_isolation
def test_a_call_that_crashes_its_process_fails_alone_and_the_worker_serves_on() -> None:
    workers.close_all()
    code = ("import json\ndef solve(inputs):\n    if inputs['crash']:\n        x = []\n"
            "        while True:\n            x.append(bytearray(10 ** 7))\n    return 'ok'\n")
    assert serve_one(code, {"crash": True}, FAST).error
    before = workers.STARTED[0]
    assert serve_one(code, {"crash": False}, FAST).output == "ok"
    assert workers.STARTED[0] == before  # the same worker: only the call's own process died
    workers.close_all()


# --- the attribute-path rules: what they refuse, and what still works -----------------------------

@pytest.mark.parametrize("code, message", [
    ("def solve(x):\n    match x:\n        case object(__class__=c):\n            return c\n", "'__class__'"),
    ("def solve(x):\n    match x:\n        case object(_private=c):\n            return c\n", "'_private'"),
    ("def solve(x):\n    match x:\n        case object(gi_frame=c):\n            return c\n", "'gi_frame'"),
    ("def solve(x):\n    match x:\n        case [*__rest]:\n            return 1\n", "'__rest'"),
    ("def solve(x):\n    match x:\n        case {**__rest}:\n            return 1\n", "'__rest'"),
    ("def solve(x):\n    match x:\n        case _ as __builtins__:\n            return 1\n", "'__builtins__'"),
    ("def solve(x):\n    return type('C', (), {})\n", "'type' may only be called with one argument"),
    ("def solve(x):\n    return x == '__globals__'\n", "'__globals__' names a dunder"),
    ("class C:\n    def __getattribute__(self, n):\n        return 1\ndef solve(x):\n    return 1\n",
     "defining '__getattribute__'"),
    ("def solve(__x):\n    return 1\n", "'__x'"),
    ("def solve(x):\n    try:\n        pass\n    except Exception as __e:\n        pass\n", "'__e'"),
    ("import functools\ndef solve(x):\n    return functools.update_wrapper\n", "'functools.update_wrapper'"),
    ("from functools import wraps\ndef solve(x):\n    return wraps\n", "'functools.wraps'"),
    ("def solve(x):\n    return '{0.__class__}'.format(x)\n", "literal string with plain fields"),
])
def test_the_static_layer_refuses_every_attribute_path_to_dunders(code: str, message: str) -> None:
    problems = "; ".join(check_script(code))
    assert message in problems, problems


@pytest.mark.parametrize("code", [
    "def solve(x):\n    match x:\n        case object(__class__=c):\n            return c\n",
    "def solve(x):\n    match x:\n        case _ as __builtins__:\n            return 1\n",
    "class C:\n    def __getattribute__(self, n):\n        return 1\ndef solve(x):\n    return 1\n",
    "def solve(__x):\n    return 1\n",
    "def solve(x):\n    global __builtins__\n    return 1\n",
    "import functools\ndef solve(x):\n    return functools.update_wrapper\n",
])
def test_the_runtime_layer_alone_refuses_the_same_paths(code: str) -> None:
    result = run_script(code, [{}], FAST, layers={"runtime"})[0]
    assert result.output is None and result.error, result


MATCHING = """
from collections import namedtuple
import json

P = namedtuple('P', 'x y')


class Box:
    def __init__(self, v):
        self.v = v

    def double(self):
        return self.v * 2

    def __eq__(self, other):
        return isinstance(other, Box) and other.v == self.v


def solve(inputs):
    out = []
    for v in [P(1, 2), 3, 'a', [1, 2, 3], {'k': 1}, Box(4), json.JSONDecodeError('m', 'd', 0)]:
        match v:
            case P(x, y=yy):
                out.append(['p', x, yy])
            case int(n):
                out.append(['int', n])
            case str() as s:
                out.append(['str', s])
            case [a, *rest]:
                out.append(['seq', a, rest])
            case {'k': k}:
                out.append(['map', k])
            case Box(v=w):
                out.append(['box', w, v.double()])
            case json.JSONDecodeError(msg=m):
                out.append(['err', m])
    return out
"""


@needs_isolation
@pytest.mark.parametrize("layers", [{"runtime"}, {"static", "runtime", "os"}])
def test_ordinary_pattern_matching_and_classes_still_work(layers: set[str]) -> None:
    assert check_script(MATCHING) == ()
    result = run_script(MATCHING, [{}], FAST, layers=layers)[0]
    assert result.output == [["p", 1, 2], ["int", 3], ["str", "a"], ["seq", 1, [2, 3]], ["map", 1],
                             ["box", 4, 8], ["err", "m"]], result.error


def test_class_patterns_read_only_allowed_attributes_through_match_args() -> None:
    """A class whose `__match_args__` (however it got there) names a dunder: refused at match time."""
    code = """
import json
def solve(inputs):
    probe = type('Probe', (), {'__match_args__': ('_' * 2 + 'class' + '_' * 2,)})
    match probe():
        case probe(c):
            return repr(c)
"""
    result = run_script(code, [{}], FAST, layers={"runtime"})[0]
    assert result.output is None and "not allowed" in (result.error or ""), result


# --- the OS backend: bubblewrap preferred, the namespaces fallback, and closed when neither ----------

def test_without_bubblewrap_the_namespaces_fallback_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ENGINE_SANDBOX_BACKEND", raising=False)
    monkeypatch.setattr(isolation, "_backend", [])
    monkeypatch.setattr(isolation, "bwrap_executable", lambda: None)
    assert isolation.bubblewrap_problem() == "bubblewrap (bwrap) is not installed"
    assert isolation.backend() == "namespaces"


def test_a_required_bubblewrap_that_is_missing_runs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENGINE_SANDBOX_BACKEND", "bwrap")
    monkeypatch.setattr(isolation, "bwrap_executable", lambda: None)
    result = run_one("def solve(inputs):\n    return 1\n", {}, FAST)
    assert result.output is None and "bubblewrap (bwrap) is not installed" in (result.error or "")
    workers.close_all()
    served = serve_one("def solve(inputs):\n    return 2\n", {}, FAST)
    assert served.output is None and "bubblewrap (bwrap) is not installed" in (served.error or "")


@needs_isolation
def test_bubblewrap_is_preferred_where_it_works() -> None:
    if isolation.bubblewrap_problem() is not None:
        pytest.skip(f"no bubblewrap here: {isolation.bubblewrap_problem()}")
    assert isolation.backend(refresh=True) == "bwrap" or os.environ.get("ENGINE_SANDBOX_BACKEND") == "namespaces"
