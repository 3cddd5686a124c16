"""Properties of the protocol's parsing, and a bounded fuzz of the consumer.

The fuzz throws random query strings, headers, and text and binary frames of odd
sizes (repeated END_OF_STREAM included) at the real ASGI stack and checks the
contract of docs/protocol.md §6: every session ends with a documented close, any
close other than 1000 comes right after exactly one {"error"}, the application
raises nothing, and nothing hangs.
"""

import asyncio
import contextlib
import json
from urllib.parse import quote, urlencode

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transcription.close_codes import DOCUMENTED, OTHER, close_code_group
from transcription.engines import Capabilities
from transcription.engines.echo import EchoEngine
from transcription.streaming.protocol import (
    CLOSE_MEANINGS,
    KNOWN_PARAMETERS,
    MAX_PARAMETER_CHARS,
    ProtocolError,
    numbered,
    parse_params,
    resumable,
    resume_request,
)

CAPS: Capabilities = EchoEngine.capabilities
DOCUMENTED_CLOSES = {1000, 1008, 1009, 1011, 1013}

values = st.one_of(
    st.sampled_from(["en-US", "pcm", "16000", "8000", "true", "false", "", "48000"]),
    st.text(max_size=12),
    # Past MAX_PARAMETER_CHARS, and past int()'s 4,300 digits.
    st.text(alphabet="0123456789", min_size=250, max_size=6000),
)
queries = st.dictionaries(
    st.one_of(st.sampled_from(sorted(KNOWN_PARAMETERS)), st.text(max_size=6)),
    values,
    max_size=6,
)


@given(query=queries)
@settings(max_examples=300, deadline=None)
def test_parse_params_accepts_or_explains(query):
    raw = urlencode(query).encode()
    try:
        params = parse_params(raw, CAPS)
    except ProtocolError as exc:
        message = str(exc)
        # The message names a parameter and what is allowed.
        assert any(name in message for name in KNOWN_PARAMETERS) or "UTF-8" in message
        return
    assert params.language in CAPS.languages
    assert params.encoding in CAPS.encodings
    assert CAPS.min_sample_rate <= params.sample_rate <= CAPS.max_sample_rate
    assert isinstance(params.send_partials, bool)


@pytest.mark.parametrize("name", sorted(KNOWN_PARAMETERS - {"token"}))
def test_every_parameter_is_capped_before_it_is_parsed(name):
    with pytest.raises(ProtocolError, match=f"Parameter {name} is too long"):
        parse_params(f"{name}={'1' * (MAX_PARAMETER_CHARS + 1)}".encode(), CAPS)
    with contextlib.suppress(ProtocolError):  # at the cap: parsed as usual
        parse_params(f"{name}={'1' * MAX_PARAMETER_CHARS}".encode(), CAPS)


def test_close_codes_outside_the_documented_set_are_one_group():
    assert set(CLOSE_MEANINGS) == DOCUMENTED  # one set: the Talk page, the labels
    assert [close_code_group(c) for c in (1000, 1006, 1013, None)] == [
        "1000",
        "1006",
        "1013",
        "",
    ]
    assert {close_code_group(c) for c in (1002, 1005, 3000, 4999, 65535)} == {OTHER}


@given(raw=st.binary(max_size=200))
@settings(max_examples=300, deadline=None)
def test_parse_params_never_fails_otherwise_on_any_bytes(raw):
    with contextlib.suppress(ProtocolError):
        parse_params(raw, CAPS)


frames = st.lists(
    st.one_of(
        st.binary(max_size=3000).map(lambda b: ("bytes", b)),
        st.sampled_from(["END_OF_STREAM"]).map(lambda t: ("text", t)),
        st.text(max_size=40).map(lambda t: ("text", t)),
    ),
    max_size=8,
)
headers = st.lists(
    st.tuples(
        st.sampled_from([b"origin", b"authorization", b"x-forwarded-for", b"cookie"]),
        st.binary(max_size=40),
    ),
    max_size=3,
)


async def _session(query: str, header_list, frame_list) -> None:
    from voiceproject.asgi import application

    ws = WebsocketCommunicator(application, f"/?{query}", headers=header_list)
    connected, _ = await ws.connect(timeout=10)
    assert connected
    for kind, data in frame_list:  # send_input: empty frames are frames too
        await ws.send_input({"type": "websocket.receive", kind: data})
    await ws.send_to(text_data="END_OF_STREAM")
    messages = []
    while True:
        output = await ws.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            break
        messages.append(json.loads(output["text"]))
    code = output.get("code", 1000)
    assert code in DOCUMENTED_CLOSES
    errors = [m for m in messages if "error" in m]
    if code == 1000:
        assert errors == []
    else:
        assert messages[-1:] == errors == errors[:1]  # exactly one, right before
    await ws.send_input({"type": "websocket.disconnect", "code": code})
    await ws.wait(timeout=10)  # the application ends, and raised nothing


@pytest.mark.django_db(transaction=True)
@given(
    query=queries,
    with_token=st.booleans(),
    header_list=headers,
    frame_list=frames,
)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_consumer_fuzz_ends_with_a_documented_close(
    api_token, echo_engine, settings, query, with_token, header_list, frame_list
):
    settings.MAX_FRAME_BYTES = 2048
    settings.TRANSCRIPTION_IDLE_TIMEOUT = 1.0
    settings.MAX_SESSIONS_PER_TOKEN = 1000
    settings.MAX_SESSIONS_PER_USER = 1000
    if with_token:
        query = {**query, "token": api_token[1]}
    query_string = "&".join(f"{quote(k)}={quote(v)}" for k, v in query.items())
    async_to_sync(asyncio.wait_for)(_session(query_string, header_list, frame_list), 30)


def test_resume_parameters():
    session_id = "0b7e3f52-8d4e-4a55-9d8c-2f4d1e0a9b11"
    request = resume_request(f"resume={session_id}&after=7".encode())
    assert request is not None
    assert (str(request.session_id), request.after) == (session_id, 7)
    assert resume_request(f"resume={session_id}".encode()) == (request[0], 0)
    assert resume_request(b"language=en-US") is None
    for bad in ("nope", f"{session_id}&after=-1", f"{session_id}&after=1e3"):
        with pytest.raises(ProtocolError):
            resume_request(f"resume={bad}".encode())
    assert resumable(b"resumable=true")
    assert not resumable(b"")
    with pytest.raises(ProtocolError, match="resumable"):
        resumable(b"resumable=yes")
    assert resumable(b"resumable=true&encoding=mulaw")
    with pytest.raises(ProtocolError, match="webm is a container"):
        resumable(b"resumable=true&encoding=webm")
    assert not resumable(b"encoding=webm")
    final = numbered('{"transcript": "hi"}', 3)
    assert json.loads(final) == {"transcript": "hi", "seq": 3}


def test_g711_is_8_khz_unless_the_client_says_and_containers_keep_the_default():
    caps = Capabilities(
        languages=("en-US",),
        encodings=("pcm", "mulaw", "alaw", "webm"),
        min_sample_rate=8000,
        max_sample_rate=48000,
    )

    def rate(query: bytes) -> int:
        return parse_params(query, caps).sample_rate

    assert rate(b"") == 16000  # seed 004's default, unchanged
    assert rate(b"encoding=mulaw") == rate(b"encoding=alaw") == 8000
    assert rate(b"encoding=mulaw&sampleRate=16000") == 16000
    assert rate(b"encoding=webm") == 16000
    with pytest.raises(ProtocolError, match="Unsupported encoding 'mp3'"):
        parse_params(b"encoding=mp3", caps)
