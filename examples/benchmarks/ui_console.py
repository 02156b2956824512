"""The review console under load, in a real headless Chromium: how long its pages take to load
and its keys take to act, over a store of BANKING77 traffic.

Set-up (offline, no model): `--n` BANKING77 test queries over 10 intents run through a two-tier
step on fake providers: the cheap tier is right about 60% of the time (a seeded coin), the premium
tier is a replay answering the true label and is the step's reference, checking `--sample` of the
cheap answers. The trusted evidence is mined into a lookup proposal (one row per query with
trusted evidence), and the labelling queue fills with the disagreements, low-confidence answers
and a sample. The console is then served by uvicorn in this process.

Measured, each `--repeat` times (median and max):
    server only        GET of each page over HTTP (httpx), no browser: the console's own work
    chromium load      driver.get() of each page until its load event (render included)
    chromium keys      `a` on a proposal (accept, then the page after it), a number key in the
                       queue (a label written, then the next item)

    python examples/benchmarks/ui_console.py [--n 400] [--repeat 10] [--data DIR]

Chromium: the Debian packages `chromium` and `chromium-driver`, with selenium (the `dev` extra).
Without them only the server rows are measured (said so).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
INTENTS = ["card_arrival", "lost_or_stolen_card", "exchange_rate", "pending_transfer", "request_refund",
           "top_up_failed", "passcode_forgotten", "cash_withdrawal_charge", "card_linking", "age_limit"]

CONFIG = """\
tiers:
  local:
    - model: fake:small
      input_price: 0.1
      output_price: 0.2
  premium:
    - model: fake:large
      input_price: 2.0
      output_price: 8.0
"""

WORKFLOW = """\
name: banking77_review
inputs: {ticket: {type: string}}
steps:
  - id: classify
    inputs: {ticket: "{{ inputs.ticket }}"}
    llm:
      tier: local
      escalate: [premium]
      prompt: "Customer message: {{ ticket }}"
      schema:
        type: object
        properties: {intent: {enum: %(intents)s}}
        required: [intent]
        additionalProperties: false
      max_tokens: 24
      retries: 0
      quality: {reference: premium, sample: %(sample)s, min_checks: 100000}
      promote: {min_calls: 1, spot_check: 0}
"""


def load_queries(data: Path, n: int, seed: int) -> dict[str, str]:
    with (data / "test.csv").open(newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["category"] in INTENTS]
    random.Random(seed).shuffle(rows)
    return {r["text"]: r["category"] for r in rows[:n]}


def responder(truth: dict[str, str], seed: int) -> Callable[[Any], Any]:
    from engine.providers.base import Completion

    def respond(request: Any) -> Any:
        ticket = str(request.messages[-1]["content"]).removeprefix("Customer message: ")
        right = truth.get(ticket, INTENTS[0])
        coin = random.Random(f"{seed}:{ticket}").random()
        if request.model == "large":
            answer, confidence = right, None
        else:
            answer = right if coin < 0.6 else INTENTS[int(coin * 1000) % len(INTENTS)]
            confidence = round(0.3 + 0.7 * coin, 3)
        return Completion(text=json.dumps({"intent": answer}), finish_reason="stop",
                          input_tokens=len(ticket) // 4 + 30, output_tokens=8, model=request.model,
                          confidence=confidence)

    return respond


class Server:
    def __init__(self, app: Any):
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def chromium() -> tuple[str, str] | None:
    browser = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).is_file()),
                   shutil.which("chromium"))
    driver = next((p for p in ("/usr/bin/chromedriver",) if Path(p).is_file()), shutil.which("chromedriver"))
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    return (browser, driver) if browser and driver else None


def start_chromium(paths: tuple[str, str]) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=paths[1]), options=options)


def press(driver: Any, key: str) -> None:
    """Press a key on the page and wait until the page it leads to has loaded."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.action_chains import ActionChains

    old = driver.find_element("tag name", "html")
    ActionChains(driver).send_keys(key).perform()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            old.tag_name  # noqa: B018  (reading it raises once the page is gone)
        except WebDriverException:  # stale, or the old document detached: a new page
            if driver.execute_script("return document.readyState") == "complete":
                return
        time.sleep(0.005)
    raise RuntimeError(f"pressing {key!r} did not lead to a new page")


