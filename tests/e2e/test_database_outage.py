"""PostgreSQL may fail: what was said is not lost, sessions end, new ones are told to
try again later.

Each test runs daphne on a PostgreSQL cluster of its own (tests.e2e.servers),
stops it as a crash does (`pg_ctl stop -m immediate`) mid-session, starts it again,
and compares what the client saw with what is stored.
"""

import asyncio
import contextlib
import json
import subprocess
import sys
import time

import psycopg
import pytest
from websockets.asyncio.client import connect

from tests.e2e.servers import ROOT, PostgresCluster, run_daphne, server_env
from tests.transcription.voice_fakes import TcpReceiver

pytestmark = pytest.mark.skipif(
    not PostgresCluster.available(), reason="needs PostgreSQL's server binaries"
)


def manage(pg: PostgresCluster, *args: str) -> str:
    """A manage.py command against the cluster; its output."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=server_env({"DATABASE_URL": pg.url}),
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def query(pg: PostgresCluster, sql: str) -> list[tuple]:
    with psycopg.connect(pg.url, autocommit=True) as connection:
        cursor = connection.execute(sql)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="module")
def cluster():
    with PostgresCluster() as pg:
        manage(pg, "migrate", "--noinput")
        yield pg


@pytest.fixture
def pg(cluster):
    if not (cluster.data / "postmaster.pid").exists():
        cluster.start()  # a test that failed midway left it stopped
    query(cluster, "TRUNCATE transcription_audiosession CASCADE")
    return cluster


@pytest.fixture
def raw_token(cluster):
    name = f"u{time.monotonic_ns()}"
    out = manage(cluster, "create_token", name, "--create-user")
    return out.strip().splitlines()[-1]


@contextlib.asynccontextmanager
async def voice_server(pg, **env):
    receiver = await TcpReceiver().start()
    settings = {
        "DATABASE_URL": pg.url,
        "TRANSCRIPTION_ENGINE": "tests.transcription.voice_fakes.WordsEngine",
        "TTS_ENGINE": "tests.transcription.voice_fakes.BrokenSpeech",
        "SILENCE_SECONDS": "1",
        "RECEIVER_HOST": "127.0.0.1",
        "RECEIVER_PORT": str(receiver.port),
        "VOICE_WORKER_IN_PROCESS": "true",
        **env,
    }
    try:
        with run_daphne(settings) as server:
            yield server
    finally:
        await receiver.stop()


async def next_message(ws, seconds: float = 15) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), seconds))


def stored(pg) -> tuple[list[tuple], list[tuple]]:
    """(close_code, finals) of each session; (text, batch status) of each final."""
    sessions = query(
        pg,
        "SELECT s.close_code, count(t.id) FROM transcription_audiosession s "
        "LEFT JOIN transcription_transcript t ON t.session_id = s.id "
        "GROUP BY s.id, s.started_at ORDER BY s.started_at",
    )
    finals = query(
        pg,
        "SELECT t.text, b.status FROM transcription_transcript t "
        "LEFT JOIN transcription_receiverbatch b ON b.id = t.batch_id "
        "ORDER BY t.session_id, t.seq",
    )
    return sessions, finals


async def eventually_stored(pg, expected, seconds: float = 20):
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(Exception):
            if (got := stored(pg)) == expected:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"stored {got}, not {expected}")
        await asyncio.sleep(0.25)


async def test_a_short_outage_loses_nothing_and_refuses_new_sessions_politely(
    pg, raw_token
):
    async with voice_server(pg) as server:
        url = f"{server.ws_url}/?token={raw_token}"
        async with connect(url) as ws:
            await ws.send(b"before")
            assert await next_message(ws, 5) == {"transcript": "before"}
            assert (await next_message(ws))["message"] == "You said before"
            pg.stop()
            # The client keeps getting its transcripts: held in memory.
            await ws.send(b"during")
            assert await next_message(ws, 5) == {"transcript": "during"}
            # A new session is told to try again later, never an HTTP 500.
            async with connect(url, open_timeout=5) as refused:
                assert await next_message(refused, 5) == {
                    "error": "The database is unavailable: try again later."
                }
                await asyncio.wait_for(refused.wait_closed(), 5)
            assert refused.close_code == 1013
            await asyncio.sleep(2)
            pg.start()
            # Stored once the database answers, joined to a batch, answered.
            assert (await next_message(ws))["message"] == "You said during"
            await ws.send(b"after")
            assert await next_message(ws, 5) == {"transcript": "after"}
            assert (await next_message(ws))["message"] == "You said after"
            await ws.send("END_OF_STREAM")
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1000
        output = server.output()
    sessions, finals = stored(pg)
    assert sessions == [(1000, 3)]  # the refused session left no row
    assert finals == [
        ("before", "delivered"),
        ("during", "delivered"),
        ("after", "delivered"),
    ]
    assert "Traceback" not in output, output[output.find("Traceback") - 1500 :][:2500]


async def test_a_session_that_ends_during_the_outage_is_recorded_when_it_is_back(
    pg, raw_token
):
    async with voice_server(pg, SILENCE_SECONDS="30") as server:
        async with connect(f"{server.ws_url}/?token={raw_token}") as ws:
            await ws.send(b"one")
            assert await next_message(ws, 5) == {"transcript": "one"}
            pg.stop()
            await ws.send(b"two")
            assert await next_message(ws, 5) == {"transcript": "two"}
            # END_OF_STREAM closes at once (no worker can answer meanwhile).
            await ws.send("END_OF_STREAM")
            await asyncio.wait_for(ws.wait_closed(), 10)
            assert ws.close_code == 1000
        pg.start()
        await eventually_stored(pg, ([(1000, 2)], [("one", "open"), ("two", "open")]))


async def test_an_outage_beyond_the_bound_ends_the_session_and_keeps_what_it_heard(
    pg, raw_token
):
    async with voice_server(pg, DB_OUTAGE_SECONDS="2") as server:
        async with connect(f"{server.ws_url}/?token={raw_token}") as ws:
            await ws.send(b"said")
            assert await next_message(ws, 5) == {"transcript": "said"}
            assert (await next_message(ws))["message"] == "You said said"
            pg.stop()
            await ws.send(b"heard")
            assert await next_message(ws, 5) == {"transcript": "heard"}
            error = await next_message(ws, 10)
            assert error == {
                "error": "Transcription stopped: the database has been unavailable "
                "for 2 seconds. What was transcribed is kept and stored once it "
                "is back."
            }
            await asyncio.wait_for(ws.wait_closed(), 5)
            assert ws.close_code == 1011
        pg.start()
        await eventually_stored(
            pg, ([(1011, 2)], [("said", "delivered"), ("heard", "delivered")])
        )
