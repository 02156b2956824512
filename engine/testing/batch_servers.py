"""In-process servers that speak OpenAI's and Anthropic's wire formats, batch APIs included.

Test support (see `engine.testing`), for the provider-batch tests and benchmark: `FakeProviderServer` listens on
127.0.0.1 (a real HTTP server, so the official SDKs reach it through `base_url`, also from
another process) and serves

- OpenAI: `POST /v1/chat/completions`; `POST /v1/files` (multipart, purpose `batch`),
  `GET /v1/files/{id}/content`; `POST /v1/batches`, `GET /v1/batches[/{id}]`,
  `POST /v1/batches/{id}/cancel`. A batch goes validating -> in_progress -> finalizing ->
  completed (or expired / cancelling -> cancelled / failed), one step per poll; its
  `output_file_id` holds one `{"id", "custom_id", "response": {"status_code": 200, "request_id",
  "body": <chat.completion>}, "error": null}` line per answered request, its `error_file_id` the
  failed ones (`status_code` 500 with an `error` body) and, for expired or cancelled batches, the
  requests never run (`"response": null, "error": {"code": "batch_expired" | "batch_cancelled"}`).
- Anthropic: `POST /v1/messages`; `POST /v1/messages/batches`, `GET /v1/messages/batches` (the
  list, newest first), `GET /v1/messages/batches/{id}`, `POST /v1/messages/batches/{id}/cancel`, and the JSONL at the
  batch's `results_url`: `{"custom_id", "result": {"type": "succeeded", "message": {...}}}`, or
  `{"type": "errored", "error": {"type": "error", "error": {"type": "api_error", ...}}}`,
  `{"type": "canceled"}`, `{"type": "expired"}`. A batch is in_progress, then ended; a cancelled
  one goes through canceling.

`answer(messages, model)` gives the model's reply as a JSON value (the assistant text for
OpenAI; the forced tool call's input for Anthropic). `Scenario` picks what goes wrong: failed
requests, a batch that expires or is cancelled after some requests, a batch that fails
validation, malformed result lines, batches held in progress until released. Counters record
what the provider would bill: requests answered in batches and in real time.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Answer = Callable[[list[dict[str, Any]], str], Any]


@dataclass
class Scenario:
    fail: Callable[[str, int], bool] = lambda custom_id, n: False
    """(custom_id, position in the batch) -> this request fails at the provider (HTTP 500 / errored)"""
    malformed: Callable[[str, int], bool] = lambda custom_id, n: False
    """this request's result line is written broken (not JSON)"""
    end: str = "completed"
    """completed | expired | cancelled (by the provider) | failed (the whole batch fails validation)"""
    run_before_end: int | None = None
    """expired / cancelled: how many requests ran before the end (default: half)"""
    polls_in_progress: int = 1
    """polls a batch answers in_progress before it finishes"""
    hold: threading.Event | None = None
    """while set is False, batches stay in_progress (released by `hold.set()`)"""
    lost: bool = False
    """the provider forgets every batch once created (retrieving it answers 404)"""


@dataclass
class Counters:
    batches_created: int = 0
    files_uploaded: int = 0
    batch_requests_billed: int = 0
    """requests a batch actually ran (succeeded): what the provider bills at the batch rate"""
    realtime_calls: int = 0
    polls: int = 0
    cancels: int = 0
    downloads: int = 0
    custom_ids: list[str] = field(default_factory=list)


