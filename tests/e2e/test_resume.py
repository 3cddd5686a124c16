"""Resume (resumable=true) through real daphne servers and real sockets.

The client's socket is cut without a close frame (`transport.abort()`: a TCP reset,
as a phone changing network looks to the server); the client reconnects with
`?resume=<id>&after=<seq>` and the same session goes on. The `services` tests resume
on a second daphne: the first one alive (handed over through Redis) or killed -9.
"""

import asyncio
import contextlib
import json
import signal
import sys

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from websockets.asyncio.client import connect

from accounts.services import api_token_create
from tests.e2e.servers import drain, run_daphne, run_process, scrape
from tests.helpers import eventually
from tests.transcription.voice_fakes import TcpReceiver
from transcription.models import AudioSession, ReceiverBatch, Transcript

pytestmark = pytest.mark.django_db(transaction=True)

WORDS_ENGINE = "tests.transcription.voice_fakes.WordsEngine"


class SlowReceiver(TcpReceiver):
    """Records each document, then answers after a pause: the socket is cut while
    a reply is being prepared."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    async def _handle(self, reader, writer) -> None:
        document = json.loads(await asyncio.wait_for(reader.read(), 5))
        self.documents.append(document)
        await asyncio.sleep(self.pause)
        with contextlib.suppress(ConnectionError):
            writer.write(self.reply(document))
            await writer.drain()
            writer.close()


def _token(django_user_model, name: str) -> str:
    user = django_user_model.objects.create_user(username=name)
    return api_token_create(user=user, name="e2e")[1]


@pytest.fixture
def raw_token(django_user_model):
    return _token(django_user_model, "rita")


def _env(receiver: TcpReceiver, **extra: str) -> dict[str, str]:
    return {
        "TRANSCRIPTION_ENGINE": WORDS_ENGINE,
        "TTS_ENGINE": "offline",
        "SILENCE_SECONDS": "0.3",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(receiver.port),
        "RECEIVER_TIMEOUT": "10",
        **extra,
    }


async def _recv(ws) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 20))


async def _open(server, token: str) -> tuple[object, str]:
    """A resumable session: its socket and its id."""
    ws = await connect(f"{server.ws_url}/?token={token}&resumable=true")
    first = await _recv(ws)
    assert first["type"] == "session"
    assert first["resumeWithin"] > 0
    return ws, first["id"]


def _cut(ws) -> None:
    """The socket dies without a close frame (a TCP reset)."""
    ws.transport.abort()


async def _resume(server, token: str, session_id: str, after: int):
    return await connect(
        f"{server.ws_url}/?token={token}&resume={session_id}&after={after}"
    )


async def _until_documents(receiver: TcpReceiver, count: int) -> None:
    async with asyncio.timeout(20):
        while len(receiver.documents) < count:  # noqa: ASYNC110 (a test poll)
            await asyncio.sleep(0.02)


async def _continue_and_end(ws, seq: int) -> list[dict]:
    """One more final and its reply on the resumed socket, then END_OF_STREAM."""
    await ws.send(b"hello two")
    assert await _recv(ws) == {"transcript": "hello two", "seq": seq}
    await ws.send("END_OF_STREAM")
    messages = await drain(ws)
    assert ws.close_code == 1000, messages
    return messages


async def test_resume_after_the_socket_is_cut_mid_reply(raw_token):
    receiver = await SlowReceiver(pause=1.5).start()
    try:
        with run_daphne(_env(receiver)) as server:
            ws, session_id = await _open(server, raw_token)
            await ws.send(b"hello one")
            assert await _recv(ws) == {"transcript": "hello one", "seq": 1}
            await _until_documents(receiver, 1)  # its reply is being prepared
            _cut(ws)

            resumed = await _resume(server, raw_token, session_id, after=1)
            answer = await _recv(resumed)
            assert answer["type"] == "resumed"
            assert (answer["id"], answer["after"]) == (session_id, 1)
            # What this server received (its engine stream goes on): nothing to
            # send again.
            assert answer["audioSeconds"] == round(9 / 32000, 3)
            reply = await _recv(resumed)  # was pending: reaches the new socket
            assert (reply["type"], reply["seq"]) == ("server_response", 2)
            assert reply["message"] == "You said hello one"
            assert reply["audio"]
            [last] = await _continue_and_end(resumed, seq=3)
            assert (last["seq"], last["message"]) == (4, "You said hello two")
    finally:
        await receiver.stop()

    [session] = await sync_to_async(list)(AudioSession.objects.all())
    assert (session.status, session.close_code) == ("completed", 1000)
    finals = await sync_to_async(list)(
        Transcript.objects.values_list("text", "message_seq")
    )
    assert finals == [("hello one", 1), ("hello two", 3)]

    def replies_numbered():
        numbered = ReceiverBatch.objects.values_list("reply_seq", flat=True)
        return sorted(numbered) == [2, 4]

    await eventually(replies_numbered)


async def test_resume_after_end_of_stream_while_the_last_reply_is_prepared(raw_token):
    """Cut after END_OF_STREAM, while the server waits for the last reply: the
    session waits for its client, which gets that reply and the 1000."""
    receiver = await SlowReceiver(pause=1.5).start()
    try:
        with run_daphne(_env(receiver, SILENCE_SECONDS="60")) as server:
            ws, session_id = await _open(server, raw_token)
            await ws.send(b"hello one")
            assert (await _recv(ws))["seq"] == 1
            await ws.send("END_OF_STREAM")
            await _until_documents(receiver, 1)
            _cut(ws)
            resumed = await _resume(server, raw_token, session_id, after=1)
            assert (await _recv(resumed))["type"] == "resumed"
            [reply] = await drain(resumed)
            assert (reply["seq"], reply["message"]) == (2, "You said hello one")
            assert resumed.close_code == 1000
    finally:
        await receiver.stop()
    session = await sync_to_async(AudioSession.objects.get)(pk=session_id)
    assert (session.status, session.close_code) == ("completed", 1000)


async def test_replayed_messages_after_an_older_seq(raw_token):
    """A client that missed messages gets each stored one after its seq again."""
    receiver = await TcpReceiver().start()
    try:
        with run_daphne(_env(receiver)) as server:
            ws, session_id = await _open(server, raw_token)
            await ws.send(b"hello one")
            assert (await _recv(ws))["seq"] == 1
            assert (await _recv(ws))["seq"] == 2  # the reply
            _cut(ws)
            resumed = await _resume(server, raw_token, session_id, after=0)
            assert (await _recv(resumed))["type"] == "resumed"
            assert await _recv(resumed) == {"transcript": "hello one", "seq": 1}
            reply = await _recv(resumed)
            assert (reply["seq"], reply["message"]) == (2, "You said hello one")
            await _continue_and_end(resumed, seq=3)
    finally:
        await receiver.stop()


async def test_resume_while_the_old_socket_still_looks_open(raw_token):
    """The server has not seen the old socket drop: the resume takes the session,
    the old socket is closed."""
    receiver = await TcpReceiver().start()
    try:
        with run_daphne(_env(receiver)) as server:
            old, session_id = await _open(server, raw_token)
            await old.send(b"hello one")
            assert (await _recv(old))["seq"] == 1
            assert (await _recv(old))["seq"] == 2  # the reply
            resumed = await _resume(server, raw_token, session_id, after=2)
            assert (await _recv(resumed))["type"] == "resumed"
            assert await drain(old) == []
            assert (old.close_code, old.close_reason) == (
                1000,
                "Resumed on another connection.",
            )
            await _continue_and_end(resumed, seq=3)
    finally:
        await receiver.stop()


async def test_resume_refused_to_another_user_too_late_or_ended(
    raw_token, django_user_model
):
    other = await sync_to_async(_token)(django_user_model, "mallory")
    receiver = await TcpReceiver().start()
    try:
        with run_daphne(_env(receiver, RESUME_SECONDS="2")) as server:
            ws, session_id = await _open(server, raw_token)
            await ws.send(b"hello one")
            assert (await _recv(ws))["seq"] == 1
            _cut(ws)

            # Another user: refused, and the session still waits for its owner.
            refused = await _resume(server, other, session_id, after=1)
            [error] = await drain(refused)
            assert "cannot be resumed" in error["error"]
            assert refused.close_code == 1008
            mine = await _resume(server, raw_token, session_id, after=1)
            assert (await _recv(mine))["type"] == "resumed"

            # Too late: RESUME_SECONDS passed since the socket dropped.
            _cut(mine)
            await asyncio.sleep(3)
            late = await _resume(server, raw_token, session_id, after=1)
            [error] = await drain(late)
            assert "cannot be resumed" in error["error"]
            assert late.close_code == 1008

            # Ended (END_OF_STREAM, 1000): refused too.
            ws, ended_id = await _open(server, raw_token)
            await ws.send("END_OF_STREAM")
            await drain(ws)
            assert ws.close_code == 1000
            again = await _resume(server, raw_token, ended_id, after=0)
            [error] = await drain(again)
            assert again.close_code == 1008
            figures = await asyncio.to_thread(scrape, f"{server.http_url}/metrics")
            resumes = {
                dict(labels)["outcome"]: value
                for (name, labels), value in figures.items()
                if name == "voiceproject_resumes_total"
            }
            assert resumes == {"same_server": 1.0, "refused": 3.0}
    finally:
        await receiver.stop()
    session = await sync_to_async(AudioSession.objects.get)(pk=session_id)
    assert session.ended_at is not None  # ended when not resumed in time


# --- another server (PostgreSQL and Redis) -----------------------------------------


def _two_servers_env(receiver: TcpReceiver) -> dict[str, str]:
    return _env(receiver, SILENCE_SECONDS="60", VOICE_WORKER_IN_PROCESS="false")


@contextlib.contextmanager
def _two_servers_and_a_worker(env: dict[str, str]):
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(run_daphne(env)) for _ in range(2)]
        stack.enter_context(
            run_process(
                [sys.executable, "manage.py", "run_worker", "--id", "w0"],
                env,
                name="worker",
            )
        )
        yield servers


def _needs_services() -> None:
    if not settings.REDIS_URL or settings.VOICE_WORKER_IN_PROCESS:
        pytest.skip("needs REDIS_URL (PostgreSQL and Redis: make test's second run)")


async def _resume_elsewhere(first, second, token: str, *, first_is: str) -> list[dict]:
    ws, session_id = await _open(first, token)
    await ws.send(b"hello one")
    assert await _recv(ws) == {"transcript": "hello one", "seq": 1}
    if first_is == "killed":
        first.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(first.process.wait, 10)
    elif first_is == "cut":
        _cut(ws)
    resumed = await _resume(second, token, session_id, after=0)
    answer = await _recv(resumed)
    assert answer.get("type") == "resumed", (answer, second.output()[-3000:])
    assert answer["id"] == session_id
    assert await _recv(resumed) == {"transcript": "hello one", "seq": 1}
    if first_is == "open":  # the first server closed it when it handed over
        assert await drain(ws) == []
        assert ws.close_reason == "Resumed on another connection."
    return await _continue_and_end(resumed, seq=2)


@pytest.mark.services
@pytest.mark.parametrize("first_is", ["killed", "cut", "open"])
def test_resume_on_another_server(raw_token, first_is):
    """The first server killed -9 (its session taken over) or alive (handed over
    through the channel layer: its socket cut, or still open as far as it knows):
    the second one goes on with the same record and the same open batch."""
    _needs_services()
    receiver = TcpReceiver()

    async def main():
        await receiver.start()
        try:
            with _two_servers_and_a_worker(_two_servers_env(receiver)) as servers:
                messages = await _resume_elsewhere(
                    *servers, raw_token, first_is=first_is
                )
                return messages, servers[1].process.pid
        finally:
            await receiver.stop()

    messages, second_pid = asyncio.run(main())
    [reply] = messages
    assert reply["seq"] == 3
    assert reply["message"] == "You said hello one / hello two"  # one batch
    [session] = AudioSession.objects.all()
    assert (session.status, session.server_pid) == ("completed", second_pid)
    assert list(Transcript.objects.values_list("text", "message_seq")) == [
        ("hello one", 1),
        ("hello two", 2),
    ]


async def _drained(first, token: str) -> tuple[str, list[dict]]:
    """A resumable session on `first`, which then shuts down (SIGTERM): the
    session's id and what its socket got up to the close (1001)."""
    ws, session_id = await _open(first, token)
    await ws.send(b"hello one")
    assert await _recv(ws) == {"transcript": "hello one", "seq": 1}
    first.process.send_signal(signal.SIGTERM)
    messages = await drain(ws)
    assert ws.close_code == 1001, (messages, first.output()[-3000:])
    await asyncio.to_thread(first.process.wait, 30)
    return session_id, messages


