"""The browser app in a real headless Chromium against a real daphne.

Chromium's fake microphone plays tests/fixtures/two_utterances.wav (in a loop), so the
Talk page captures, converts and streams real speech. Screenshots of every page land in
test-artifacts/ for a person to look at.
"""

import contextlib
import http.server
import json
import os
import re
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from playwright import sync_api

from accounts.models import ApiToken
from accounts.services import api_token_create
from tests.e2e.servers import ROOT, run_daphne
from transcription.models import AudioSession, Transcript

expect = sync_api.expect

CHROMIUM = "/usr/bin/chromium"
FIXTURE_WAV = ROOT / "tests" / "fixtures" / "two_utterances.wav"
ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "correct-horse-battery"
PHONE = {"width": 390, "height": 844}

# Every browser test file's mark: skipped where Debian's Chromium is missing.
NEEDS_CHROMIUM = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK)
    and not os.environ.get("VOICEPROJECT_REQUIRE_BROWSER"),
    reason=f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)",
)
pytestmark = [pytest.mark.django_db(transaction=True), NEEDS_CHROMIUM]


def chromium_args(wav: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
    ]


@contextlib.contextmanager
def chromium(wav: Path = FIXTURE_WAV) -> Iterator[sync_api.Browser]:
    """Chromium, headless, whose fake microphone loops `wav`."""
    # Playwright's sync API keeps an event loop on this thread for as long as it runs,
    # and Django refuses ORM calls beside a running loop. The ORM calls here (fixtures,
    # checks, the test database flush) are synchronous ones made while no browser call
    # is in flight, so they are safe.
    with (
        pytest.MonkeyPatch.context() as patch,
        sync_api.sync_playwright() as playwright,
    ):
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=chromium_args(wav), headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def browser():
    with chromium() as browser:
        yield browser


class Receiver(socketserver.ThreadingTCPServer):
    """A TCP receiver (docs/protocol.md §10) answering each batch with what it heard."""

    daemon_threads = True
    documents: list[dict]

    class Handler(socketserver.StreamRequestHandler):
        timeout = 10

        def handle(self):
            document = json.loads(self.rfile.read())  # to EOF: the client half-closes
            self.server.documents.append(document)
            heard = " / ".join(t["text"] for t in document["transcriptions"])
            reply = {"message": f"I heard: {heard}."}
            self.wfile.write(json.dumps(reply).encode() + b"\n")


@pytest.fixture(scope="module")
def receiver():
    with Receiver(("127.0.0.1", 0), Receiver.Handler) as server:
        server.documents = []
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, receiver):
    env = {
        "TRANSCRIPTION_ENGINE": "offline",
        "OFFLINE_DECODER_PROCESSES": "1",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(receiver.server_address[1]),
        "TTS_ENGINE": "offline",
        # Chromium loops the fixture, with pauses too short for a batch: the reply
        # comes when Stop sends END_OF_STREAM.
        "SILENCE_SECONDS": "60",
    }
    with run_daphne(env) as live:
        yield live


@pytest.fixture(scope="module")
def password_hash():
    # The server runs the real settings, whose hashers do not include the fast MD5
    # one of tests/settings.py: store a hash it can check.
    hasher = PBKDF2PasswordHasher()
    return hasher.encode(PASSWORD, hasher.salt())


@pytest.fixture
def person(db, password_hash):
    return get_user_model().objects.create(username="maria", password=password_hash)


