"""Async-native runs: the SDKs' async clients on the caller's loop, sync-only plugins on a thread,
and one loop carrying many runs at once."""

from __future__ import annotations

import asyncio
import json
import threading
import time

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

    def respond(request):
        threads.add(threading.current_thread().name)
        time.sleep(0.05)
        return {"label": "spam"}

    register_provider("fake", FakeProvider(responder=respond))
    try:
        wf = project(WORKFLOW, config="tiers: {cloud: [{model: 'fake:x'}]}\n")
        engine = Engine(max_workers=16)

        async def main():
            started = time.perf_counter()
            results = await asyncio.gather(*(engine.arun(wf, {"text": f"t{i}"}) for i in range(16)))
            return results, time.perf_counter() - started

        results, elapsed = asyncio.run(main())
        engine.close()
    finally:
        unregister_provider("fake")
    assert all(r.ok for r in results)
    assert threading.main_thread().name not in threads and all(t.startswith("engine") for t in threads)
    assert elapsed < 16 * 0.05 / 2  # the 16 blocking calls overlapped on the engine's pool


class AsyncOnlySleeper:
    """An async-native provider that refuses to be called synchronously under arun."""

    name = "sleeper"

    def __init__(self):
        self.active = self.peak = 0

    def complete(self, request):  # pragma: no cover - must not be used by arun
        raise AssertionError("arun must await acomplete")

    async def acomplete(self, request):
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.05)
        self.active -= 1
        return Completion(text=json.dumps({"label": "ham"}), finish_reason="stop", input_tokens=3, output_tokens=2)


def test_many_runs_overlap_on_one_loop_without_threads(project):
    provider = AsyncOnlySleeper()
    register_provider("sleeper", provider)
    try:
        wf = project(WORKFLOW, config="tiers: {cloud: [{model: 'sleeper:x'}]}\n")
        engine = Engine()

        async def main():
            started = time.perf_counter()
            results = await asyncio.gather(*(engine.arun(wf, {"text": f"t{i}"}) for i in range(200)))
            return results, time.perf_counter() - started

        results, elapsed = asyncio.run(main())
        engine.close()
    finally:
        unregister_provider("sleeper")
    assert all(r.outputs == {"label": "ham"} for r in results)
    assert provider.peak == 200  # every call was in flight at once
    assert elapsed < 200 * 0.05 / 4
