"""`ProviderBatcher`: the llm calls of a batch run that wait for a provider batch.

An llm step asks `route(ctx, tier, entry)` before each call (see `engine.steps.llm.ask_tiers`).
The answer is None (the call goes out in real time) unless the model's provider has a batch API
(`engine.provider_batch.apis`) and the run sends this model through it (`--provider-batch`, or
`batch: true` on the model's tier entry), and, with `realtime_retries`, the call is the step's
first. Otherwise the call's `Route.complete` parks the item's thread: the request joins the
round's pending requests, and the item gives up its running slot.

When no item can run any more (each is finished or parked; see `engine.provider_batch.stages`),
`run_round` sends the pending requests, one provider batch per provider and model (and
`base_url` / key; identical requests from several items once, their answer shared and billed
once), polls every open batch until it ends, stores every result line in the ledger, and wakes
the parked items. Each then gets:

- `succeeded`: the reply, parsed by the provider's real-time parser, billed at the batch rate;
  the llm step validates it like any reply, and a re-ask or an escalation is the next call (the
  next round, or real time with `realtime_retries`);
- `errored`, `expired`, `canceled`, `malformed`, `missing`, or a batch that failed as a whole
  or could not be submitted: the same request in real time, at the real-time price. Each such
  fallback is logged (warning), counted (`fallbacks`) and marked in the ledger, and its answer
  is kept there: a resumed run replays it (at no cost when the killed run logged it already).

Durability (see `engine.store.ledger`): custom ids are derived from the batch run, the
item and the request, so a resumed run finds each request where a killed one left it; results
already stored are replayed without a call, and, when the killed run had logged them already,
at no cost (`Completion.prepaid`); batches still open are polled again, never submitted twice.

`max_wait_s` bounds the waiting of one invocation: past it, open batches are cancelled, what
they answered before the cancel is used, and the rest falls back to real time. A batch that
cannot be polled or downloaded is retried at the next poll when the error is transient (outage,
timeout, 429); after three client errors in a row, or past `max_wait_s`, it is given up and its
requests fall back to real time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from engine.errors import (AuthenticationError, ProviderError, ProviderTimeoutError, ProviderUnavailableError,
                           RateLimitError)
from engine.providers.base import Completion, CompletionRequest
from engine.providers.registry import get_provider
from engine.provider_batch.apis import BatchAPI, JobStatus, batch_api
from engine.spec.models import ModelEntry
from engine.store import Store
from engine.store.ledger import Job, Ledger
from engine.clock import now_iso

log = logging.getLogger("engine.provider_batch")

DONE_STATES = ("succeeded", "errored", "expired", "canceled", "malformed", "missing")


class BatchAborted(BaseException):
    """Raised in a parked item's thread when the run stops (Ctrl-C): the item's run is left
    unfinished, so `--resume` runs it again (and finds its provider batch where it was)."""


@dataclass
class ProviderBatchOptions:
    all_models: bool = True
    """`--provider-batch`: every model whose provider has a batch API. False: only tier entries
    marked `batch: true`."""
    realtime_retries: bool = False
    """Re-asks and escalations after a batch answer go out in real time instead of the next round."""
    max_wait_s: float | None = None
    """How long this invocation waits on provider batches before cancelling them (None: no bound)."""
    poll_s: float = 30.0
    """Seconds between polls of an open provider batch."""


def batch_options(requested: ProviderBatchOptions | None, *, marked: bool,
                  resumed: bool) -> ProviderBatchOptions | None:
    """The options a batch run goes with, or None (all real time). `requested`: the caller's
    (`--provider-batch` sets `all_models`); `marked`: some model is `batch: true`; `resumed`: a
    resumed run whose earlier attempt used provider batches, which keeps using them (with every
    model, unless only marked ones were), so it never pays in real time for what they answered."""
    if requested is not None and requested.all_models:
        return requested
    if not (marked or resumed):
        return None
    options = requested or ProviderBatchOptions()
    return replace(options, all_models=not marked)


@dataclass
class _Parked:
    custom_id: str
    fingerprint: str
    item: int
    run_id: str
    step_id: str
    tier: str
    entry: ModelEntry
    request: CompletionRequest
    job_id: str | None = None
    """The ledger job it is in already (a resumed run); None until submitted."""
    leader: str | None = None
    """The custom id of the identical request (another item's) that was sent in its place."""
    row: dict[str, Any] | None = None
    """The ledger row once the result is in (or why it is not)."""
    event: threading.Event = field(default_factory=threading.Event)
    aborted: bool = False


@dataclass
class BatchState:
    """What the progress bar shows: the round, what the parked items wait on, each batch's state."""

    round: int = 0
    stage: str = "running items"
    waiting: Counter[str] = field(default_factory=Counter)
    """step id -> items parked on it"""
    jobs: list[dict[str, Any]] = field(default_factory=list)
    """one per provider batch of this invocation: model, id, status, counts"""
    fallbacks: Counter[str] = field(default_factory=Counter)
    """why -> requests sent in real time instead"""
    batched: int = 0
    """requests answered by a provider batch"""
    replayed: int = 0
    """results found in the ledger on resume (no new call)"""
    waited_s: float = 0.0
    """time spent sleeping between polls (the providers' queue time)"""


def fingerprint(entry: ModelEntry, request: CompletionRequest) -> str:
    body = {"model": entry.model, "messages": request.messages, "max_tokens": request.max_tokens,
            "schema": request.schema, "temperature": request.temperature,
            "options": {k: v for k, v in request.options.items() if k not in ("timeout", "max_retries")}}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def custom_id(batch_id: str, item: int, fp: str, occurrence: int) -> str:
    """Unique per batch run, item, request and occurrence; stable across resumes; fits both
    providers' custom-id rules (Anthropic: `^[a-zA-Z0-9_-]{1,64}$`)."""
    digest = hashlib.sha256(f"{batch_id}|{item}|{fp}|{occurrence}".encode()).hexdigest()[:32]
    return f"i{item}-{digest}"


_KEPT = ("text", "finish_reason", "input_tokens", "output_tokens", "cached_input_tokens", "cache_write_tokens",
         "model", "logprobs", "confidence")
"""The fields of a real-time fallback answer the ledger keeps (enough to replay it)."""


def answer_of(completion: Completion) -> dict[str, Any]:
    return {name: getattr(completion, name) for name in _KEPT}


def completion_of(answer: dict[str, Any]) -> Completion:
    return Completion(**{name: answer[name] for name in _KEPT if name in answer})


def route_key(entry: ModelEntry) -> str:
    """Requests that may share one provider batch: same model, endpoint and key."""
    return "|".join([entry.model, str(entry.options.get("base_url") or ""), str(entry.options.get("api_key_env") or "")])


def entry_of(key: str) -> ModelEntry:
    """A model entry good enough to reach the provider batches of `route_key` (resume)."""
    model, base_url, key_env = (key.split("|") + ["", ""])[:3]
    options = {k: v for k, v in (("base_url", base_url), ("api_key_env", key_env)) if v}
    return ModelEntry.model_validate({"model": model, "options": options})


class Route:
    """A call that goes into a provider batch (`complete` blocks until its round is answered)."""

    def __init__(self, batcher: ProviderBatcher, run_id: str, step_id: str, tier: str, entry: ModelEntry):
        self.batcher, self.run_id, self.step_id, self.tier, self.entry = batcher, run_id, step_id, tier, entry

    def complete(self, request: CompletionRequest) -> Completion:
        return self.batcher.complete(self, request)


class ProviderBatcher:
    """See the module docstring. The scheduler (`engine.provider_batch.stages`) owns the threads;
    this owns the parked requests, the rounds and the ledger."""

    def __init__(self, store: Store, batch_id: str, options: ProviderBatchOptions | None = None, *,
                 on_state: Callable[[BatchState], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.options = options or ProviderBatchOptions()
        self.ledger = Ledger(store, batch_id)
        self.batch_id = batch_id
        self.on_state = on_state
        self.sleep, self.clock = sleep, clock
        self.started = clock()
        self.cond = threading.Condition()
        self.state = BatchState()
        self.runnable = 0
        """items running or ready to run (not parked, not finished); the scheduler's barrier"""
        self.in_flight = 0
        """items started and not finished"""
        self.slots: threading.Semaphore | None = None
        self._local = threading.local()
        self._new: list[_Parked] = []
        """parked on requests no provider batch holds yet"""
        self._parked: dict[str, _Parked] = {}
        """custom id -> parked item"""
        self._occurrences: Counter[tuple[str, str]] = Counter()
        self._asked: set[tuple[str, str]] = set()
        self._cancelled: set[str] = set()
        self._aborted = False

    # --- item threads ----------------------------------------------------------------------------

    def enter(self, item: int) -> None:
        """Called by an item's thread before it runs (the scheduler counted it runnable)."""
        self._local.item = item
        if self.slots is not None:
            self.slots.acquire()

    def leave(self) -> None:
        if self.slots is not None:
            self.slots.release()
        with self.cond:
            self.runnable -= 1
            self.in_flight -= 1
            self.cond.notify_all()

    def route(self, ctx: Any, tier: str, entry: ModelEntry) -> Route | None:
        """The batch route for this call, or None: it goes out in real time."""
        if getattr(self._local, "item", None) is None or batch_api(entry.provider) is None:
            return None
        if not (self.options.all_models or entry.batch):
            return None
        if self.options.realtime_retries and (ctx.run_id, ctx.step_id) in self._asked:
            return None
        return Route(self, ctx.run_id, ctx.step_id, tier, entry)

    def complete(self, route: Route, request: CompletionRequest) -> Completion:
        if self._aborted:
            raise BatchAborted()
        item = int(self._local.item)
        fp = fingerprint(route.entry, request)
        with self.cond:
            self._asked.add((route.run_id, route.step_id))
            self._occurrences[(route.run_id, fp)] += 1
            occurrence = self._occurrences[(route.run_id, fp)]
        cid = custom_id(self.batch_id, item, fp, occurrence)
        row = self.ledger.request(cid)
        parked = _Parked(cid, fp, item, route.run_id, route.step_id, route.tier, route.entry, request)
        if row is not None and row["state"] in DONE_STATES:  # answered before a kill: no new call
            with self.cond:
                self.state.replayed += 1
            parked.row = row
            return self._answer(parked)
        with self.cond:
            if row is not None and row.get("job_state") in ("submitting", "submitted", "ended"):
                parked.job_id = row["job_id"]
            else:
                self._new.append(parked)
            self._parked[cid] = parked
            self.state.waiting[route.step_id] += 1
            self.runnable -= 1
            self.cond.notify_all()
        if self.slots is not None:
            self.slots.release()
        parked.event.wait()
        if self.slots is not None:
            self.slots.acquire()
        if parked.aborted:
            raise BatchAborted()
        return self._answer(parked)

    def _answer(self, parked: _Parked) -> Completion:
        """The parked request's completion: the batch's answer, or the same request in real time."""
        row = parked.row or {"state": "missing", "error": "no result"}
        api = batch_api(parked.entry.provider)
        why, detail = row["state"], row.get("error")
        if why == "succeeded" and api is not None:
            try:
                completion = api.completion(row["result"], parked.request)
            except ValueError as e:
                why, detail = "malformed", str(e)
            else:
                ref = f"{row.get('provider_job_id') or row.get('job_id')}/{row.get('leader') or parked.custom_id}"
                completion.batch = ref
                # a follower shares the answer the provider billed once, for its leader
                completion.prepaid = bool(row.get("leader")) or self.ledger.paid_by_earlier_run(ref, parked.run_id)
                self.ledger.consumed(parked.custom_id, parked.run_id)
                with self.cond:
                    self.state.batched += 1
                return completion
        saved = row.get("fallback_result")
        if isinstance(saved, dict):  # answered in real time before a kill: replayed, not bought again
            completion = completion_of(saved)
            paid_by = row.get("fallback_run")
            completion.prepaid = bool(paid_by) and paid_by != parked.run_id and self.ledger.fallback_logged(
                str(paid_by), parked.step_id, completion.text)
            self.ledger.consumed(parked.custom_id, parked.run_id)
            return completion
        log.warning("provider batch: %s request %s (item %s, step %s) %s: %s; sending it in real time",
                    parked.entry.model, parked.custom_id, parked.item, parked.step_id, why, detail)
        self.ledger.mark_fallback(parked.custom_id, f"realtime:{why}")
        with self.cond:
            self.state.fallbacks[why] += 1
        completion = get_provider(parked.entry.provider).complete(parked.request)
        self.ledger.store_fallback(parked.custom_id, answer_of(completion), parked.run_id)
        return completion

    # --- rounds (the scheduler's thread) ---------------------------------------------------------

    def has_work(self) -> bool:
        with self.cond:
            return bool(self._parked)

    def resume_jobs(self) -> None:
        """Adopt what a killed run left: a job it was submitting when it died (its intent is in the
        ledger, the provider's batch id is not) is looked up at the provider (OpenAI: by metadata;
        Anthropic: by creation time, size and custom ids); one never found is dropped, and its
        requests go out again."""
        for job in self.ledger.open_jobs():
            if job.state != "submitting" or job.provider_job_id:
                continue
            api, provider = batch_api(job.provider), self._provider(job.provider)
            entry = entry_of(job.route_key)
            found = None
            if api is not None:
                try:
                    found = api.find(provider, entry, self._tag(job), custom_ids=self.ledger.sent_custom_ids(job),
                                     since=job.created_at, known=self.ledger.provider_job_ids(job.provider))
                except ProviderError as e:
                    log.warning("provider batch: cannot look up job %s: %s", job.id, e)
            if found:
                self.ledger.update_job(job, provider_job_id=found, state="submitted", submitted_at=now_iso())
            else:
                self.ledger.update_job(job, state="abandoned", error="never submitted (the run was killed)")

    def _provider(self, name: str) -> Any:
        return get_provider(name)

    def _tag(self, job: Job) -> dict[str, str]:
        return {"engine_batch": self.batch_id[:64], "engine_job": job.id}

    def run_round(self) -> None:
        """Submit the new requests, poll every open batch until it ends, store the results, wake
        the items. Runs on the scheduler's thread while every item is parked."""
        with self.cond:
            new, self._new = self._new, []
            self.state.round += 1
            round_no = self.state.round
        groups: dict[str, list[_Parked]] = {}
        for parked in new:
            groups.setdefault(route_key(parked.entry), []).append(parked)
        jobs: dict[str, tuple[Job, ModelEntry]] = {}
        for key, members in groups.items():
            entry = members[0].entry
            api = batch_api(entry.provider)
            assert api is not None
            leaders: dict[str, _Parked] = {}
            for p in members:  # the same request from several items is sent once
                leader = leaders.setdefault(p.fingerprint, p)
                if leader is not p:
                    p.leader = leader.custom_id
            unique = list(leaders.values())
            for start in range(0, len(unique), api.max_requests):
                chunk = unique[start:start + api.max_requests]
                ids = {p.custom_id for p in chunk}
                job, ok = self._submit(round_no, key, entry, api, chunk,
                                       [p for p in members if p.leader in ids])
                if ok:
                    jobs[job.id] = (job, entry)
        # jobs a killed run left open, that the parked items wait on
        with self.cond:
            waiting_on = {p.job_id: p.entry for p in self._parked.values() if p.job_id is not None}
        for job in self.ledger.open_jobs():
            if job.id in waiting_on and job.id not in jobs and job.provider_job_id:
                jobs[job.id] = (job, waiting_on[job.id])
        self._poll(jobs)
        self._release_orphans(set(jobs))
        self._set_stage(f"round {round_no} answered: items moving on to their next steps")

    def _submit(self, round_no: int, key: str, entry: ModelEntry, api: BatchAPI, chunk: list[_Parked],
                followers: list[_Parked]) -> tuple[Job, bool]:
        """Record and submit `chunk`; `followers` ask the same as a request in it and share its answer."""
        job = self.ledger.new_job(round_no, entry.provider, entry.model, key, [
            (p.custom_id, {"item": p.item, "run_id": p.run_id, "step_id": p.step_id, "tier": p.tier,
                           "fingerprint": p.fingerprint, "leader": p.leader}) for p in [*chunk, *followers]])
        for p in [*chunk, *followers]:
            p.job_id = job.id
        self._set_stage(f"round {round_no}: submitting {len(chunk)} requests to {entry.model}")
        try:
            provider_job_id, file_id = api.submit(self._provider(entry.provider), entry,
                                                  [(p.custom_id, p.request) for p in chunk], self._tag(job))
        except AuthenticationError:
            self.ledger.update_job(job, state="failed", error="authentication failed")
            raise
        except ProviderError as e:
            log.warning("provider batch: submitting %d requests to %s failed: %s", len(chunk), entry.model, e)
            self.ledger.update_job(job, state="failed", error=str(e))
            self.ledger.store_results(job, [], rest=("errored", f"submitting the batch failed: {e}"))
            self._wake_job(job)
            return job, False
        self.ledger.update_job(job, provider_job_id=provider_job_id, input_file_id=file_id, state="submitted",
                               submitted_at=now_iso())
        return job, True

    def _failed_to_reach(self, job: Job, error: ProviderError, what: str, fails: Counter[str]) -> bool:
        """A poll or a download failed. Transient errors are retried at the next poll; a job that
        keeps answering with a client error (3 times), or any failure past `--max-wait`, is given
        up: its requests go out in real time. True when given up."""
        fails[job.id] += 1
        log.warning("provider batch: %s %s failed: %s", what, job.provider_job_id, error)
        transient = isinstance(error, (ProviderUnavailableError, ProviderTimeoutError, RateLimitError))
        if (transient or fails[job.id] < 3) and not self._past_deadline():
            return False
        self.ledger.update_job(job, state="failed", error=f"{what}: {error}")
        self.ledger.store_results(job, [], rest=("missing", f"{what} failed: {error}"))
        self._wake_job(job)
        return True

    def _poll(self, jobs: dict[str, tuple[Job, ModelEntry]]) -> None:
        open_jobs = dict(jobs)
        fails: Counter[str] = Counter()
        while open_jobs:
            for job_id, (job, entry) in list(open_jobs.items()):
                api = batch_api(entry.provider)
                assert api is not None and job.provider_job_id is not None
                provider = self._provider(entry.provider)
                try:
                    status = api.poll(provider, entry, job.provider_job_id)
                except AuthenticationError:
                    raise
                except ProviderError as e:
                    if self._failed_to_reach(job, e, "polling", fails):
                        del open_jobs[job_id]
                    continue
                self.ledger.update_job(job, status=status.status, counts=status.counts,
                                       output_file_id=status.output_file_id, error_file_id=status.error_file_id,
                                       error=status.error, state="ended" if status.ended else job.state)
                self._show_job(job, entry, status)
                if status.ended:
                    try:
                        self._collect(job, entry, api, provider, status)
                    except AuthenticationError:
                        raise
                    except ProviderError as e:
                        if not self._failed_to_reach(job, e, "downloading the results of", fails):
                            continue
                    del open_jobs[job_id]
                elif self._past_deadline() and job_id not in self._cancelled:
                    log.warning("provider batch: %s still %s after --max-wait; cancelling it",
                                job.provider_job_id, status.status)
                    try:
                        api.cancel(provider, entry, job.provider_job_id)
                        self._cancelled.add(job_id)
                    except ProviderError as e:
                        log.warning("provider batch: cancelling %s failed: %s", job.provider_job_id, e)
            if open_jobs:
                started = self.clock()
                self.sleep(self.options.poll_s)
                self.state.waited_s += self.clock() - started

    def _collect(self, job: Job, entry: ModelEntry, api: BatchAPI, provider: Any, status: JobStatus) -> None:
        lines = api.results(provider, entry, status)
        mine = set(self.ledger.job_custom_ids(job))
        rows = [(ln.custom_id, ln.state, ln.line, ln.error) for ln in lines if ln.custom_id in mine]
        bad = sum(1 for ln in lines if ln.custom_id not in mine)
        if bad:
            log.warning("provider batch: %d unreadable or unknown result lines in %s", bad, job.provider_job_id)
        self.ledger.store_results(job, rows)
        if status.error:
            log.warning("provider batch: %s %s: %s", job.provider_job_id, status.status, status.error)
        self._wake_job(job)

    def _wake_job(self, job: Job) -> None:
        with self.cond:
            parked = [p for p in self._parked.values() if p.job_id == job.id]
        for p in parked:
            row = self.ledger.request(p.custom_id) or {}
            if row.get("state") not in DONE_STATES:
                row = {**row, "state": "missing", "error": "no result line"}
            self._wake(p, row)

    def _wake(self, parked: _Parked, row: dict[str, Any]) -> None:
        with self.cond:
            if self._parked.pop(parked.custom_id, None) is None:
                return
            parked.row = row
            self.state.waiting[parked.step_id] -= 1
            if self.state.waiting[parked.step_id] <= 0:
                del self.state.waiting[parked.step_id]
            self.runnable += 1
        parked.event.set()

    def _release_orphans(self, polled: set[str]) -> None:
        """Items parked on a job that is neither new nor open any more (lost in a crash): real time."""
        with self.cond:
            orphans = [p for p in self._parked.values() if p.job_id not in polled and p not in self._new]
        for p in orphans:
            self._wake(p, {"state": "missing", "error": "its provider batch was never submitted"})

    def abort(self) -> None:
        """Wake every parked item with `BatchAborted` (the run is stopping)."""
        with self.cond:
            self._aborted = True
            parked = list(self._parked.values())
            self._parked.clear()
            self._new.clear()
            self.runnable += len(parked)
        for p in parked:
            p.aborted = True
            p.event.set()

    # --- progress ---------------------------------------------------------------------------------

    def _past_deadline(self) -> bool:
        return self.options.max_wait_s is not None and self.clock() - self.started > self.options.max_wait_s

    def _set_stage(self, stage: str) -> None:
        with self.cond:
            self.state.stage = stage
        if self.on_state is not None:
            self.on_state(self.state)

    def _show_job(self, job: Job, entry: ModelEntry, status: JobStatus) -> None:
        with self.cond:
            info = {"job": job.id, "model": entry.model, "id": job.provider_job_id, "status": status.status,
                    "counts": status.counts, "requests": job.requests}
            self.state.jobs = [j for j in self.state.jobs if j["job"] != job.id] + [info]
        waiting = ", ".join(f"{k} {v}" for k, v in self.state.waiting.items())
        self._set_stage(f"round {self.state.round}: waiting on provider batches ({waiting or '-'})")
