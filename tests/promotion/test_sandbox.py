"""The sandbox for generated scripts: each escape attempt fails; ordinary code runs."""

from __future__ import annotations

import os

import pytest

from engine.promotion.sandbox import Limits, run_one, run_script

FAST = Limits(cpu_seconds=1, memory_bytes=256 * 1024 * 1024, wall_seconds=3, per_item_seconds=0.5)


def test_plain_script_runs_and_may_abstain():
    code = "import re, json\ndef solve(inputs):\n    return {'n': len(re.findall('a', inputs['t']))} if inputs['t'] else None\n"
    results = run_script(code, [{"t": "banana"}, {"t": ""}])
    assert results[0].output == {"n": 3} and results[0].answered
    assert results[1].abstained and not results[1].answered


def test_socket_is_refused():
    code = ("import socket\ndef solve(inputs):\n    s = socket.socket()\n    s.connect(('93.184.216.34', 80))\n"
            "    return {'ok': 1}\n")
    result = run_one(code, {}, FAST)
    assert result.error and "socket" in result.error


def test_raw_socket_module_is_refused_too():
    code = "import _socket\ndef solve(inputs):\n    _socket.socket()\n    return {'ok': 1}\n"
    assert "socket" in (run_one(code, {}, FAST).error or "")


def test_file_write_outside_the_temp_dir_fails(tmp_path):
    target = tmp_path / "escaped.txt"
    for code in (f"def solve(inputs):\n    open({str(target)!r}, 'w').write('x')\n    return {{'ok': 1}}\n",
                 f"import os\ndef solve(inputs):\n    os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n"
                 f"    return {{'ok': 1}}\n"):
        assert "not allowed" in (run_one(code, {}, FAST).error or "")
    assert not target.exists()


def test_temp_dir_is_writable():
    code = ("import os\ndef solve(inputs):\n    p = os.path.join(os.environ['TMPDIR'], 'scratch')\n"
            "    open(p, 'w').write('x')\n    return {'ok': open(p).read()}\n")
    assert run_one(code, {}, FAST).output == {"ok": "x"}


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret")
    code = "import os\ndef solve(inputs):\n    return {'env': dict(os.environ)}\n"
    env = run_one(code, {}, FAST).output["env"]
    assert "ANTHROPIC_API_KEY" not in env and "sk-ant-secret" not in str(env)
    proc = f"def solve(inputs):\n    return {{'e': open('/proc/{os.getpid()}/environ').read()}}\n"
    assert "not allowed" in (run_one(proc, {}, FAST).error or "")


def test_reading_project_files_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    code = f"def solve(inputs):\n    return {{'s': open({str(secret)!r}).read()}}\n"
    assert "not allowed" in (run_one(code, {}, FAST).error or "")


@pytest.mark.parametrize("code", [
    "def solve(inputs):\n    while True:\n        pass\n",
    "def solve(inputs):\n    while True:\n        try:\n            while True:\n                pass\n"
    "        except BaseException:\n            pass\n",  # swallows the soft timeout: the CPU limit kills it
])
def test_infinite_loops_are_stopped(code):
    result = run_one(code, {}, FAST)
    assert result.error and not result.answered


def test_unbounded_allocation_is_stopped():
    code = "def solve(inputs):\n    x = []\n    while True:\n        x.append(bytearray(10**7))\n"
    result = run_one(code, {}, FAST)
    assert result.error and not result.answered


def test_subprocesses_and_ctypes_are_refused():
    for code in ("import subprocess\ndef solve(inputs):\n    return {'o': subprocess.check_output(['id']).decode()}\n",
                 "import os\ndef solve(inputs):\n    os.system('id')\n    return {'ok': 1}\n",
                 "import ctypes\ndef solve(inputs):\n    return {'ok': 1}\n"):
        assert "not allowed" in (run_one(code, {}, FAST).error or ""), code


def test_only_the_declared_inputs_arrive():
    code = "def solve(inputs):\n    return {'keys': sorted(inputs)}\n"
    assert run_one(code, {"ticket": "x"}, FAST).output == {"keys": ["ticket"]}
