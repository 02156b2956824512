"""The review console end to end in a real headless Chromium: accept a proposal by keyboard and
see the next run served at zero tokens; label queued answers and see their evidence change; a
hostile ticket text stays inert. One browser for the module; screenshots of the pages."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from engine import Engine, run_workflow
from engine.http import create_app
from engine.promotion import records, review

from browser_support import LiveServer, report_timings, screenshot, start_browser
from ui_helpers import HOSTILE, TRUTH

TIMINGS: dict[str, list[float]] = {}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = start_browser()
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()
    report_timings(TIMINGS)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def live(tickets: Path, store: Any) -> Iterator[LiveServer]:
    with LiveServer(create_app(Engine(), [tickets], console_store=store)) as server:
        yield server


def _timed(name: str, action: Any) -> Any:
    start = time.perf_counter()
    result = action()
    TIMINGS.setdefault(name, []).append(time.perf_counter() - start)
    return result


def _key(driver: Any, key: str) -> None:
    """Press a key on the page (not in a field), then wait for the page it leads to."""
    from selenium.webdriver.common.action_chains import ActionChains

    old = driver.find_element("tag name", "html")
    ActionChains(driver).send_keys(key).perform()
    _wait_stale(driver, old)


def _wait_stale(driver: Any, element: Any, timeout: float = 10) -> None:
    from selenium.common.exceptions import WebDriverException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            element.tag_name  # noqa: B018  (reading it raises once the page is gone)
        except WebDriverException:  # stale, or the old document detached: a new page
            if driver.execute_script("return document.readyState") == "complete":
                return
        time.sleep(0.01)
    raise AssertionError("the page did not change")


def _text(driver: Any, css: str) -> str:
    return str(driver.find_element("css selector", css).text)


def test_accept_in_the_browser_then_the_next_run_is_served_at_zero_tokens(browser, live, tickets, store,
                                                                          fake, shots):
    ((_, report),) = review.propose(store, tickets, scripts=False)
    (p,) = report.proposed
    _timed("load proposals", lambda: browser.get(f"{live.url}/ui/proposals"))
    assert p.id in _text(browser, "#proposals")
    screenshot(browser, shots, "proposals")
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(browser).send_keys("j").perform()
    assert "selected" in browser.find_element("css selector", "tr[data-row]").get_attribute("class")
    _timed("open proposal (Enter)", lambda: _key(browser, "\ue007"))
    assert browser.current_url.endswith(f"/ui/proposals/{p.id}")
    assert _text(browser, "#status") == "proposed" and "rows and their evidence" in browser.page_source.lower()
    screenshot(browser, shots, "proposal")
    _timed("accept (key a)", lambda: _key(browser, "a"))
    assert "accepted" in _text(browser, "#flash") and _text(browser, "#status") == "accepted"
    assert records.get(store, p.id).status == "accepted"

    calls = len(fake.requests)
    hit = run_workflow(tickets, {"ticket": "card never came"})
    step = hit.step("classify")
    assert (step.served_by, step.tokens_in, step.tokens_out, step.cost) == ("lookup", 0, 0, 0.0)
    assert len(fake.requests) == calls  # no model was asked
    browser.refresh()
    assert _text(browser, "#serves") == "1"  # the console shows it serving


def test_shadow_and_reject_with_a_reason_by_keyboard(browser, live, tickets, store):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ((_, report),) = review.propose(store, tickets, scripts=False)
    (p,) = report.proposed
    browser.get(f"{live.url}/ui/proposals/{p.id}")
    _key(browser, "s")
    assert "shadow on" in _text(browser, "#flash") and browser.find_elements("css selector", "#shadow-on")
    assert records.get(store, p.id).shadow == 1
    ActionChains(browser).send_keys("r").perform()
    field = browser.switch_to.active_element
    assert field.get_attribute("id") == "reason-input"
    field.send_keys("hello is <b>not</b> a card")
    old = browser.find_element("tag name", "html")
    field.send_keys(Keys.ENTER)
    _wait_stale(browser, old)
    assert _text(browser, "#status") == "rejected" and _text(browser, "#reason") == "hello is <b>not</b> a card"
    assert records.get(store, p.id).status == "rejected"


def test_label_queued_answers_and_see_their_evidence_change(browser, live, store, shots):
    _timed("load queue", lambda: browser.get(f"{live.url}/ui/queue"))
    item = browser.find_element("css selector", "#item")
    run_id = item.get_attribute("data-run")
    ticket = store.run(run_id)["inputs"]["ticket"]
    assert "disagreement" in _text(browser, "#item h2")
    assert {"local", "premium"} <= set(_text(browser, "#answers").split())  # each tier that answered
    screenshot(browser, shots, "queue")
    before = store.query("SELECT COUNT(*) AS n FROM feedback WHERE run_id = ?", [run_id])[0]["n"]
    assert before == 0
    # pick the right label with its number key
    right = TRUTH[ticket]
    button = browser.find_element("css selector", f'button.choice[data-choice="{right}"]')
    _timed("label (number key)", lambda: _key(browser, button.get_attribute("data-key")))
    assert "labelled" in _text(browser, "#flash")
    assert browser.find_element("css selector", "#item").get_attribute("data-run") != run_id  # moved on
    first = browser.find_elements("css selector", "#recent tbody tr")[0].text
    assert right in first and "labelled" in first
    (row,) = store.query("SELECT kind, output, source FROM feedback WHERE run_id = ?", [run_id])
    assert row == {"kind": "label", "output": {"intent": right}, "source": "ui"}

    # confirm the next answer with y: its evidence goes from unverified to verified (by a person)
    next_run = browser.find_element("css selector", "#item").get_attribute("data-run")
    trust = store.query("SELECT trust FROM steps WHERE run_id = ?", [next_run])[0]["trust"]
    _key(browser, "y")
    first = browser.find_elements("css selector", "#recent tbody tr")[0].text
    assert "confirmed" in first and "verified" in first
    assert store.query("SELECT trust FROM steps WHERE run_id = ?", [next_run])[0]["trust"] == "verified" != trust

    # an edited answer that fails the schema is refused in place; nothing is written
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    current = browser.find_element("css selector", "#item").get_attribute("data-run")
    ActionChains(browser).send_keys("e").perform()
    field = browser.switch_to.active_element
    assert field.get_attribute("id") == "output"
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys('{"intent": "stolen"}')
    old = browser.find_element("tag name", "html")
    field.send_keys(Keys.CONTROL, Keys.ENTER)
    _wait_stale(browser, old)
    assert "rejected" in _text(browser, "#error")
    assert store.query("SELECT COUNT(*) AS n FROM feedback WHERE run_id = ?", [current])[0]["n"] == 0


def test_a_hostile_ticket_stays_inert(browser, live, tickets, store, shots):
    ((_, report),) = review.propose(store, tickets, scripts=False)
    review.accept(store, report.proposed[0].id)  # the hostile ticket is a row of the accepted table
    for _ in range(3):  # traffic the table answers, for the quality page's chart
        for ticket in TRUTH:
            assert run_workflow(tickets, {"ticket": ticket}).step("classify").served_by == "lookup"
    pages = [f"{live.url}/ui/queue", f"{live.url}/ui/proposals"]
    pages += [f"{live.url}/ui/proposals/{p.id}" for p in records.find(store)]
    for url in pages:
        browser.get(url)
        assert browser.execute_script("return window.__pwned") is None, url
    browser.get(f"{live.url}/ui/queue")
    assert HOSTILE in _text(browser, "#item-input").replace('\\"', '"')  # shown as text, literally
    assert not browser.find_elements("css selector", "#item img, #answers img, #item script")
    assert browser.execute_script("return window.__pwned") is None
    _timed("load quality", lambda: browser.get(f"{live.url}/ui/quality"))
    assert "tickets/classify" in _text(browser, "#agreement")
    assert browser.find_elements("css selector", "#cost-chart svg")
    screenshot(browser, shots, "quality")
