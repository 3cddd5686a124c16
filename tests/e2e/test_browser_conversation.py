"""The Talk page's conversation: streamed replies, barge-in and resume (issue 19).

Real Chromium, a real daphne (offline engine and TTS), a real TCP receiver. Chromium's
fake microphone loops a fixture made here from two_utterances.wav with longer pauses:
"the weather is nice today", 4 s of quiet, "please turn on the lights", 4 s of quiet.
So a reply comes in the first pause and the person speaks again while it plays.
"""

import asyncio
import contextlib
import json
import re
import socket
import socketserver
import struct
import threading
import wave

import numpy as np
import pytest
from playwright import sync_api

from tests.e2e import test_browser
from tests.e2e.servers import run_daphne
from tests.e2e.test_browser import (
    FIXTURE_WAV,
    NEEDS_CHROMIUM,
    chromium,
    log_in,
    screenshot,
    watch_csp,
)
from transcription.models import AudioSession, ReceiverBatch, Transcript

expect = sync_api.expect
# The Talk tests' own fixtures: a person who logs in with test_browser.PASSWORD.
password_hash = test_browser.password_hash
person = test_browser.person

pytestmark = [pytest.mark.django_db(transaction=True), NEEDS_CHROMIUM]

PAUSE_SECONDS = 4.0
# A long reply, one sentence a line: the first is heard while the receiver still
# holds back the rest, which the person's speaking again then cancels.
LONG_REPLY = [
    "Here is a long answer, told one sentence at a time, so that you hear its "
    "beginning while the rest of it is still being written.",
    "The second sentence waits in the page's queue, and it plays as soon as the "
    "first one has ended, unless you start speaking again.",
    "The third sentence is there to be dropped when you speak again, because "
    "nobody likes to be talked over by a machine.",
]
HELD_BACK = "This sentence is written only once the test lets it go."


@pytest.fixture(scope="module")
def fixture_wav(tmp_path_factory):
    with wave.open(str(FIXTURE_WAV)) as source:
        rate = source.getframerate()
        audio = np.frombuffer(source.readframes(source.getnframes()), np.int16)
    quiet = np.zeros(int(PAUSE_SECONDS * rate), np.int16)
    weather, lights = audio[: int(1.6 * rate)], audio[int(3.7 * rate) : int(5.3 * rate)]
    path = tmp_path_factory.mktemp("audio") / "pauses.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(np.concatenate([weather, quiet, lights, quiet]).tobytes())
    return path


@pytest.fixture(scope="module")
def browser(fixture_wav):
    with chromium(fixture_wav) as browser:
        yield browser


