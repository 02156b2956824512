"""The namespaces backend holds in a process whose `os.register_at_fork` hooks start a thread in
every forked child (as an OpenTelemetry span processor's do): such a child cannot enter a user
namespace (EINVAL), so the sandbox sets itself up in a fresh interpreter instead, with the same
isolation. Run in a subprocess: the hook stays registered for the life of its process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sandboxmark import needs_isolation

ROOT = Path(__file__).resolve().parents[2]

PROBE = r"""
import json, os, sys, threading, time
os.register_at_fork(after_in_child=lambda: threading.Thread(target=time.sleep, args=(30,), daemon=True).start())
from engine.promotion.sandbox import Limits, run_script
code = '''
import os
def solve(inputs):
    out = {"env": sorted(os.environ)}
    try:
        out["secret"] = open(inputs["secret"]).read()
    except OSError as e:
        out["secret"] = type(e).__name__
    try:
        open("/usr/evil", "w")
        out["write"] = "written"
    except OSError as e:
        out["write"] = type(e).__name__
    return out
'''
limits = Limits(cpu_seconds=2, memory_bytes=256 * 1024 * 1024, wall_seconds=30, per_item_seconds=2.0)
result = run_script(code, [{"secret": sys.argv[1]}], limits, layers={"os"})[0]
print(json.dumps({"output": result.output, "error": result.error}))
"""


@needs_isolation
def test_a_thread_started_by_an_at_fork_hook_does_not_open_the_sandbox(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret")
    env = {**os.environ, "ENGINE_SANDBOX_BACKEND": "namespaces", "ENGINE_SECRET_KEY": "sk-parent",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(secret)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["error"] is None, reply["error"]
    out = reply["output"]
    assert "ENGINE_SECRET_KEY" not in out["env"]
    assert out["secret"] in ("FileNotFoundError", "PermissionError")
    assert out["write"] in ("OSError", "PermissionError", "FileNotFoundError")
