"""The provider-batch ledger: durable state of provider batches (`engine.provider_batch`), in the
engine's store (tables from migration 060).

`provider_batch_jobs`: one row per provider batch a batch run submitted: its round, provider and
model, the provider's batch id, its state (`submitting` -> `submitted` -> `ended` -> `collected`),
the provider's own status word and request counts.

`provider_batch_requests`: one row per request, keyed by its `custom_id`, which is derived from
the batch run, the item, and a fingerprint of the request itself. Identical requests from several
items in one round are sent once: the others are rows whose `leader` names the one sent, and they
share its result line. A resumed run re-derives the
same custom ids, so it finds each request where the killed run left it: answered (the stored
result line is used, nothing is sent again), or inside a provider batch still running (that batch
is polled again, nothing is submitted twice).

Each row is written before the provider sees the request (state `pending`), and the provider's
batch id is written the moment it is known; a result line is written before the item that asked
is woken up. A request its provider batch did not answer is sent in real time, and that answer
is kept too (`fallback_result`, with the run that paid for it in `fallback_run`), so a resume
replays it instead of buying it again. Tables from migrations 060 and 085.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from engine.store import Store
from engine.clock import now_iso

JOB_OPEN = ("submitting", "submitted", "ended")
"""Job states whose results are not stored yet."""


@dataclass
class Job:
    id: str
    batch_id: str
    round: int
    provider: str
    model: str
    route_key: str
    state: str
    provider_job_id: str | None = None
    status: str | None = None
    counts: dict[str, int] | None = None
    requests: int = 0
    input_file_id: str | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    error: str | None = None
    submitted_at: str | None = None
    created_at: str | None = None
    """When the job's intent was written (before the provider was asked to create it)."""


def _job(row: dict[str, Any]) -> Job:
    counts = row.get("counts")
    return Job(id=row["id"], batch_id=row["batch_id"], round=row["round"] or 0, provider=row["provider"],
               model=row["model"], route_key=row["route_key"], state=row["state"],
               provider_job_id=row["provider_job_id"], status=row["status"],
               counts=json.loads(counts) if isinstance(counts, str) else counts, requests=row["requests"] or 0,
               input_file_id=row["input_file_id"], output_file_id=row["output_file_id"],
               error_file_id=row["error_file_id"], error=row["error"], submitted_at=row["submitted_at"],
               created_at=row.get("created_at"))


