"""openai-compatible against a real `llama_cpp.server` on 127.0.0.1 serving the bundled SmolLM2,
started and stopped by the test."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from engine import run_workflow
from engine.errors import ProviderUnavailableError
from engine.providers.base import CompletionRequest
from engine.providers.llamacpp import bundled_model_path
from engine.providers.openai_compat import OpenAICompatibleProvider

pytestmark = pytest.mark.model
pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (the dev extra installs it)")

WORKFLOW = """\
name: intents
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: server
      system: Classify the banking message.
      prompt: "Message: {{ text }}"
      schema:
        type: object
        properties: {intent: {enum: [card_lost, balance, other]}}
        required: [intent]
      max_tokens: 24
      retries: 1
"""


_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    port = _free_port()
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    log = log_path.open("wb")  # a file, not a pipe: the server logs a lot while loading
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_model_path()), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2", "--n_threads", "2"],
        stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {log_path.read_text()[-2000:]}")
            try:
                with _no_proxy.open(f"{base_url}/models", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("llama_cpp.server did not start in 90 s") from None
                time.sleep(0.3)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def config(base_url: str, form: str) -> str:
    return f"""
tiers:
  server:
    - model: "openai-compatible:smollm2"
      options: {{base_url: "{base_url}", structured_output: {form}, timeout: 60}}
"""


@pytest.mark.parametrize("form", ["json_object_schema", "auto"])
def test_workflow_through_a_real_llama_cpp_server(project, llama_server, form):
    result = run_workflow(project(WORKFLOW, config=config(llama_server, form)), {"text": "I lost my card"})
    step = result.step("classify")
    assert result.outputs["classify"]["intent"] in ("card_lost", "balance", "other")
    valid = step.calls[-1]
    assert valid["outcome"] == "valid" and valid["tokens_in"] > 0 and valid["tokens_out"] > 0
    assert step.cost == 0  # no price for a local server


def test_the_json_schema_form_is_what_llama_cpp_server_rejects(llama_server):
    request = CompletionRequest(
        model="smollm2", messages=[{"role": "user", "content": "Reply in JSON"}], max_tokens=8,
        schema={"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
        options={"base_url": llama_server, "structured_output": "json_schema"})
    with pytest.raises(ProviderUnavailableError, match="json_object"):
        OpenAICompatibleProvider().complete(request)