# Every page of every test reports what the Content-Security-Policy refused
# (voiceproject/csp.py): the browser app and the admin must need nothing it forbids.
CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolation(
    `${e.effectiveDirective} refused ${e.blockedURI || "inline"} on ${e.documentURI}`
    + ` (${e.sourceFile}:${e.lineNumber})`
  );
});
"""


def watch_csp(context) -> list[str]:
    """The violations any page of `context` will report, as they come."""
    violations: list[str] = []
    context.expose_function("__cspViolation", lambda text: violations.append(text))
    context.add_init_script(CSP_WATCH)
    return violations


@pytest.fixture
def page(browser, server, person):
    context = browser.new_context(
        base_url=server.http_url, permissions=["microphone"], viewport=None
    )
    violations = watch_csp(context)
    page = context.new_page()
    page.csp_violations = violations  # a test that provokes one takes it back
    page.on(
        "console",
        lambda m: "Content Security Policy" in m.text and violations.append(m.text),
    )
    page.set_default_timeout(20_000)
    yield page
    context.close()
    assert violations == []


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"browser-{name}.png", full_page=True)


def log_in(page, username: str = "maria") -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/accounts/login/\?next=/$"))
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORD)
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("username")).to_have_text(username)
    expect(page).to_have_url(re.compile(r"^http://127\.0\.0\.1:\d+/$"))
    # The page's deferred scripts have run (its buttons listen) only by its load: a
    # click before it is lost (seen once on a loaded machine).
    page.wait_for_load_state("load")


def test_login_rejects_a_wrong_password(page):
    page.goto("/")
    page.fill("input[name=username]", "maria")
    page.fill("input[name=password]", "not-the-password")
    page.get_by_test_id("login").click()
    expect(page.get_by_test_id("login-error")).to_be_visible()
    screenshot(page, "login-error")


def test_talk_streams_speaks_back_and_history_keeps_it(page, person, receiver):
    log_in(page)
    screenshot(page, "talk-idle")
    page.get_by_test_id("start").click()
    expect(page.get_by_test_id("stop")).to_be_visible()
    expect(page.locator(".meter")).to_have_attribute(
        "aria-valuenow", re.compile("[1-9]")
    )
    # The fixture says "the weather is nice today", then "please turn on the lights".
    finals = page.get_by_test_id("finals")
    expect(finals).to_contain_text("weather is nice", timeout=30_000)
    # (Whisper tiny hears "light" at times under load: either will do.)
    expect(page.get_by_test_id("partial")).to_contain_text(
        re.compile("light"), timeout=30_000
    )
    screenshot(page, "talk-live")
    expect(finals).to_contain_text(re.compile("turn on the light"), timeout=30_000)
    page.get_by_test_id("stop").click()

    # END_OF_STREAM sends the batch at once; the reply comes back as text and MP3,
    # sentence by sentence (replyStream): one card, its pieces played in turn.
    # (The engine first decodes what it still holds: on a busy two-core machine,
    # with Chromium beside it, that has taken longer than 30 s once.)
    reply = page.get_by_test_id("replies").locator(".reply")
    expect(reply).to_have_count(1, timeout=60_000)
    expect(page.get_by_test_id("start")).to_be_visible(timeout=30_000)
    said = finals.locator("li > span").all_inner_texts()
    expect(reply.locator("p")).to_have_text(f"I heard: {' / '.join(said)}.")
    expect(reply).to_have_attribute("data-state", "done")
    pieces = reply.locator("audio.piece")
    expect(reply).to_have_attribute("data-played", str(pieces.count()), timeout=30_000)
    page.wait_for_function(
        "a => a.duration > 0.3 && a.ended", arg=pieces.first.element_handle()
    )
    expect(page.get_by_test_id("status")).to_contain_text("saved to your history")
    screenshot(page, "talk-done")
    assert [t["text"] for t in receiver.documents[-1]["transcriptions"]] == said

    session = AudioSession.objects.get(user=person)
    assert session.auth_method == "session"
    assert session.engine == "whisper"
    assert session.status == "completed"
    assert session.sample_rate == 16000
    assert session.audio_bytes % 1024 == 0  # whole 1024-byte frames only
    assert list(session.transcripts.values_list("text", flat=True)) == said

    page.get_by_role("link", name="History", exact=True).click()
    card = page.get_by_test_id("history-session")
    expect(card).to_have_count(1)
    for text in said:
        expect(card.get_by_test_id("history-transcript")).to_contain_text(text)
    expect(card.get_by_test_id("history-reply")).to_have_text(
        f"I heard: {' / '.join(said)}."
    )
    history_player = card.get_by_test_id("history-reply").locator("audio")
    history_player.evaluate("a => a.play()")
    page.wait_for_function(
        "a => a.duration > 0.3 && a.currentTime > 0",
        arg=history_player.element_handle(),
    )
    with page.expect_download() as download:
        card.get_by_test_id("download-txt").click()
    lines = Path(download.value.path()).read_text().splitlines()
    assert lines[0].startswith(f"# session {session.pk} user maria ")
    assert lines[1:] == said
    screenshot(page, "history")


def test_create_copy_and_revoke_a_token(page, person):
    log_in(page)
    page.get_by_role("link", name="API tokens").click()
    page.get_by_test_id("token-name").fill("kitchen speaker")
    page.get_by_test_id("token-create").click()
    raw = page.get_by_test_id("raw-token").inner_text()
    assert raw.startswith("vp_")
    # The browser snippet carries the token as a subprotocol, not in the URL.
    expect(page.get_by_test_id("ws-browser")).to_contain_text(f'["token", "{raw}"]')
    assert "token=" not in page.get_by_test_id("ws-browser").inner_text()
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_test_id("copy-token").click()
    expect(page.get_by_test_id("copy-token")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == raw
    screenshot(page, "token-created")

    token = ApiToken.objects.get(user=person)
    assert token.name == "kitchen speaker"
    assert raw.startswith(token.prefix)
    page.reload()  # the raw token is shown once, never again
    expect(page.get_by_test_id("raw-token")).to_have_count(0)
    assert raw not in page.content()
    assert ApiToken.objects.filter(user=person).count() == 1

    row = page.locator(f"[data-testid=token-row][data-prefix='{token.prefix}']")
    expect(row.get_by_test_id("token-status")).to_have_text("active")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_test_id("token-revoke").click()
    expect(row.get_by_test_id("token-status")).to_have_text("revoked")
    expect(page.locator(".alert-success")).to_contain_text("revoked")
    screenshot(page, "token-revoked")
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_pages_fit_a_phone_in_dark_mode(browser, server, person):
    api_token_create(user=person, name="a rather long token name for a phone")
    session = AudioSession.objects.create(
        user=person, engine="offline", language="en-US", audio_seconds=6.7
    )
    for seq, text in enumerate(["the weather is nice today", "turn on the lights"], 1):
        Transcript.objects.create(
            session=session, seq=seq, text=text, start_seconds=seq, end_seconds=seq + 1
        )
    context = browser.new_context(
        base_url=server.http_url, viewport=PHONE, color_scheme="dark"
    )
    violations = watch_csp(context)
    page = context.new_page()
    try:
        log_in(page)
        for path, name in [
            ("/", "talk"),
            ("/history/", "history"),
            ("/accounts/tokens/", "tokens"),
        ]:
            page.goto(path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], f"{path} scrolls sideways ({width}px)"
            screenshot(page, f"phone-{name}")
    finally:
        context.close()
    assert violations == []


def test_a_server_error_shows_and_start_again_retries(browser, person):
    # Frames larger than the server's limit: it sends {"error"} and closes 1009.
    with run_daphne({"TRANSCRIPTION_ENGINE": "echo", "MAX_FRAME_BYTES": "512"}) as live:
        context = browser.new_context(base_url=live.http_url)
        violations = watch_csp(context)
        page = context.new_page()
        try:
            log_in(page)
            page.get_by_test_id("start").click()
            problem = page.get_by_test_id("error")
            expect(problem).to_be_visible()
            expect(problem).to_contain_text("larger than the limit of 512 bytes")
            expect(problem).to_contain_text("code 1009")
            expect(page.get_by_test_id("start")).to_be_visible()
            screenshot(page, "talk-error")
            with page.expect_websocket() as retry:
                page.get_by_test_id("restart").click()
            retry.value.wait_for_event("close")
            expect(page.locator("#talk")).to_have_attribute("data-state", "idle")
            expect(problem).to_contain_text("code 1009")
        finally:
            context.close()
    assert violations == []
    sessions = AudioSession.objects.filter(user=person)
    assert sessions.count() == 2
    assert {s.close_code for s in sessions} == {1009}


def test_app_and_admin_pass_the_content_security_policy(page, person):
    """Issue 20 item 14: a strict policy on every page (no inline script or style),
    and nothing on the app's pages or the admin's needs more (the `page` fixture
    fails the test on any violation, the Talk test's socket and audio included)."""
    person.is_staff = person.is_superuser = True
    person.save()
    token, _ = api_token_create(user=person, name="kitchen")
    session = AudioSession.objects.create(
        user=person, token=token, engine="offline", language="en-US"
    )
    Transcript.objects.create(session=session, seq=1, text="the weather is nice")
    log_in(page)
    policy = page.goto("/").headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    # An inline script is refused: the policy is in force, and the watch sees it.
    page.evaluate(
        """() => { const s = document.createElement("script");
                   s.textContent = "window.ran = 1"; document.body.append(s); }"""
    )
    assert page.evaluate("window.ran") is None
    page.wait_for_timeout(500)  # the report is delivered after the refusal
    assert any("script-src" in v for v in page.csp_violations), page.csp_violations
    page.csp_violations.clear()
    for path in ("/history/", "/accounts/tokens/", "/admin/"):
        page.goto(path)
    expect(page.locator("#ops-dashboard")).to_have_css("margin-bottom", "20px")
    page.goto(f"/admin/transcription/audiosession/{session.pk}/change/")
    expect(page.locator("#conversation")).to_contain_text("the weather is nice")
    page.goto("/admin/accounts/apitoken/")
    page.goto("/admin/accounts/apitoken/add/")
    page.locator(".select2-selection").click()  # the user autocomplete (select2)
    page.locator(".select2-search__field").fill("mar")
    page.locator(".select2-results__option", has_text="maria").click()
    page.fill("input[name=name]", "from the admin")
    page.get_by_role("button", name="Save").click()
    raw = page.locator("#raw-token")
    raw.focus()  # static/js/admin-token.js selects it
    selected = page.evaluate(
        "() => { const i = document.getElementById('raw-token');"
        " return i.value.slice(i.selectionStart, i.selectionEnd); }"
    )
    assert selected.startswith("vp_")
    screenshot(page, "admin-token-created-under-csp")


SUBPROTOCOL_CLIENT = """
async ({url, credential, audio}) => {
  const ws = new WebSocket(url, ["token", credential]);
  ws.binaryType = "arraybuffer";
  const messages = [];
  const closed = new Promise((resolve) => {
    ws.onclose = (event) => resolve(event.code);
  });
  ws.onmessage = (event) => messages.push(JSON.parse(event.data));
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = reject;
  });
  const bytes = Uint8Array.from(audio);
  for (let i = 0; i < bytes.length; i += 1024) ws.send(bytes.slice(i, i + 1024));
  ws.send("END_OF_STREAM");
  const code = await closed;
  return {protocol: ws.protocol, messages, code};
}
"""


class _Page(http.server.BaseHTTPRequestHandler):
    """A bare page of a site that is not this server (Chromium refuses loopback
    sockets from about:blank, so the page needs an origin of its own)."""

    def do_GET(self):
        body = b"<!doctype html><title>another site</title>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def third_party_site():
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page) as site:
        thread = threading.Thread(target=site.serve_forever, daemon=True)
        thread.start()
        yield f"http://localhost:{site.server_address[1]}/"
        site.shutdown()


