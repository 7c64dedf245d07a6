"""The dashboard in a real browser: headless Chromium (Debian) driven by Playwright."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.registry.helpers import create_group, register
from tests.support.registry_proc import RegistryProcess

playwright_sync = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
ADMIN = "dashboard-admin-token"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="needs the Debian chromium package (make system-deps)"
)


@pytest.fixture
def dashboard_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """A fresh SQLite registry with a known admin token."""
    with RegistryProcess(tmp_path / "registry", extra=["--admin-token", ADMIN]) as proc:
        yield proc


def test_the_dashboard_starts_a_simulation_and_shows_it_live(
    dashboard_registry: RegistryProcess,
) -> None:
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # Prepare: the page loads and connects to the live stream
            page.goto(dashboard_registry.url + "/")
            page.wait_for_selector("#conn.live", timeout=15_000)

            # Execute: start a tiny simulation from the form
            page.fill("#sim-token", ADMIN)
            page.fill("#sim-nodes", "4")
            page.fill("#sim-rounds", "3")
            page.select_option("#sim-dataset", "digits")
            page.click("#sim-start")
            # The admin token is kept for this tab's session only, never in localStorage
            stored = page.evaluate(
                "() => [sessionStorage.getItem('mycelium-admin-token'),"
                " localStorage.getItem('mycelium-admin-token')]"
            )

            # Assert: log lines stream in, groups and ledger entries appear without reloading
            page.wait_for_selector("#sim-log .log-line", timeout=60_000)
            page.wait_for_selector("#groups .group-card", timeout=60_000)
            page.wait_for_selector("#ledger-body tr", timeout=90_000)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            page.wait_for_selector("#sim-log .log-line.end", timeout=120_000)
            page.wait_for_selector("#sim-list .badge.finished", timeout=15_000)
            page.wait_for_selector("#topology circle.node", timeout=5_000)
            page.wait_for_selector("#perf path.series", timeout=5_000)
            log_text = page.inner_text("#sim-log")
            page.screenshot(path=str(ARTIFACTS / "dashboard-finished.png"), full_page=True)
            ledger_rows = page.locator("#ledger-body tr").count()
            balance_rows = page.locator("#balances .bal").count()
            event_rows = page.locator("#event-log .ev").count()
        finally:
            browser.close()

    with httpx.Client(base_url=dashboard_registry.url) as c:
        entries = c.get("/ledger", params={"limit": 1000}).json()["count"]
    assert stored == [ADMIN, None]
    assert "round 3/3" in log_text and "finished" in log_text
    assert ledger_rows == min(entries, 60) and ledger_rows > 0
    assert balance_rows > 0 and event_rows > 0
    assert not errors, errors


def test_the_dashboard_shows_the_last_events_and_pages_back_after_pruning(
    tmp_path: Path,
) -> None:
    # Prepare: a registry keeping 230 events, holding 260 registrations' worth (pruned)
    extra = ["--events-max-rows", "230", "--prune-interval-s", "0.1", "--sweep-interval", "0.1"]
    with (
        RegistryProcess(tmp_path / "registry", extra=extra) as reg,
        httpx.Client(base_url=reg.url, timeout=10) as c,
    ):
        for _ in range(260):
            register(c)
        kept: list[int] = []
        for _ in range(400):  # the sweeper prunes within a few of its 0.1 s passes
            kept = [e["id"] for e in c.get("/events", params={"limit": 1000}).json()["data"]]
            if len(kept) == 230:
                break
            time.sleep(0.05)
        assert len(kept) == 230

        with playwright_sync.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                rows = "#event-log .ev"

                # Execute: open the dashboard
                page.goto(reg.url + "/")
                page.wait_for_selector("#conn.live", timeout=15_000)
                page.wait_for_function(f"document.querySelectorAll('{rows}').length >= 200")

                # Assert: the newest 200 events, oldest first; older ones on demand
                shown = [int(x) for x in page.eval_on_selector_all(rows, _IDS)]
                assert shown == kept[-200:]
                page.click("#log-older")
                page.wait_for_function(f"document.querySelectorAll('{rows}').length == 230")
                assert [int(x) for x in page.eval_on_selector_all(rows, _IDS)] == kept
                assert page.is_hidden("#log-older")  # nothing older is left

                # ... and the live stream still follows
                newcomer, _ = register(c)
                page.wait_for_function(f"document.querySelectorAll('{rows}').length == 231")
                assert newcomer in page.inner_text("#event-log .ev:last-child")
            finally:
                browser.close()
    assert not errors, errors


_IDS = "els => els.map(e => e.dataset.event)"


def test_the_topology_draws_sibling_links_live_and_drops_them_on_a_merge(
    dashboard_registry: RegistryProcess,
) -> None:
    # Prepare: two groups of one member each
    with httpx.Client(base_url=dashboard_registry.url, timeout=10) as c:
        _, ha = register(c)
        _, hb = register(c)
        ga = create_group(c, ha)
        gb = create_group(c, hb)
        with playwright_sync.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.goto(dashboard_registry.url + "/")
                page.wait_for_selector("#conn.live", timeout=15_000)
                page.wait_for_selector(f'#topology .hub[data-group="{gb}"]', timeout=10_000)
                before = page.locator("#topology .sibling-link").count()

                # Execute: A reports B as a sibling over HTTP while the page is open
                link = {"group_id": gb, "fit": 0.83, "own_fit": 0.8, "loss": 0.5, "examples": 9}
                r = c.put(
                    f"/groups/{ga}/siblings", headers=ha, json={"round": 1, "siblings": [link]}
                )
                assert r.status_code == 200, r.text
                line = f'#topology line.sibling-link[data-link="{ga}-{gb}"]'
                # A line between two hubs one above the other has an empty bounding box, which
                # Playwright calls hidden: wait for it in the DOM and for its label on screen.
                page.wait_for_selector(line, state="attached", timeout=10_000)
                tag = f'#topology text.sibling-label[data-link="{ga}-{gb}"]'
                page.wait_for_selector(tag, timeout=5_000)
                width = float(page.get_attribute(line, "stroke-width") or 0)
                label = page.text_content(tag)
                ARTIFACTS.mkdir(exist_ok=True)
                page.locator("#topology").screenshot(path=str(ARTIFACTS / "dashboard-siblings.png"))
                hint = page.inner_text("#topology-hint")

                # ... then A merges into B: A's hub and the link go
                r = c.post(f"/groups/{ga}/merge", headers=ha, json={"into": gb})
                assert r.status_code == 200, r.text
                page.wait_for_selector(line, state="detached", timeout=10_000)
                page.wait_for_selector(
                    f'#topology .hub[data-group="{ga}"]', state="detached", timeout=10_000
                )
            finally:
                browser.close()

    # Assert: none before, one dashed line as thick as its fit says, labelled with it
    assert before == 0
    assert width == pytest.approx(1 + 4 * 0.83)
    assert label == "fit 0.83"
    assert "1 sibling link" in hint
    assert not errors, errors