class Receiver(socketserver.ThreadingTCPServer):
    """A streaming TCP receiver (docs/protocol.md §11): after `hold_next()`, the next
    batch is answered with LONG_REPLY, one line each, and HELD_BACK only once
    `release` is set (or its connection is gone); other batches get "Go on."."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), self.Handler)
        self.documents: list[dict] = []
        self.holding = threading.Event()
        self.release = threading.Event()

    def hold_next(self) -> None:
        self.release.clear()
        self.holding.set()

    class Handler(socketserver.StreamRequestHandler):
        timeout = 60

        def handle(self):
            document = json.loads(self.rfile.readline())
            server = self.server
            server.documents.append(document)
            long = document.get("stream") is True and server.holding.is_set()
            server.holding.clear()
            with contextlib.suppress(OSError):
                for line in LONG_REPLY if long else ["Go on."]:
                    self.wfile.write(json.dumps({"message": line}).encode() + b"\n")
                    self.wfile.flush()
                if long:
                    server.release.wait(60)
                    line = json.dumps({"message": HELD_BACK}).encode() + b"\n"
                    self.wfile.write(line)


@pytest.fixture(scope="module")
def receiver():
    with Receiver() as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server
        server.release.set()
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(django_db_setup, django_db_blocker, receiver):
    env = {
        "TRANSCRIPTION_ENGINE": "offline",
        "OFFLINE_DECODER_PROCESSES": "1",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(receiver.server_address[1]),
        "RECEIVER_TIMEOUT": "60",
        "TTS_ENGINE": "offline",
        "SILENCE_SECONDS": "0.5",  # the fixture's pauses are 4 s: a batch in each
    }
    with run_daphne(env) as live:
        yield live


@contextlib.contextmanager
def talk_page(browser, base_url: str):
    context = browser.new_context(
        base_url=base_url, permissions=["microphone"], viewport=None
    )
    violations = watch_csp(context)
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        yield page
    finally:
        context.close()
    assert violations == []


class DroppingProxy:
    """A TCP proxy in front of daphne: a network that drops. `drop()` resets every
    connection (RST: no close frame reaches either side) and refuses new ones until
    `restore()`."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.loop = asyncio.new_event_loop()
        self.links: set[asyncio.StreamWriter] = set()
        self.down = False

    def __enter__(self) -> "DroppingProxy":
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.server = self._call(asyncio.start_server(self._link, "127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *exc) -> None:
        self.drop()
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def drop(self) -> None:
        async def drop():
            self.down = True
            for writer in list(self.links):
                self._reset(writer)

        self._call(drop())

    def restore(self) -> None:
        async def restore():
            self.down = False

        self._call(restore())

    @staticmethod
    def _reset(writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            linger = struct.pack("ii", 1, 0)  # close at once, with a reset
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        writer.transport.abort()

    async def _link(self, reader, writer) -> None:
        if self.down:
            self._reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.upstream_port
            )
        except OSError:
            self._reset(writer)
            return
        self.links |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pump(reader, up_writer), self._pump(up_reader, writer)
            )
        finally:
            self.links -= {writer, up_writer}

    async def _pump(self, reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except OSError:
            self._reset(writer)


def piece_states(reply) -> list[str]:
    return reply.evaluate(
        "card => [...card.querySelectorAll('audio.piece')].map(a => a.dataset.state)"
    )


def test_a_streamed_reply_plays_and_stops_when_the_person_speaks_again(
    browser, server, person, receiver
):
    receiver.hold_next()
    with talk_page(browser, server.http_url) as page:
        log_in(page)
        expect(page.get_by_test_id("barge-in")).to_be_checked()
        page.get_by_test_id("start").click()
        reply = page.get_by_test_id("replies").locator(".reply").first
        expect(reply).to_contain_text(LONG_REPLY[0], timeout=60_000)
        # Heard while the receiver still holds the rest back: pieces play as they
        # come, not once the reply is whole.
        first = reply.locator("audio.piece").first
        page.wait_for_function(
            "a => a.duration > 1 && (a.currentTime > 0 || a.ended)",
            arg=first.element_handle(),
        )
        assert reply.get_attribute("data-state") != "done"
        screenshot(page, "talk-reply-streaming")

        # The fixture speaks again: the server cancels the reply (reply_cancelled),
        # the page stops it at once and drops what was queued.
        expect(reply).to_have_attribute("data-cancelled", "true", timeout=60_000)
        expect(reply).to_have_attribute("data-state", "interrupted")
        expect(reply.get_by_test_id("reply-state")).to_have_text("Interrupted")
        states = piece_states(reply)
        assert states[0] in {"played", "stopped"}, states
        assert set(states) <= {"played", "stopped", "dropped"}, states
        assert {"stopped", "dropped"} & set(states), states  # cut short, not ended
        assert reply.evaluate(
            "card => [...card.querySelectorAll('audio.piece')].every(a => a.paused)"
        )
        assert HELD_BACK not in reply.inner_text()
        screenshot(page, "talk-reply-interrupted")
        page.get_by_test_id("stop").click()
        expect(page.get_by_test_id("start")).to_be_visible(timeout=60_000)
    receiver.release.set()

    session = AudioSession.objects.get(user=person)
    assert session.parameters["replyStream"] is True
    assert session.parameters["bargeIn"] is True
    batch = session.batches.order_by("created_at").first()
    assert batch.interrupted_at is not None
    assert batch.reply_sent.startswith(LONG_REPLY[0])
    assert HELD_BACK not in batch.reply_sent


def test_a_dropped_connection_resumes_the_same_session(
    browser, server, person, receiver
):
    with DroppingProxy(server.port) as proxy, talk_page(browser, proxy.url) as page:
        log_in(page)
        page.get_by_test_id("start").click()
        finals = page.get_by_test_id("finals").locator("li[data-seq]")
        expect(finals).not_to_have_count(0, timeout=60_000)
        talk = page.locator("#talk")
        session_id = talk.get_attribute("data-session-id")
        assert session_id

        proxy.drop()  # no close frame: the page sees 1006, the server a reset
        status = page.get_by_test_id("status")
        expect(status).to_contain_text("Reconnecting")
        problem = page.get_by_test_id("error")
        expect(problem).to_contain_text("connection to the server was lost")
        expect(status).to_contain_text("attempt 3")  # refused meanwhile: backing off
        expect(talk).to_have_attribute("data-state", "reconnecting")
        screenshot(page, "talk-reconnecting")
        proxy.restore()
        expect(status).to_contain_text("Reconnected", timeout=30_000)
        expect(problem).to_be_hidden()
        expect(talk).to_have_attribute("data-session-id", session_id)
        shown = finals.count()
        expect(finals).to_have_count(shown + 2, timeout=60_000)  # it goes on
        screenshot(page, "talk-reconnected")
        page.get_by_test_id("stop").click()
        expect(page.get_by_test_id("start")).to_be_visible(timeout=60_000)
        expect(status).to_contain_text("saved to your history")
        seqs = [int(s) for s in finals.evaluate_all("l => l.map(i => i.dataset.seq)")]
        texts = finals.locator("span").all_inner_texts()
        captured = int(talk.get_attribute("data-audio-bytes"))
        sent_again = int(talk.get_attribute("data-audio-sent-again"))

    # One session, its finals each shown once, in order, none missing; every byte
    # the microphone captured reached the server once (what the drop lost was sent
    # again after the resume).
    [session] = AudioSession.objects.filter(user=person)
    assert str(session.pk) == session_id
    assert session.status == "completed"
    assert session.parameters["resumable"] is True
    stored = list(
        Transcript.objects.filter(session=session)
        .order_by("message_seq")
        .values_list("message_seq", "text")
    )
    assert list(zip(seqs, texts, strict=True)) == stored
    assert seqs == sorted(set(seqs))
    assert session.audio_bytes == captured
    assert sent_again > 0  # what was captured while the network was down
    assert ReceiverBatch.objects.filter(session=session).exists()


def test_a_refused_resume_says_so_and_stops(browser, server, person, django_user_model):
    """While the page reconnects, another user logs in in another tab of the same
    browser: the resume (with that user's cookie) is refused with 1008."""
    django_user_model.objects.create(username="olga", password=person.password)
    with DroppingProxy(server.port) as proxy, talk_page(browser, proxy.url) as page:
        log_in(page)
        page.get_by_test_id("start").click()
        talk = page.locator("#talk")
        expect(talk).to_have_attribute("data-session-id", re.compile("."))
        proxy.drop()
        status = page.get_by_test_id("status")
        expect(status).to_contain_text("Reconnecting")

        # Cookies are the host's, whatever the port: this tab reaches the server
        # directly, and its login replaces maria's session cookie with olga's.
        tab = page.context.new_page()
        tab.goto(f"{server.http_url}/")
        tab.get_by_test_id("logout").click()
        tab.goto(f"{server.http_url}/accounts/login/")
        tab.fill("input[name=username]", "olga")
        tab.fill("input[name=password]", test_browser.PASSWORD)
        tab.get_by_test_id("login").click()
        expect(tab.get_by_test_id("username")).to_have_text("olga")
        proxy.restore()

        problem = page.get_by_test_id("error")
        expect(problem).to_contain_text(
            "This session cannot be resumed", timeout=30_000
        )
        expect(status).to_have_text("Could not reconnect.")
        expect(problem).to_contain_text("code 1008")
        expect(talk).to_have_attribute("data-state", "idle")
        expect(page.get_by_test_id("start")).to_be_visible()
        expect(page.locator(".meter")).to_have_attribute("aria-valuenow", "0")
        screenshot(page, "talk-resume-refused")


def test_barge_in_can_be_switched_off(browser, server, person):
    with talk_page(browser, server.http_url) as page:
        log_in(page)
        page.get_by_test_id("barge-in").uncheck()
        page.reload()  # the choice is kept in the browser
        expect(page.get_by_test_id("barge-in")).not_to_be_checked()
        with page.expect_websocket() as opened:
            page.get_by_test_id("start").click()
        query = opened.value.url.split("?", 1)[1].split("&")
        assert {"replyStream=true", "bargeIn=false", "resumable=true"} <= set(query)
        talk = page.locator("#talk")
        expect(talk).to_have_attribute("data-session-id", re.compile("."))
        session_id = talk.get_attribute("data-session-id")
        expect(page.get_by_test_id("barge-in")).to_be_disabled()  # while it runs
        page.get_by_test_id("stop").click()
        expect(page.get_by_test_id("start")).to_be_visible(timeout=60_000)
    session = AudioSession.objects.get(user=person)
    assert str(session.pk) == session_id
    assert "bargeIn" not in session.parameters
    assert session.parameters["replyStream"] is True
