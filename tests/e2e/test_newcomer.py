"""The newcomer's path in a real Chromium, against servers started as `make run` does.

ensure_demo prints the demo login (kept in a .env), the demo receiver and daphne run
as subprocesses; the person logs in, talks (Chromium's fake microphone plays
tests/fixtures/two_utterances.wav), stops, follows the link to the session in
History, and keeps working across a server restart: still logged in, and the Talk
page reconnects by itself once the server is back.
"""

import contextlib
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from playwright import sync_api

from tests.e2e.servers import ROOT, free_port, run_daphne, run_process, server_env
from tests.e2e.test_browser import CHROMIUM, FIXTURE_WAV, chromium_args, screenshot

expect = sync_api.expect

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK)
        and not os.environ.get("VOICEPROJECT_REQUIRE_BROWSER"),
        reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)",
    ),
]


def ensure_demo(env_file, url: str) -> tuple[str, str, str]:
    """What `make run` prints: (username, password, API token)."""
    result = subprocess.run(
        [
            *(sys.executable, "manage.py", "ensure_demo"),
            *("--env-file", str(env_file), "--url", url),
        ],
        cwd=ROOT,
        env=server_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    login = re.search(r"log in\s+(\S+) / (\S+)", result.stdout)
    token = re.search(r"API token\s+(vp_\S+)", result.stdout)
    assert login, result.stdout
    assert token, result.stdout
    return login[1], login[2], token[1]


def wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture
def browser(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")  # see test_browser
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=chromium_args(FIXTURE_WAV), headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def demo_receiver():
    port = free_port()
    args = [sys.executable, "manage.py", "run_receiver", "--port", str(port)]
    with run_process(args, name="receiver"):
        wait_listening(port)
        yield port


def test_make_run_talk_history_and_a_restart(browser, demo_receiver, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env_file = tmp_path / ".env"
    username, password, raw = ensure_demo(env_file, url)
    env = {
        "TRANSCRIPTION_ENGINE": "offline",
        "OFFLINE_DECODER_PROCESSES": "1",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(demo_receiver),
        # Chromium loops the fixture with short pauses: the reply comes at Stop.
        "SILENCE_SECONDS": "60",
        "REDIS_URL": "",  # as make run: the in-memory layer, the worker in-process
    }
    context = browser.new_context(base_url=url, permissions=["microphone"])
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        with run_daphne(env, port=port) as live:
            page.goto("/")
            page.fill("input[name=username]", username)
            page.fill("input[name=password]", password)
            page.get_by_test_id("login").click()
            expect(page.get_by_test_id("username")).to_have_text(username)
            page.wait_for_load_state("load")  # its scripts listen (test_browser)

            page.get_by_test_id("start").click()
            finals = page.get_by_test_id("finals")
            expect(finals).to_contain_text("turn on the lights", timeout=60_000)
            page.get_by_test_id("stop").click()
            replies = page.get_by_test_id("replies").locator(".reply")
            expect(replies).to_have_count(1, timeout=30_000)
            link = page.get_by_test_id("history-link")
            expect(link).to_have_text("saved to your history", timeout=30_000)
            screenshot(page, "newcomer-done")

            link.click()
            # No ORM call beside Playwright's loop (see test_browser): the page says.
            expect(page).to_have_url(
                re.compile(rf"^{url}history/#session-[0-9a-f-]{{36}}$")
            )
            session_id = page.url.rsplit("#session-", 1)[1]
            card = page.locator(":target")
            expect(card).to_have_attribute("data-session", session_id)
            expect(card).to_contain_text("turn on the lights")
            # preload="metadata": the reply's player knows its length before playing.
            page.wait_for_function(
                "a => a.duration > 0.3",
                arg=card.locator("audio").first.element_handle(),
            )
            screenshot(page, "newcomer-history")
            page.goto("/")
            log = live.output()
        assert raw not in log
        assert password not in log

        # The server is down: Start says so and keeps trying.
        page.get_by_test_id("start").click()
        expect(page.get_by_test_id("error")).to_contain_text(
            "cannot be reached: is it running?"
        )
        expect(page.get_by_test_id("status")).to_contain_text("Cannot reach the server")
        screenshot(page, "newcomer-server-down")

        # `make run` again: the same login and token, and the browser stays logged in.
        assert ensure_demo(env_file, url) == (username, password, raw)
        with run_daphne(env, port=port):
            expect(page.locator("#talk")).to_have_attribute(
                "data-state", "live", timeout=60_000
            )
            expect(page.get_by_test_id("error")).to_be_hidden()
            page.get_by_test_id("stop").click()
            expect(page.get_by_test_id("status")).to_contain_text(
                "saved to your history", timeout=60_000
            )
            page.goto("/history/")
            expect(page).to_have_url(f"{url}history/")
            expect(page.get_by_test_id("username")).to_have_text(username)
            expect(page.get_by_test_id("history-session")).to_have_count(2)
    finally:
        context.close()