def test_a_third_party_page_streams_with_a_grant_as_its_subprotocol(
    browser, django_user_model
):
    """A page of another origin holds only a grant; Chromium keeps the socket only
    because the server answers with the `token` subprotocol."""
    import httpx

    from tests.audio import read_pcm

    user = django_user_model.objects.create_user(username="pat")
    raw = api_token_create(user=user, name="site")[1]
    audio, _ = read_pcm("hello_world.wav")
    with run_daphne({"TRANSCRIPTION_ENGINE": "echo"}) as echo:
        grant = httpx.post(
            f"{echo.http_url}/api/grants", headers={"Authorization": f"Bearer {raw}"}
        ).json()["token"]
        context = browser.new_context()
        page = context.new_page()
        with third_party_site() as site:
            page.goto(site)  # another origin than the server's
        result = page.evaluate(
            SUBPROTOCOL_CLIENT,
            {"url": f"{echo.ws_url}/", "credential": grant, "audio": list(audio)},
        )
        context.close()
        output = echo.output()
    assert result["protocol"] == "token"
    assert result["messages"][-1] == {"transcript": f"received {len(audio)} bytes"}
    assert result["code"] == 1000
    assert AudioSession.objects.get().auth_method == "grant"
    assert grant not in output
    assert raw not in output
