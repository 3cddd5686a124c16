"""Scale-out for real: two daphne processes and two batch workers on PostgreSQL and
Redis, sessions on both servers, one worker killed (SIGKILL) mid-run.

Delivery is at least once by design (a batch whose worker died is delivered again,
with the same batch_id): every batch must end delivered, the receiver must have seen
each batch_id, and every reply must reach the socket whose finals it answers.
"""

import asyncio
import contextlib
import datetime as dt
import json
import signal
import sys

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from accounts.services import api_token_create
from tests.e2e.servers import run_daphne, run_process
from tests.helpers import eventually
from tests.transcription.voice_fakes import TcpReceiver
from transcription.models import AudioSession, ReceiverBatch

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

SESSIONS = 8


class SlowReceiver(TcpReceiver):
    """Answers after a pause, so that workers hold claims when one is killed."""

    async def _handle(self, reader, writer) -> None:
        await asyncio.sleep(0.5)
        with contextlib.suppress(ConnectionError):
            await super()._handle(reader, writer)


@pytest.fixture
def raw_tokens(django_user_model):
    """One token per session (MAX_SESSIONS_PER_TOKEN is 4)."""
    user = django_user_model.objects.create_user(username="erin")
    return [api_token_create(user=user, name=f"t{n}")[1] for n in range(SESSIONS)]


async def _talk(server, token: str, number: int) -> tuple[list[dict], int | None]:
    url = f"{server.ws_url}/?token={token}"
    messages = []
    async with connect(url, open_timeout=20, close_timeout=40) as ws:
        await ws.send(f"session {number} one".encode())
        await ws.send(f"session {number} two".encode())
        await ws.send("END_OF_STREAM")
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                messages.append(json.loads(message))
    return messages, ws.close_code


async def _kill_mid_run(worker) -> int:
    """SIGKILL the worker once it holds claims; end its leases as time would."""

    def held():
        return ReceiverBatch.objects.filter(status="claimed", claimed_by="w0").count()

    claims = await eventually(held, seconds=20)
    worker.send_signal(signal.SIGKILL)
    await asyncio.to_thread(worker.wait, 10)
    # Its leases would run out after RECEIVER_TIMEOUT + TTS_TIMEOUT + 30 s: moved to
    # now, so that the test does not wait for them.
    await sync_to_async(
        ReceiverBatch.objects.filter(status="claimed", claimed_by="w0").update
    )(claimed_until=timezone.now() - dt.timedelta(seconds=1))
    return int(claims)


def test_two_servers_two_workers_one_killed_every_batch_delivered(raw_tokens):
    if not settings.REDIS_URL or settings.VOICE_WORKER_IN_PROCESS:
        pytest.skip("needs REDIS_URL (PostgreSQL and Redis: make test's second run)")
    receiver = SlowReceiver()

    async def run(servers, workers) -> tuple[list, int]:
        killer = asyncio.create_task(_kill_mid_run(workers[0]))
        talks = [_talk(servers[n % 2], raw_tokens[n], n) for n in range(SESSIONS)]
        results = await asyncio.gather(*talks)
        return results, await killer

    async def main():
        await receiver.start()
        env = {
            "TRANSCRIPTION_ENGINE": "tests.transcription.voice_fakes.WordsEngine",
            "TTS_ENGINE": "offline",
            "SILENCE_SECONDS": "60",  # batches go at END_OF_STREAM
            "RECEIVER_HOST": "127.0.0.1",
            "RECEIVER_PORT": str(receiver.port),
            "RECEIVER_TIMEOUT": "5",
            "TTS_TIMEOUT": "10",
            "VOICE_WORKER_IN_PROCESS": "false",
        }
        try:
            with contextlib.ExitStack() as stack:
                servers = [stack.enter_context(run_daphne(env)) for _ in range(2)]
                workers = [
                    stack.enter_context(
                        run_process(
                            [
                                sys.executable,
                                "manage.py",
                                "run_worker",
                                "--id",
                                f"w{n}",
                                "--concurrency",
                                "2",
                            ],
                            env,
                            name=f"worker{n}",
                        )
                    )[0]
                    for n in range(2)
                ]
                results, claims = await run(servers, workers)
                pids = {s.process.pid for s in servers}
        finally:
            await receiver.stop()
        return results, claims, pids

    results, claims, pids = asyncio.run(main())
    assert claims >= 1  # the worker died holding claims

    for number, (messages, close_code) in enumerate(results):
        assert close_code == 1000, (number, messages)
        assert messages[:2] == [
            {"transcript": f"session {number} one"},
            {"transcript": f"session {number} two"},
        ]
        [reply] = messages[2:]
        assert reply["type"] == "server_response"
        assert reply["message"] == (
            f"You said session {number} one / session {number} two"
        )
        batch = ReceiverBatch.objects.get(batch_id=reply["batch_id"])
        assert batch.session.transcripts.first().text == f"session {number} one"

    batches = list(ReceiverBatch.objects.all())
    assert len(batches) == SESSIONS
    assert {b.status for b in batches} == {"delivered"}
    seen = {d["batch_id"] for d in receiver.documents}
    assert seen == {str(b.batch_id) for b in batches}  # each at least once
    assert {b.claimed_by for b in batches} <= {"w0", "w1"}
    assert any(b.attempts >= 2 for b in batches)  # taken over from the killed one
    served_by = set(AudioSession.objects.values_list("server_pid", flat=True))
    assert served_by == pids  # sessions on both servers