class Ledger:
    """Reads and writes the provider-batch tables of one `Store` (through its protocol)."""

    def __init__(self, store: Store, batch_id: str):
        self.store = store
        self.batch_id = batch_id

    def _execute(self, sql: str, params: list[Any]) -> None:
        self.store.execute(sql, params)

    # --- jobs -----------------------------------------------------------------------------------

    def open_jobs(self) -> list[Job]:
        """Jobs of this batch run whose results are not stored yet (a killed run left them)."""
        rows = self.store.query(
            f"SELECT * FROM provider_batch_jobs WHERE batch_id = ? AND state IN ({','.join('?' * len(JOB_OPEN))}) "
            "ORDER BY created_at", [self.batch_id, *JOB_OPEN])
        return [_job(r) for r in rows]

    def jobs(self) -> list[Job]:
        rows = self.store.query("SELECT * FROM provider_batch_jobs WHERE batch_id = ? ORDER BY created_at",
                                [self.batch_id])
        return [_job(r) for r in rows]

    def new_job(self, round_no: int, provider: str, model: str, route_key: str,
                requests: list[tuple[str, dict[str, Any]]]) -> Job:
        """Record a job and its requests (`(custom_id, row)`), all `pending`, in one transaction,
        before the provider is called."""
        now = now_iso()
        job = Job(id=uuid.uuid4().hex[:16], batch_id=self.batch_id, round=round_no, provider=provider,
                  model=model, route_key=route_key, state="submitting", requests=len(requests), created_at=now)
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO provider_batch_jobs (id, batch_id, round, provider, model, route_key, state, "
                "requests, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [job.id, self.batch_id, round_no, provider, model, route_key, job.state, len(requests), now, now])
            tx.execute_many(
                "INSERT INTO provider_batch_requests (custom_id, batch_id, job_id, item, run_id, step_id, tier, "
                "fingerprint, leader, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) "
                "ON CONFLICT(custom_id) DO UPDATE SET job_id = excluded.job_id, run_id = excluded.run_id, "
                "leader = excluded.leader, state = 'pending', result = NULL, error = NULL, "
                "updated_at = excluded.updated_at",
                [[cid, self.batch_id, job.id, row["item"], row["run_id"], row["step_id"], row["tier"],
                  row["fingerprint"], row.get("leader"), now, now] for cid, row in requests])
        return job

    def update_job(self, job: Job, **values: Any) -> None:
        for key, value in values.items():
            setattr(job, key, value)
        if "counts" in values:
            values["counts"] = json.dumps(values["counts"])
        values["updated_at"] = now_iso()
        self._execute(f"UPDATE provider_batch_jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                      [*values.values(), job.id])

    def job_custom_ids(self, job: Job) -> list[str]:
        return [r["custom_id"] for r in self.store.query(
            "SELECT custom_id FROM provider_batch_requests WHERE job_id = ?", [job.id])]

    def sent_custom_ids(self, job: Job) -> list[str]:
        """The custom ids the provider was given for `job` (its followers were not sent)."""
        return [r["custom_id"] for r in self.store.query(
            "SELECT custom_id FROM provider_batch_requests WHERE job_id = ? AND leader IS NULL", [job.id])]

    def provider_job_ids(self, provider: str) -> set[str]:
        """The provider batch ids every job of the store (any batch run) holds for `provider`."""
        return {r["provider_job_id"] for r in self.store.query(
            "SELECT provider_job_id FROM provider_batch_jobs WHERE provider = ? AND provider_job_id IS NOT NULL",
            [provider])}

    # --- requests -------------------------------------------------------------------------------

    def request(self, custom_id: str) -> dict[str, Any] | None:
        rows = self.store.query("SELECT r.*, j.provider_job_id, j.state AS job_state FROM provider_batch_requests r "
                                "LEFT JOIN provider_batch_jobs j ON j.id = r.job_id WHERE r.custom_id = ?",
                                [custom_id])
        if not rows:
            return None
        row = rows[0]
        for column in ("result", "fallback_result"):
            if isinstance(row.get(column), str):
                row[column] = json.loads(row[column])
        return row

    def store_results(self, job: Job, results: Iterable[tuple[str, str, Any, str | None]],
                      rest: tuple[str, str] = ("missing", "no result line for this request")) -> None:
        """Write each `(custom_id, state, result line, error)` of `job`, and mark the job collected,
        in one transaction. Requests of the job with no line get `rest` (state, error)."""
        now = now_iso()
        with self.store.transaction() as tx:
            tx.execute_many(
                "UPDATE provider_batch_requests SET state = ?, result = ?, error = ?, updated_at = ? "
                "WHERE custom_id = ? AND job_id = ?",
                [[state, None if line is None else json.dumps(line), error, now, cid, job.id]
                 for cid, state, line, error in results])
            tx.execute(  # followers share their leader's line
                "UPDATE provider_batch_requests SET (state, result, error) = (SELECT l.state, l.result, l.error "
                "FROM provider_batch_requests l WHERE l.custom_id = provider_batch_requests.leader), "
                "updated_at = ? WHERE job_id = ? AND leader IS NOT NULL", [now, job.id])
            tx.execute("UPDATE provider_batch_requests SET state = ?, error = ?, updated_at = ? "
                         "WHERE job_id = ? AND state = 'pending'", [*rest, now, job.id])
            tx.execute("UPDATE provider_batch_jobs SET state = 'collected', updated_at = ? WHERE id = ?",
                       [now, job.id])
        job.state = "collected"

    def mark_fallback(self, custom_id: str, why: str) -> None:
        self._execute("UPDATE provider_batch_requests SET fallback = ?, updated_at = ? WHERE custom_id = ?",
                      [why, now_iso(), custom_id])

    def store_fallback(self, custom_id: str, answer: dict[str, Any], run_id: str) -> None:
        """Keep the real-time answer a request got in place of its batch answer (and the run that
        paid for it), written before the item that asked goes on: a resume replays it."""
        self._execute("UPDATE provider_batch_requests SET fallback_result = ?, fallback_run = ?, updated_at = ? "
                      "WHERE custom_id = ?", [json.dumps(answer, ensure_ascii=False), run_id, now_iso(), custom_id])

    def fallback_logged(self, run_id: str, step_id: str, text: str) -> bool:
        """Whether the run that bought a real-time fallback answer logged (and priced) it."""
        return bool(self.store.query(
            "SELECT 1 FROM llm_calls WHERE run_id = ? AND step_id = ? AND raw_output = ? AND cost > 0 "
            "AND provider_batch IS NULL LIMIT 1", [run_id, step_id, text]))

    def consumed(self, custom_id: str, run_id: str) -> None:
        self._execute("UPDATE provider_batch_requests SET run_id = ?, updated_at = ? WHERE custom_id = ?",
                      [run_id, now_iso(), custom_id])

    def paid_by_earlier_run(self, ref: str, run_id: str) -> bool:
        """Whether a call answered by the batch request `ref` was already logged (and priced) by
        another run: an interrupted run, before the resume that replays it."""
        rows = self.store.query(
            "SELECT 1 FROM llm_calls WHERE provider_batch = ? AND run_id != ? AND cost > 0 LIMIT 1", [ref, run_id])
        return bool(rows)

    def any_jobs(self) -> bool:
        """Whether this batch run submitted any provider batch (so a resume has some to find)."""
        return bool(self.store.query("SELECT 1 FROM provider_batch_jobs WHERE batch_id = ? LIMIT 1", [self.batch_id]))

    def counts(self) -> dict[str, int]:
        rows = self.store.query("SELECT COALESCE(fallback, state) AS k, COUNT(*) AS n FROM provider_batch_requests "
                                "WHERE batch_id = ? GROUP BY k", [self.batch_id])
        return {r["k"]: r["n"] for r in rows}
