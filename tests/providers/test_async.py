"""Async-native runs: the SDKs' async clients on the caller's loop, sync-only plugins on a thread,
and one loop carrying many runs at once."""

from __future__ import annotations

import asyncio
import json
import threading

import anthropic
import openai
import pytest

from engine import Engine, arun_workflow
from engine.providers.anthropic import AnthropicProvider
from engine.providers.base import AsyncProvider, Completion
from engine.providers.fake import FakeProvider
from engine.providers.openai import OpenAIProvider
from engine.providers.registry import register_provider, unregister_provider

from sdkmock import recorded, sdk_http

WORKFLOW = """\
name: label
inputs: {text: {type: string}}
steps:
  - id: classify
    inputs: {text: "{{ inputs.text }}"}
    llm:
      tier: cloud
      prompt: "Label this: {{ text }}"
      schema:
        type: object
        properties: {label: {enum: [spam, ham]}}
        required: [label]
        additionalProperties: false
      max_tokens: 20
outputs:
  label: "{{ steps.classify.output.label }}"
"""


def async_client(sdk, payload):
    """An async client of the SDK's HTTP library whose transport answers `payload`; records the
    thread each request was handled on."""
    http = sdk_http(sdk)
    seen: list[str] = []

    async def handle(request):
        seen.append(threading.current_thread().name)
        return http.Response(200, json=payload)

    return http.AsyncClient(transport=http.MockTransport(handle)), seen


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_cloud_providers_use_the_sdks_async_clients(project, monkeypatch, name):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789")
    sdk, payload, model, cls = (
        (openai, recorded("openai_chat_completion.json"), "openai:gpt-4o-mini", OpenAIProvider) if name == "openai"
        else (anthropic, recorded("anthropic_tool_use.json"), "anthropic:claude-haiku-4-5", AnthropicProvider))
    client, seen = async_client(sdk, payload)
    provider = cls(async_http_client=client)
    assert isinstance(provider, AsyncProvider)
    register_provider(name, provider)
    try:
        wf = project(WORKFLOW, config=f"tiers: {{cloud: [{{model: '{model}'}}]}}\n")
        loop_thread: list[str] = []

        async def main():
            loop_thread.append(threading.current_thread().name)
            return await arun_workflow(wf, {"text": "win money"})

        result = asyncio.run(main())
    finally:
        unregister_provider(name)
    assert result.ok and result.outputs["label"] in ("spam", "ham")
    assert seen == loop_thread  # the request went through the async client, on the caller's loop


def test_sync_only_plugin_runs_on_a_thread_and_runs_overlap(project):
    threads: set[str] = set()
    lock = threading.Lock()
    active, peak = [0], [0]
    # Calls meet in pairs: a call returns only once another is in flight beside it, so calls made
    # one after another break the barrier (a failure) instead of depending on how long they take.
    pairs = threading.Barrier(2, timeout=30)

    def respond(request):
        threads.add(threading.current_thread().name)
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        pairs.wait()
        with lock:
            active[0] -= 1
        return {"label": "spam"}

    register_provider("fake", FakeProvider(responder=respond))
    try:
        wf = project(WORKFLOW, config="tiers: {cloud: [{model: 'fake:x'}]}\n")
        engine = Engine(max_workers=16)

        async def main():
            return await asyncio.gather(*(engine.arun(wf, {"text": f"t{i}"}) for i in range(16)))

        results = asyncio.run(main())
        engine.close()
    finally:
        unregister_provider("fake")
    assert all(r.ok for r in results)
    assert threading.main_thread().name not in threads and all(t.startswith("engine") for t in threads)
    assert peak[0] >= 2  # the blocking calls overlapped on the engine's pool


class AsyncOnlySleeper:
    """An async-native provider that refuses to be called synchronously under arun."""

    name = "sleeper"

    def __init__(self, together: int):
        self.active = self.peak = 0
        self.together = together  # every call waits until this many are in flight at once
        self.all_in: asyncio.Event | None = None

    def complete(self, request):  # pragma: no cover - must not be used by arun
        raise AssertionError("arun must await acomplete")

    async def acomplete(self, request):
        if self.all_in is None:
            self.all_in = asyncio.Event()
        self.active += 1
        self.peak = max(self.peak, self.active)
        if self.active == self.together:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 30)  # calls run one at a time: a timeout, not a pass
        self.active -= 1
        return Completion(text=json.dumps({"label": "ham"}), finish_reason="stop", input_tokens=3, output_tokens=2)


def test_many_runs_overlap_on_one_loop_without_threads(project):
    provider = AsyncOnlySleeper(together=200)
    register_provider("sleeper", provider)
    try:
        wf = project(WORKFLOW, config="tiers: {cloud: [{model: 'sleeper:x'}]}\n")
        engine = Engine()

        async def main():
            return await asyncio.gather(*(engine.arun(wf, {"text": f"t{i}"}) for i in range(200)))

        results = asyncio.run(main())
        engine.close()
    finally:
        unregister_provider("sleeper")
    assert all(r.outputs == {"label": "ham"} for r in results)
    assert provider.peak == 200  # every call was in flight at once


def test_async_clients_are_per_loop_and_closed_when_the_loop_ends(project, monkeypatch):
    """`asyncio.run` twice against a real local HTTP server, with the SDKs' own HTTP clients: the
    second loop gets its own client (a pool is bound to its loop), and the first loop's sockets
    are closed when it ends (else a ResourceWarning, an error here, surfaces at garbage collection)."""
    import gc
    import warnings
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the client pools the connection

        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = json.dumps({
                "id": "c1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": '{"label": "spam"}'}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789abcdef")
        provider = OpenAIProvider()
        register_provider("openai", provider)
        path = project(WORKFLOW + "tiers:\n  cloud:\n    - model: openai:gpt-4o-mini\n      options: {base_url: "
                       f"'http://127.0.0.1:{server.server_address[1]}/v1'}}\n")
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            for _ in range(2):
                result = asyncio.run(arun_workflow(path, {"text": "win a prize"}))
                assert result.status == "ok", result.error
                gc.collect()
        assert len(provider._async_clients._by_loop) == 0  # both loops gone, their clients with them
    finally:
        server.shutdown()
        server.server_close()
        unregister_provider("openai")