def stats(name: str, kind: str, values: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values]
    return {"measure": name, "kind": kind, "n": len(ms), "median_ms": round(statistics.median(ms), 1),
            "max_ms": round(max(ms), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="BANKING77 test queries run before measuring")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--sample", type=float, default=0.5, help="share of cheap answers the reference checks")
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "benchmarks" / "data" / "banking77")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=RESULTS / "ui_console.json")
    args = parser.parse_args()
    console = Console()

    work = Path(tempfile.mkdtemp(prefix="ui-bench-"))
    os.environ["ENGINE_HOME"] = str(work)
    os.chdir(work)
    (work / "engine.yaml").write_text(CONFIG)
    path = work / "workflow.yaml"
    path.write_text(textwrap.dedent(WORKFLOW % {"intents": json.dumps(INTENTS), "sample": args.sample}))

    from engine import Engine, run_workflow
    from engine.http import create_app
    from engine.promotion import review
    from engine.providers.fake import FakeProvider
    from engine.providers.registry import register_provider
    from engine.quality import monitor
    from engine.quality.queue import review_queue
    from engine.runner import open_store

    truth = load_queries(args.data, args.n, args.seed)
    fake = FakeProvider()
    fake.responder = responder(truth, args.seed)
    register_provider("fake", fake)
    monitor.seed(args.seed)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as progress:
        task = progress.add_task("running BANKING77 queries", total=len(truth))
        for ticket in truth:
            run_workflow(path, {"ticket": ticket})
            progress.advance(task)
    monitor.drain()
    store = open_store(work / ".engine" / "engine.db")
    ((_, report),) = review.propose(store, path, scripts=False)
    proposal = report.proposed[0]
    rows = len(proposal.payload["rows"])
    queued = len(review_queue(store, limit=1000, sample=1000))
    console.print(f"{len(truth)} runs; lookup proposal {proposal.id} with {rows} rows; {queued} answers queued")

    results: list[dict[str, Any]] = []
    pages = {"proposals": "/ui/proposals", "proposal": f"/ui/proposals/{proposal.id}", "queue": "/ui/queue",
             "quality": "/ui/quality"}
    with Server(create_app(Engine(), [path], console_store=store)) as server:
        import httpx

        with httpx.Client(base_url=server.url) as client:
            for name, url in pages.items():
                client.get(url)  # warm
                times = []
                for _ in range(args.repeat):
                    start = time.perf_counter()
                    assert client.get(url).status_code == 200
                    times.append(time.perf_counter() - start)
                results.append(stats(f"GET {name}", "server only", times))
        paths = chromium()
        if paths is None:
            console.print("[yellow]no Chromium / chromedriver / selenium: browser rows skipped[/yellow]")
        else:
            driver = start_chromium(paths)
            try:
                for name, url in pages.items():
                    driver.get(server.url + url)  # warm
                    times = []
                    for _ in range(args.repeat):
                        start = time.perf_counter()
                        driver.get(server.url + url)
                        times.append(time.perf_counter() - start)
                    results.append(stats(f"load {name}", "chromium", times))
                driver.get(server.url + pages["proposal"])
                start = time.perf_counter()
                press(driver, "a")
                results.append(stats("accept (key a) until the next page", "chromium", [time.perf_counter() - start]))
                times = []
                driver.get(server.url + "/ui/queue")
                for _ in range(args.repeat):
                    choice = driver.find_elements("css selector", "button.choice[data-key]")
                    if not choice:
                        break
                    start = time.perf_counter()
                    press(driver, choice[0].get_attribute("data-key"))
                    times.append(time.perf_counter() - start)
                if times:
                    results.append(stats("label (number key) until the next item", "chromium", times))
            finally:
                driver.quit()

    table = Table(title=f"review console, {len(truth)} runs, {rows}-row proposal, {queued} queued answers "
                        f"(this machine: {os.cpu_count()} CPUs)", title_justify="left")
    for col in ("measure", "kind", "n", "median ms", "max ms"):
        table.add_column(col, justify="right" if col in ("n", "median ms", "max ms") else "left")
    for r in results:
        table.add_row(r["measure"], r["kind"], str(r["n"]), f"{r['median_ms']:.0f}", f"{r['max_ms']:.0f}")
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": len(truth), "proposal_rows": rows, "queued": queued,
                                    "repeat": args.repeat, "results": results}, indent=2) + "\n")
    console.print(f"wrote {args.out} (no chart: a table says it)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
