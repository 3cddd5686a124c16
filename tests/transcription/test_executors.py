"""Named thread pools: bounded by their settings, apart from the loop's default one."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.audio import mp3_seconds
from tests.transcription.voice_fakes import HttpReceiver
from transcription import executors
from transcription.voice_loop.receiver import ReceiverConfig, receiver_exchange
from transcription.voice_loop.tts.espeak import EspeakSpeech
from transcription.voice_loop.tts.polly import PollySpeech


@pytest.fixture
def fresh_pools(settings):
    settings.BLOCKING_POOL_THREADS = {**settings.BLOCKING_POOL_THREADS, "tests": 2}
    executors.shutdown_pools()
    yield
    executors.shutdown_pools()


@pytest.mark.usefixtures("fresh_pools")
async def test_a_pool_runs_at_most_its_size_at_once():
    release = threading.Event()
    started = [threading.Event() for _ in range(3)]
    threads: dict[int, int] = {}

    def hold(n: int) -> int:
        threads[n] = threading.get_ident()
        started[n].set()
        release.wait(10)
        return n

    calls = [
        asyncio.create_task(executors.run_blocking("tests", hold, n)) for n in range(3)
    ]
    try:
        for n in (0, 1):
            assert await asyncio.to_thread(started[n].wait, 10)
        assert not started[2].is_set()  # both threads are busy: the third call waits
        # Neither another pool nor the default executor waits for this one.
        assert await executors.run_blocking("other", threading.get_ident) not in (
            threads[0],
            threads[1],
        )
        assert await asyncio.to_thread(lambda: "free") == "free"
    finally:
        release.set()
    assert await asyncio.gather(*calls) == [0, 1, 2]
    assert len(set(threads.values())) == 2  # the third ran on a thread set free


def test_sizes_come_from_the_settings(settings, fresh_pools):
    settings.BLOCKING_POOL_THREADS = {"tts": 3, "receiver-http": 5}
    assert executors.pool_size("tts") == 3
    assert executors.pool_size("receiver-http") == 5
    assert executors.pool_size("unnamed") == executors.DEFAULT_THREADS
    assert executors.executor("tts")._max_workers == 3
    assert executors.executor("tts") is executors.executor("tts")


@pytest.fixture
async def default_executor_busy():
    """The loop's default executor with its only thread held: asyncio.to_thread
    (and anything else on it) cannot run until the test ends."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    release, holding = threading.Event(), threading.Event()

    def hold() -> None:
        holding.set()
        release.wait(30)

    blocked = loop.run_in_executor(None, hold)
    holding.wait(10)
    yield
    release.set()
    await blocked


@pytest.mark.usefixtures("default_executor_busy", "fresh_pools")
async def test_http_receiver_and_speech_do_not_need_the_default_executor():
    receiver = await HttpReceiver(lambda d: b'{"message": "hi"}').start()
    try:
        config = ReceiverConfig(url=receiver.url, timeout=5)
        document = {"session_id": "s", "batch_id": "b", "transcriptions": []}
        assert await asyncio.wait_for(receiver_exchange(config, document), 10) == "hi"
    finally:
        await receiver.stop()
    speech = EspeakSpeech().synthesize("Hello.", language="en-US")
    assert mp3_seconds(await asyncio.wait_for(speech, 10)) > 0.2


@pytest.mark.usefixtures("default_executor_busy", "fresh_pools", "moto_polly")
async def test_polly_does_not_need_the_default_executor():
    speech = PollySpeech().synthesize("Hello.", language="en-US")
    assert await asyncio.wait_for(speech, 10)