async def _resume_after_drain(server, token: str, session_id: str) -> list[dict]:
    resumed = await _resume(server, token, session_id, after=1)
    answer = await _recv(resumed)
    assert answer.get("type") == "resumed", (answer, server.output()[-3000:])
    replayed = await _recv(resumed)  # the reply the drain sent, after seq 1
    assert (replayed["type"], replayed["seq"]) == ("server_response", 2)
    assert replayed["message"] == "You said hello one"
    return await _continue_and_end(resumed, seq=3)


def _check_drained(messages: list[dict]) -> None:
    # The batch was answered as the server drained, then the session closed 1001.
    reply, error = messages
    assert (reply["seq"], reply["message"]) == (2, "You said hello one")
    assert "shutting down" in error["error"]


def _check_resumed_record(messages: list[dict], pid: int) -> None:
    [reply] = messages
    assert (reply["seq"], reply["message"]) == (4, "You said hello two")
    [session] = AudioSession.objects.all()
    assert (session.status, session.server_pid) == ("completed", pid)
    assert (session.close_code, session.released_at) == (1000, None)
    assert list(Transcript.objects.values_list("text", "message_seq")) == [
        ("hello one", 1),
        ("hello two", 3),
    ]


def test_resume_after_the_server_restarts(raw_token):
    """A deploy: the server drains (SIGTERM), closes the resumable session 1001 and
    lets go of it; the restarted server takes it over at once."""
    receiver = TcpReceiver()

    async def main():
        await receiver.start()
        try:
            env = _env(receiver)
            with run_daphne(env) as first:
                session_id, drained = await _drained(first, raw_token)
            [released] = await sync_to_async(list)(AudioSession.objects.all())
            assert released.status == "active"
            assert released.released_at is not None
            with run_daphne(env) as second:
                messages = await _resume_after_drain(second, raw_token, session_id)
                return drained, messages, second.process.pid
        finally:
            await receiver.stop()

    drained, messages, second_pid = asyncio.run(main())
    _check_drained(drained)
    _check_resumed_record(messages, second_pid)


