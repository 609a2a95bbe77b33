"""The web dashboard in a real browser: Debian's Chromium headless (selenium + chromium-driver)
against two real nodes. A value written through node A's form appears on node B's page, both
pages show the same digest, data is shown as text (never as HTML), and the token never stays in
the address bar.

No browser is downloaded: the driver is ``/usr/bin/chromedriver`` (an explicit ``Service`` path,
so Selenium Manager never runs). A machine without Chromium fails this test with the reason;
``make venv`` installs it (scripts/ensure-sysdeps.sh).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ecac.net.procs import NodeProc, wait_converged

from .conftest import Nodes

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: every wait on a page is bounded
WAIT_S = 20.0
INSTALL_HINT = (
    "make venv installs them (scripts/ensure-sysdeps.sh), or: apt-get install chromium chromium-driver"
)


def _require_browser() -> None:
    """Fail (not skip) when the browser stack is missing: the Makefile is meant to install it."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(f"the dashboard browser test needs {' and '.join(missing)}: {INSTALL_HINT}")
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("the dashboard browser test needs selenium: pip install -e '.[dev]' (make venv)")


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium with a throwaway profile, no network beyond loopback, console log kept."""
    _require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_AVOID_STATS", "true")
    monkeypatch.setenv("SE_OFFLINE", "true")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tmp_path / "chromium-profile"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,1600",
        "--no-proxy-server",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        # both pages live in tabs of one browser: keep the background tab's timers running
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _text(driver: Any, css: str) -> str | None:
    """The text of the first element matching ``css``, or None (absent, or replaced meanwhile)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.common.by import By

    try:
        return str(driver.find_element(By.CSS_SELECTOR, css).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return None


def _wait(driver: Any, what: str, pred: Callable[[], Any]) -> Any:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda _d: pred())
    except TimeoutException:
        body = _text(driver, "body")
        raise AssertionError(f"{what}: not seen within {WAIT_S:g} s; page text:\n{body}") from None


def _state_css(obj: str, field: str) -> str:
    return f'#state-table tr[data-object="{obj}"][data-field="{field}"] td.value'


def _token(node: NodeProc) -> str:
    tok = (node.db / "control.token").read_text(encoding="ascii").strip()
    assert re.fullmatch(r"[0-9a-f]{64}", tok), tok
    return tok


def _write(driver: Any, obj: str, field: str, value: str) -> str:
    """Fill in and submit the write form; the op id the page reports."""
    from selenium.webdriver.common.by import By

    for name, text in (("write-object", obj), ("write-field", field), ("write-value", value)):
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(text)
    before = _text(driver, "#write-result")

    def answered() -> str | None:
        t = _text(driver, "#write-result")
        return t if t and t != before and t.startswith(("wrote", "write failed")) else None

    driver.find_element(By.ID, "write-submit").click()
    result = _wait(driver, f"the result of writing {obj}.{field}", answered)
    m = re.search(r"as op ([0-9a-f]{64}) — ALLOWED$", result)
    assert m, f"write through the form failed: {result!r}"
    return m.group(1)


def _severe_console(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_dashboard_two_nodes_in_chromium(nodes: Nodes, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    a = nodes.start("a", extra_args=("--allow-writes",))
    b = nodes.start("b", peers=[a.addr], extra_args=("--allow-writes",))
    assert a.control_url is not None and b.control_url is not None

    # node A's page, opened with the token in the fragment: the page keeps it for this tab only
    # and takes it out of the address bar at once
    browser.get(f"{a.control_url}/#token={_token(a)}")
    tab_a = browser.current_window_handle
    _wait(browser, "node A's peer id", lambda: _text(browser, "#node-peer-id") == a.peer_id)
    assert "token" not in browser.current_url and browser.current_url.rstrip("/") == a.control_url
    assert browser.execute_script("return document.cookie") == ""
    _wait(browser, "A's form enabled", lambda: browser.find_element(By.ID, "write-submit").is_enabled())

    # node B's page in a second tab, opened without a token: the form says why it is disabled,
    # and pasting the token enables it
    browser.switch_to.new_window("tab")
    tab_b = browser.current_window_handle
    browser.get(b.control_url + "/")
    _wait(browser, "node B's peer id", lambda: _text(browser, "#node-peer-id") == b.peer_id)
    _wait(browser, "B's token hint", lambda: "token" in (_text(browser, "#write-note") or ""))
    assert not browser.find_element(By.ID, "write-submit").is_enabled()
    browser.find_element(By.ID, "token-input").send_keys(_token(b))
    browser.find_element(By.ID, "token-save").click()
    _wait(browser, "B's form enabled", lambda: browser.find_element(By.ID, "write-submit").is_enabled())
    _wait(
        browser,
        "A listed as a connected peer on B's page",
        lambda: _text(browser, f'#peers-table tr[data-peer="{a.peer_id}"] td:nth-child(2)') == "connected",
    )

    # write through A's form; B's page shows the value (live, from B's own gateway)
    browser.switch_to.window(tab_a)
    value = "hello from the browser"
    op_x = _write(browser, "o", "x", value)
    _wait(browser, "o.x on A's page", lambda: _text(browser, _state_css("o", "x")) == value)
    # HTML in a value is text on the page, never markup
    markup = "<b>x</b>"
    op_html = _write(browser, "o", "html", markup)

    browser.switch_to.window(tab_b)
    _wait(browser, "o.x on B's page", lambda: _text(browser, _state_css("o", "x")) == value)
    _wait(browser, "o.html on B's page", lambda: _text(browser, _state_css("o", "html")) == markup)
    assert browser.find_elements(By.CSS_SELECTOR, "#state-table b, #ops-table b") == []
    for op_id in (op_x, op_html):
        _wait(
            browser,
            f"op {op_id[:8]} ALLOWED in B's ops table",
            lambda op_id=op_id: (
                _text(browser, f'#ops-table tr[data-op="{op_id}"] td:nth-child(5)') == "ALLOWED"
            ),
        )

    # convergence is visible: both pages show the digest both nodes report, and each lists the
    # other as a connected peer with the same heads
    sa, sb = wait_converged([a, b], timeout=WAIT_S, min_ops=2)
    digest = sa["state_digest"]
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and sb["state_digest"] == digest
    shots: list[Path] = []
    for tab, name, peer in ((tab_b, "b", a.peer_id), (tab_a, "a", b.peer_id)):
        browser.switch_to.window(tab)
        _wait(
            browser,
            f"the converged digest on {name}'s page",
            lambda: _text(browser, "#node-digest") == digest,
        )
        assert _text(browser, "#node-op-count") == "2"
        peer_row = f'#peers-table tr[data-peer="{peer}"]'
        _wait(
            browser,
            f"the peer's heads match on {name}'s page",
            lambda peer_row=peer_row: _text(browser, peer_row + " td:nth-child(3)") == "same heads",
        )
        assert _text(browser, peer_row + " td:nth-child(2)") == "connected"
        # reference nodes answer hello: the peer proved its subject (its node key) and is served
        assert re.fullmatch(r"subject [0-9a-f]{8}…[0-9a-f]{4}", _text(browser, peer_row + " td:nth-child(5)"))
        assert _text(browser, "#live-status") == "live"
        assert _text(browser, "#error-banner") == ""
        assert browser.find_elements(By.CSS_SELECTOR, "#state-table b") == []
        shot = tmp_path / f"dashboard-{name}.png"
        assert browser.save_screenshot(str(shot))
        shots.append(shot)
        assert _severe_console(browser) == []
    for shot in shots:
        data = shot.read_bytes()
        assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n"), shot
    assert a.stop() == 0 and b.stop() == 0
