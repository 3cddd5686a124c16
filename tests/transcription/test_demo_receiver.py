"""The demo receiver: its answers, and its protocol through the real client.

The receiver protocol: docs/protocol.md §10.
"""

import asyncio
import sys

import pytest

from tests.e2e.servers import free_port, run_process
from transcription.voice_loop.demo_receiver import DemoReceiver, demo_reply
from transcription.voice_loop.receiver import (
    ReceiverConfig,
    ReceiverError,
    receiver_exchange,
)


@pytest.mark.parametrize(
    ("heard", "words"),
    [
        (
            ["hello world"],
            "Hello! I am the demo receiver. I heard you say: hello world.",
        ),
        (["what time is it"], "UTC here"),
        (["the weather is nice today"], "weather"),
        (["please turn on the lights"], "switch the lights on"),
        (["lights off please"], "switch the lights off"),
        (["how are you"], "Good question"),
        (["thank you"], "welcome"),
        (["ok bye"], "Goodbye"),
        (["green", "apples"], "You said: green apples. That was 2 words."),
        (["one"], "That was 1 word."),
    ],
)
def test_demo_reply(heard, words):
    assert words in demo_reply(heard)


def test_nothing_heard_nothing_said():
    assert demo_reply(["", "  "]) == ""


async def test_demo_receiver_over_tcp_and_deduplicates():
    receiver = DemoReceiver()
    server = await receiver.serve("127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = ReceiverConfig(host="127.0.0.1", port=port, timeout=5)
    document = {
        "session_id": "s",
        "batch_id": "b1",
        "language": "en-US",
        "transcriptions": [{"text": "hello there", "timestamp": "t"}],
    }
    try:
        first = await receiver_exchange(config, document)
        again = await receiver_exchange(
            config, {**document, "transcriptions": [{"text": "bye", "timestamp": "t"}]}
        )
    finally:
        server.close()
        await server.wait_closed()
    assert first.startswith("Hello!")
    assert again == first  # same batch_id: the same answer, not a second one


async def test_run_receiver_command_serves_the_protocol():
    port = free_port()
    args = [sys.executable, "manage.py", "run_receiver", "--port", str(port)]
    with run_process(args, name="receiver") as (process, log):
        config = ReceiverConfig(host="127.0.0.1", port=port, timeout=5)
        document = {
            "session_id": "s",
            "batch_id": "b2",
            "language": "en-US",
            "transcriptions": [{"text": "what time is it", "timestamp": "t"}],
        }
        for _ in range(200):  # until it listens (bounded: about 20 s)
            try:
                reply = await receiver_exchange(config, document)
                break
            except ReceiverError:
                assert process.poll() is None, log.read_text()
                await asyncio.sleep(0.1)
        assert "UTC here" in reply
        assert f"listening on 127.0.0.1:{port}" in log.read_text()