def test_a_drained_session_not_resumed_ends_as_the_shutdown_closed_it(raw_token):
    """Released and never resumed: once its window is over, the next server's
    start-up closes it as the shutdown did (1001, completed, not failed), and a
    resume is refused."""
    receiver = TcpReceiver()

    async def main():
        await receiver.start()
        try:
            env = _env(receiver, RESUME_SECONDS="1")
            with run_daphne(env) as first:
                session_id, _ = await _drained(first, raw_token)
            await asyncio.sleep(1.5)  # past the resume window
            with run_daphne(env) as second:
                # The start-up comes with the first connection.
                late = await _resume(second, raw_token, session_id, after=1)
                refused = await drain(late)
                return session_id, refused, late.close_code
        finally:
            await receiver.stop()

    session_id, refused, code = asyncio.run(main())
    assert code == 1008, refused
    session = AudioSession.objects.get(pk=session_id)
    assert (session.status, session.close_code) == ("completed", 1001)
    assert "shutting down" in session.close_reason
    assert list(session.errors.values_list("kind", flat=True)) == ["shutdown"]


@pytest.mark.services
def test_resume_on_another_server_after_a_drain(raw_token):
    """Two servers: the first drains (SIGTERM) and lets go of the session; the
    second takes it over at once, without waiting for the first one's heartbeat."""
    _needs_services()
    receiver = TcpReceiver()

    async def main():
        await receiver.start()
        try:
            with _two_servers_and_a_worker(_two_servers_env(receiver)) as servers:
                first, second = servers
                session_id, drained = await _drained(first, raw_token)
                messages = await _resume_after_drain(second, raw_token, session_id)
                return drained, messages, second.process.pid
        finally:
            await receiver.stop()

    drained, messages, second_pid = asyncio.run(main())
    _check_drained(drained)
    _check_resumed_record(messages, second_pid)