def _tokens(text: str) -> int:
    return max(1, len(text) // 4)


def _now() -> int:
    return int(time.time())


def _iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


_ANTHROPIC_CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def openai_input_problem(lines: list[Any], endpoint: Any) -> str | None:
    """What is wrong with a Batch API input file, as documented: one `{"custom_id", "method":
    "POST", "url": <the batch's endpoint>, "body"}` per line, custom ids unique, one model."""
    if endpoint != "/v1/chat/completions":
        return f"unsupported endpoint {endpoint!r}"
    seen: set[str] = set()
    models = set()
    for n, line in enumerate(lines, start=1):
        if not isinstance(line, dict) or set(line) != {"custom_id", "method", "url", "body"}:
            return f"line {n}: expected exactly custom_id, method, url, body"
        if line["method"] != "POST" or line["url"] != endpoint:
            return f"line {n}: method must be POST and url {endpoint}"
        if not isinstance(line["custom_id"], str) or line["custom_id"] in seen:
            return f"line {n}: custom_id missing or not unique"
        seen.add(line["custom_id"])
        body = line["body"]
        if not isinstance(body, dict) or not body.get("model") or not isinstance(body.get("messages"), list):
            return f"line {n}: body needs model and messages"
        models.add(body["model"])
    return "every request of a batch must use the same model" if len(models) > 1 else None


def anthropic_input_problem(requests: Any) -> str | None:
    """What is wrong with a Message Batches create body: `requests`, each `{"custom_id", "params"}`
    with a unique custom id matching `^[a-zA-Z0-9_-]{1,64}$` and Messages API params."""
    if not isinstance(requests, list) or not requests:
        return "requests: a non-empty list is required"
    seen: set[str] = set()
    for n, req in enumerate(requests):
        if not isinstance(req, dict) or set(req) != {"custom_id", "params"}:
            return f"requests.{n}: expected exactly custom_id and params"
        cid = req["custom_id"]
        if not isinstance(cid, str) or not _ANTHROPIC_CUSTOM_ID.match(cid) or cid in seen:
            return f"requests.{n}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$ and be unique"
        seen.add(cid)
        params = req["params"]
        if not isinstance(params, dict) or not all(k in params for k in ("model", "max_tokens", "messages")):
            return f"requests.{n}.params: model, max_tokens and messages are required"
    return None


class FakeProviderServer:
    """See the module docstring. Use as a context manager; `base_url` is `http://127.0.0.1:PORT`."""

    def __init__(self, answer: Answer, scenario: Scenario | None = None, *, latency_s: float = 0.0):
        self.answer = answer
        self.scenario = scenario or Scenario()
        self.latency_s = latency_s
        self.counters = Counters()
        self.lock = threading.RLock()
        self.files: dict[str, bytes] = {}
        self.openai_batches: dict[str, dict[str, Any]] = {}
        self.anthropic_batches: dict[str, dict[str, Any]] = {}
        self._hidden: dict[str, dict[str, Any]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeProviderServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- model answers ---------------------------------------------------------------------------

    def _chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        value = self.answer(body["messages"], body["model"])
        text = value if isinstance(value, str) and body.get("_raw") else json.dumps(value)
        prompt = _tokens("".join(str(m.get("content")) for m in body["messages"]))
        out = _tokens(text)
        limit = body.get("max_completion_tokens") or body.get("max_tokens") or 10**9
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": _now(),
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": "length" if out > limit else "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": out, "total_tokens": prompt + out,
                      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                    "accepted_prediction_tokens": 0,
                                                    "rejected_prediction_tokens": 0}},
            "service_tier": "default", "system_fingerprint": "fp_fake",
        }

    def _message(self, params: dict[str, Any]) -> dict[str, Any]:
        system = params.get("system") or []
        system_text = system if isinstance(system, str) else "".join(b.get("text", "") for b in system)
        messages = ([{"role": "system", "content": system_text}] if system_text else []) + list(params["messages"])
        value = self.answer(messages, params["model"])
        tools = params.get("tools") or []
        wrapped = bool(tools) and set(tools[0]["input_schema"].get("properties", {})) == {"value"} \
            and not isinstance(value, dict)
        tool_input = {"value": value} if wrapped else value
        prompt = _tokens("".join(str(m.get("content")) for m in messages))
        out = _tokens(json.dumps(tool_input))
        return {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": params["model"],
            "content": [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": "respond",
                         "input": tool_input}],
            "stop_reason": "max_tokens" if out > params.get("max_tokens", 10**9) else "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": out, "cache_creation_input_tokens": 0,
                      "cache_read_input_tokens": 0},
        }

    # --- OpenAI batches --------------------------------------------------------------------------

    def _openai_create(self, body: dict[str, Any]) -> tuple[int, Any]:
        data = self.files.get(body.get("input_file_id", ""))
        if data is None:
            return 404, {"error": {"message": "No such File object", "type": "invalid_request_error",
                                   "param": "input_file_id", "code": None}}
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        problem = openai_input_problem(lines, body.get("endpoint"))
        if problem:  # the real API fails such a batch in validation; a test should fail louder
            return 400, {"error": {"message": problem, "type": "invalid_request_error", "param": None,
                                   "code": None}}
        batch_id = f"batch_{uuid.uuid4().hex[:24]}"
        now = _now()
        batch = {
            "id": batch_id, "object": "batch", "endpoint": body["endpoint"], "errors": None,
            "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
            "status": "validating", "output_file_id": None, "error_file_id": None, "created_at": now,
            "in_progress_at": None, "expires_at": now + 86400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        with self.lock:
            self.counters.batches_created += 1
            self.counters.custom_ids += [line["custom_id"] for line in lines]
            self.openai_batches[batch_id] = batch
            self._hidden[batch_id] = {"lines": lines, "polls": 0}
        return 200, batch

    def _openai_advance(self, batch: dict[str, Any]) -> None:
        hidden = self._hidden[batch["id"]]
        sc = self.scenario
        status = batch["status"]
        if status == "validating":
            if sc.end == "failed":
                batch.update(status="failed", failed_at=_now(), errors={"object": "list", "data": [
                    {"code": "invalid_request", "message": "The batch input file failed validation.",
                     "param": None, "line": 1}]})
            else:
                batch.update(status="in_progress", in_progress_at=_now())
        elif status == "in_progress":
            hidden["polls"] += 1
            if sc.hold is not None and not sc.hold.is_set():
                return
            if hidden["polls"] >= sc.polls_in_progress:
                if sc.end in ("expired", "cancelled"):
                    self._openai_finish(batch, sc.end)
                else:
                    batch.update(status="finalizing", finalizing_at=_now())
        elif status == "finalizing":
            self._openai_finish(batch, "completed")
        elif status == "cancelling":
            self._openai_finish(batch, "cancelled")

    def _openai_finish(self, batch: dict[str, Any], end: str) -> None:
        lines = self._hidden[batch["id"]]["lines"]
        run = len(lines) if end == "completed" else (
            self.scenario.run_before_end if self.scenario.run_before_end is not None else len(lines) // 2)
        if end == "cancelled" and batch["status"] == "cancelling":
            run = self._hidden[batch["id"]].get("run_at_cancel", run)
        out, err = [], []
        completed = failed = 0
        for n, line in enumerate(lines):
            cid = line["custom_id"]
            if n >= run:
                code = "batch_expired" if end == "expired" else "batch_cancelled"
                message = ("This request could not be executed before the completion window expired."
                           if end == "expired" else "This request was not executed because the batch was cancelled.")
                err.append({"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": cid, "response": None,
                            "error": {"code": code, "message": message}})
                failed += 1
                continue
            if self.scenario.fail(cid, n):
                err.append({"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": cid,
                            "response": {"status_code": 500, "request_id": f"req_{uuid.uuid4().hex[:24]}",
                                         "body": {"error": {"message": "The server had an error processing "
                                                            "your request.", "type": "server_error",
                                                            "param": None, "code": None}}},
                            "error": None})
                failed += 1
                continue
            body = self._chat_completion(line["body"])
            completed += 1
            with self.lock:
                self.counters.batch_requests_billed += 1
            record = {"id": f"batch_req_{uuid.uuid4().hex[:24]}", "custom_id": cid,
                      "response": {"status_code": 200, "request_id": f"req_{uuid.uuid4().hex[:24]}", "body": body},
                      "error": None}
            out.append("{" + json.dumps(record)[1:40] if self.scenario.malformed(cid, n) else json.dumps(record))
        stamp = {"completed": "completed_at", "expired": "expired_at", "cancelled": "cancelled_at"}[end]
        batch.update(status=end, **{stamp: _now()}, request_counts={"total": len(lines), "completed": completed,
                                                                     "failed": failed})
        if out:
            batch["output_file_id"] = self._store_file("".join(s + "\n" for s in out))
        if err:
            batch["error_file_id"] = self._store_file("".join(json.dumps(e) + "\n" for e in err))

    def _store_file(self, text: str) -> str:
        file_id = f"file-{uuid.uuid4().hex[:22]}"
        self.files[file_id] = text.encode()
        return file_id

    def _upload(self, headers: Any, raw: bytes) -> tuple[int, Any]:
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + headers["Content-Type"].encode() + b"\r\n\r\n" + raw)
        fields: dict[str, Any] = {}
        filename = "upload.jsonl"
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename() or filename
            fields[str(name)] = part.get_payload(decode=True)
        if fields.get("purpose", b"").decode() != "batch" or "file" not in fields:
            return 400, {"error": {"message": "purpose must be batch and a file is required",
                                   "type": "invalid_request_error", "param": "purpose", "code": None}}
        data = fields["file"]
        file_id = f"file-{uuid.uuid4().hex[:22]}"
        with self.lock:
            self.files[file_id] = data
            self.counters.files_uploaded += 1
        return 200, {"id": file_id, "object": "file", "bytes": len(data), "created_at": _now(),
                     "filename": filename, "purpose": "batch", "status": "processed", "expires_at": None,
                     "status_details": None}

    # --- Anthropic batches -----------------------------------------------------------------------

    def _anthropic_create(self, body: dict[str, Any]) -> tuple[int, Any]:
        requests = body.get("requests")
        problem = anthropic_input_problem(requests)
        if problem:
            return 400, {"type": "error", "error": {"type": "invalid_request_error", "message": problem}}
        assert isinstance(requests, list)
        batch_id = f"msgbatch_{uuid.uuid4().hex[:24]}"
        batch = {
            "id": batch_id, "type": "message_batch", "processing_status": "in_progress",
            "request_counts": {"processing": len(requests), "succeeded": 0, "errored": 0, "canceled": 0,
                               "expired": 0},
            "ended_at": None, "created_at": _iso(), "expires_at": _iso(), "archived_at": None,
            "cancel_initiated_at": None, "results_url": None,
        }
        with self.lock:
            self.counters.batches_created += 1
            self.counters.custom_ids += [r["custom_id"] for r in requests]
            self.anthropic_batches[batch_id] = batch
            self._hidden[batch_id] = {"requests": requests, "polls": 0}
        return 200, batch

    def _anthropic_advance(self, batch: dict[str, Any]) -> None:
        hidden = self._hidden[batch["id"]]
        sc = self.scenario
        if batch["processing_status"] == "ended":
            return
        hidden["polls"] += 1
        if batch["processing_status"] == "canceling":
            self._anthropic_finish(batch, "canceled")
            return
        if sc.hold is not None and not sc.hold.is_set():
            return
        if hidden["polls"] >= sc.polls_in_progress:
            self._anthropic_finish(batch, {"expired": "expired", "cancelled": "canceled"}.get(sc.end, "completed"))

    def _anthropic_finish(self, batch: dict[str, Any], end: str) -> None:
        requests = self._hidden[batch["id"]]["requests"]
        run = len(requests) if end == "completed" else (
            self.scenario.run_before_end if self.scenario.run_before_end is not None else len(requests) // 2)
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        lines = []
        for n, req in enumerate(requests):
            cid = req["custom_id"]
            if n >= run:
                result: dict[str, Any] = {"type": end}
            elif self.scenario.fail(cid, n):
                result = {"type": "errored", "error": {"type": "error", "error": {
                    "type": "api_error", "message": "Internal server error"}}}
            else:
                result = {"type": "succeeded", "message": self._message(req["params"])}
                with self.lock:
                    self.counters.batch_requests_billed += 1
            counts[result["type"]] += 1
            text = json.dumps({"custom_id": cid, "result": result})
            lines.append(text[:50] if self.scenario.malformed(cid, n) and result["type"] == "succeeded" else text)
        self._hidden[batch["id"]]["results"] = "".join(line + "\n" for line in lines)
        batch.update(processing_status="ended", ended_at=_iso(), request_counts=counts,
                     results_url=f"{self.base_url}/v1/messages/batches/{batch['id']}/results")

    # --- HTTP ------------------------------------------------------------------------------------

    def route(self, method: str, path: str, headers: Any, raw: bytes) -> tuple[int, Any, str]:
        """(status, payload, content type) for one request."""
        path = path.split("?")[0]
        body = json.loads(raw) if raw and "json" in (headers.get("Content-Type") or "") else {}
        if method == "POST" and path == "/v1/chat/completions":
            with self.lock:
                self.counters.realtime_calls += 1
            if self.latency_s:
                time.sleep(self.latency_s)
            return 200, self._chat_completion(body), "application/json"
        if method == "POST" and path == "/v1/messages":
            with self.lock:
                self.counters.realtime_calls += 1
            if self.latency_s:
                time.sleep(self.latency_s)
            return 200, self._message(body), "application/json"
        if method == "POST" and path == "/v1/files":
            status, payload = self._upload(headers, raw)
            return status, payload, "application/json"
        m = re.fullmatch(r"/v1/files/([^/]+)/content", path)
        if method == "GET" and m:
            with self.lock:
                self.counters.downloads += 1
            return 200, self.files[m.group(1)], "application/octet-stream"
        if method == "POST" and path == "/v1/batches":
            status, payload = self._openai_create(body)
            return status, payload, "application/json"
        if method == "GET" and path == "/v1/batches":
            with self.lock:
                data = list(reversed(list(self.openai_batches.values())))
            return 200, {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                         "last_id": data[-1]["id"] if data else None, "has_more": False}, "application/json"
        m = re.fullmatch(r"/v1/batches/([^/]+)(/cancel)?", path)
        if m and m.group(1) in self.openai_batches and not self.scenario.lost:
            batch = self.openai_batches[m.group(1)]
            with self.lock:
                if m.group(2) and method == "POST":
                    self.counters.cancels += 1
                    if batch["status"] in ("validating", "in_progress", "finalizing"):
                        done = self._hidden[batch["id"]]["polls"] > 0
                        self._hidden[batch["id"]]["run_at_cancel"] = (
                            self.scenario.run_before_end if self.scenario.run_before_end is not None
                            else (len(self._hidden[batch["id"]]["lines"]) // 2 if done else 0))
                        batch.update(status="cancelling", cancelling_at=_now())
                elif method == "GET":
                    self.counters.polls += 1
                    self._openai_advance(batch)
                return 200, dict(batch), "application/json"
        if method == "GET" and path == "/v1/messages/batches":  # newest first, as the real list
            with self.lock:
                listed = [dict(b) for b in reversed(list(self.anthropic_batches.values()))]
            return 200, {"data": listed, "has_more": False, "first_id": listed[0]["id"] if listed else None,
                         "last_id": listed[-1]["id"] if listed else None}, "application/json"
        if method == "POST" and path == "/v1/messages/batches":
            status, payload = self._anthropic_create(body)
            return status, payload, "application/json"
        m = re.fullmatch(r"/v1/messages/batches/([^/]+)(/cancel|/results)?", path)
        if m and m.group(1) in self.anthropic_batches:
            batch = self.anthropic_batches[m.group(1)]
            with self.lock:
                if m.group(2) == "/results":
                    if batch["processing_status"] != "ended":
                        return 400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                "message": "batch has not ended"}}, "application/json"
                    self.counters.downloads += 1
                    return 200, self._hidden[batch["id"]]["results"].encode(), "application/binary"
                if m.group(2) == "/cancel" and method == "POST":
                    self.counters.cancels += 1
                    if batch["processing_status"] == "in_progress":
                        batch.update(processing_status="canceling", cancel_initiated_at=_iso())
                elif method == "GET":
                    self.counters.polls += 1
                    self._anthropic_advance(batch)
                return 200, dict(batch), "application/json"
        return 404, {"error": {"message": f"no route {method} {path}", "type": "invalid_request_error"}}, \
            "application/json"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, payload, ctype = fake.route(method, self.path, self.headers, raw)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

        return Handler
