"""End of turn: control messages and endpointingMs/vadEvents parsed (pure), the
endpointer's pause and Finalize in the worker, and AWS's early finals."""

import dataclasses

import pytest

from tests.audio import chunks, read_pcm
from transcription.engines import Capabilities, StreamParams, TranscriptEvent
from transcription.engines import pocketsphinx_worker as worker
from transcription.engines.early_finals import EarlyFinals
from transcription.engines.echo import EchoEngine
from transcription.engines.endpointing import window_and_hold
from transcription.streaming import protocol
from transcription.streaming.protocol import ProtocolError, control_type, parse_params

OFFLINE = dataclasses.replace(EchoEngine.capabilities, endpointing=True)
ECHO: Capabilities = EchoEngine.capabilities


# --- control messages ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ('{"type": "KeepAlive"}', "KeepAlive"),
        ('{"type":"Finalize"}', "Finalize"),
        ('{"type": "CloseStream", "extra": 1}', "CloseStream"),
    ],
)
def test_control_messages_are_recognised(text, kind):
    assert control_type(text) == kind


@pytest.mark.parametrize(
    "text",
    [
        "KeepAlive",
        '{"type": "keepalive"}',  # the names are case-sensitive
        '{"type": "Flush"}',
        '{"type": ["KeepAlive"]}',
        '["KeepAlive"]',
        '{"type": "KeepAlive"',
        "{}",
        "END_OF_STREAM ",
    ],
)
def test_other_text_is_no_control_message(text):
    assert control_type(text) is None


def test_unexpected_text_names_the_control_messages():
    message = protocol.UNEXPECTED_TEXT.message
    assert message.startswith("Unexpected text frame: send audio as binary frames")
    for kind in protocol.CONTROL_TYPES:
        assert kind in message


# --- endpointingMs and vadEvents ---------------------------------------------------


def test_without_the_parameters_nothing_changes():
    params = parse_params(b"", OFFLINE)
    assert params.endpointing_ms is None
    assert params.vad_events is False


def test_endpointing_ms_within_the_bounds(settings):
    settings.ENDPOINTING_MS_MIN, settings.ENDPOINTING_MS_MAX = 200, 5000
    assert parse_params(b"endpointingMs=200", OFFLINE).endpointing_ms == 200
    assert parse_params(b"endpointingMs=5000", OFFLINE).endpointing_ms == 5000
    assert parse_params(b"vadEvents=true", OFFLINE).vad_events is True


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (
            b"endpointingMs=150",
            "Unsupported endpointingMs 150: use an integer from 200 to 5000 "
            "(milliseconds).",
        ),
        (
            b"endpointingMs=5001",
            "Unsupported endpointingMs 5001: use an integer from 200 to 5000 "
            "(milliseconds).",
        ),
        (
            b"endpointingMs=0.5",
            "Invalid endpointingMs '0.5': use an integer from 200 to 5000 "
            "(milliseconds).",
        ),
        (b"vadEvents=yes", "Invalid vadEvents 'yes': allowed values are"),
    ],
)
def test_bad_values_are_explained(settings, query, error):
    settings.ENDPOINTING_MS_MIN, settings.ENDPOINTING_MS_MAX = 200, 5000
    with pytest.raises(ProtocolError) as refused:
        parse_params(query, OFFLINE)
    assert str(refused.value).startswith(error)


def test_an_engine_without_endpointing_refuses_endpointing_ms():
    with pytest.raises(ProtocolError) as refused:
        parse_params(b"endpointingMs=500", ECHO)
    assert str(refused.value).startswith("Unsupported endpointingMs: this server's")
    assert parse_params(b"vadEvents=true", ECHO).vad_events is True


# --- the endpointer's pause and Finalize, in this process --------------------------


def test_the_pause_is_the_window_then_frames_held():
    assert window_and_hold(None, 30) == (0.3, 0)
    assert window_and_hold(300, 30) == (0.3, 0)
    assert window_and_hold(200, 30) == (0.2, 0)
    assert window_and_hold(1000, 30) == (0.3, 23)  # 700 ms more
    assert window_and_hold(100, 30) == (0.2, 0)  # the endpointer's shortest


def decode(audio: bytes, endpointing_ms: int | None) -> list[tuple[float, tuple]]:
    """(seconds of audio fed when it came, event) for a whole fixture."""
    worker.session_open("eot", 16000, "en-US", endpointing_ms)
    try:
        timed = []
        for i, piece in enumerate(chunks(audio, 960)):
            fed = (i + 1) * 960 / 32000
            timed += [(fed, e) for e in worker.feed("eot", piece, False, False)]
        return timed + [(len(audio) / 32000, e) for e in worker.feed("eot", b"", True)]
    finally:
        worker.session_close("eot")


def finals_at(timed) -> list[tuple[float, str, float]]:
    """(when it came, text, end of its speech) of each final."""
    return [(fed, e[0], e[3]) for fed, e in timed if not e[1]]


@pytest.fixture(scope="module")
def two_utterances() -> bytes:
    worker.init_worker()
    audio, rate = read_pcm("two_utterances.wav")
    assert rate == 16000
    return audio


def test_a_longer_pause_holds_the_final_back(two_utterances):
    default = finals_at(decode(two_utterances, None))
    assert default == finals_at(decode(two_utterances, 300))
    longer = finals_at(decode(two_utterances, 1000))
    assert [text for _, text, _ in longer] == [text for _, text, _ in default]
    for (fed, _, end), (fed_default, _, _) in zip(longer, default, strict=True):
        # The final comes after the whole pause has been heard, later than by
        # default, with the same speech end.
        assert fed >= end + 0.9  # the endpointer decides within a frame or two
        assert fed > fed_default
    assert [end for *_, end in longer] == [end for *_, end in default]


def test_a_pause_longer_than_the_gap_joins_the_utterances(two_utterances):
    # The fixture pauses about 2 s between its two sentences.
    joined = finals_at(decode(two_utterances, 3000))
    assert len(joined) == 1
    assert "weather" in joined[0][1]
    assert "lights" in joined[0][1]
    assert len(finals_at(decode(two_utterances, 1000))) == 2


def test_onsets_mark_each_utterance(two_utterances):
    onsets = [e for _, e in decode(two_utterances, None) if e[1] and e[0] == ""]
    assert [round(start, 1) for _, _, start, _, _ in onsets] == [0.2, 3.8]
    joined = [e for _, e in decode(two_utterances, 3000) if e[1] and e[0] == ""]
    assert len(joined) == 1  # speech within the pause is the same utterance


def test_finalize_ends_the_utterance_at_once_and_goes_on(two_utterances):
    cut = 32000  # one second in: "weather is nice" said, "today" not yet
    worker.session_open("fin", 16000, "en-US", None)
    try:
        now = worker.feed("fin", two_utterances[:cut], False, False, True)
        rest = worker.feed("fin", two_utterances[cut:], True, False)
    finally:
        worker.session_close("fin")
    first = [e[0] for e in now if not e[1]]
    later = [e[0] for e in rest if not e[1]]
    assert len(first) == 1
    assert "weather" in first[0]
    assert "today" not in first[0]
    assert "lights" in later[-1]
    assert len(later) == 2  # the rest of the first sentence, then the second


def test_finalize_in_a_pause_ends_the_held_utterance(two_utterances):
    cut = int(2.5 * 32000)  # within the pause, before 3000 ms of it passed
    worker.session_open("held", 16000, "en-US", 3000)
    try:
        now = worker.feed("held", two_utterances[:cut], False, False, True)
        rest = worker.feed("held", two_utterances[cut:], True, False)
    finally:
        worker.session_close("held")
    assert [e[0] for e in now if not e[1]] == ["weather is nice today"]
    assert [e[0] for e in rest if not e[1]] == ["waste turn on the lights"]


def test_finalize_without_speech_gives_nothing(two_utterances):
    worker.session_open("quiet", 16000, "en-US", None)
    try:
        assert worker.feed("quiet", bytes(3200), False, False, True) == []
    finally:
        worker.session_close("quiet")


# --- AWS: the partial in flight made final -----------------------------------------


def partial(text: str, result_id: str = "r1") -> TranscriptEvent:
    return TranscriptEvent(text=text, is_partial=True, result_id=result_id)


def final(text: str, result_id: str = "r1") -> TranscriptEvent:
    return TranscriptEvent(text=text, is_partial=False, result_id=result_id)


def test_finalize_makes_the_partial_in_flight_final():
    early = EarlyFinals()
    assert early.finalize() is None  # nothing heard yet
    assert early.told(partial("the weather")) == partial("the weather")
    assert early.finalize() == final("the weather")
    assert early.finalize() is None  # once


def test_the_rest_of_a_result_made_final_comes_as_its_own():
    early = EarlyFinals()
    early.told(partial("the weather"))
    early.finalize()
    assert early.told(partial("the weather")) is None  # nothing new
    assert early.told(partial("the weather is")) == partial("is", "r1+2")
    assert early.told(final("The weather is nice.")) == final("is nice.", "r1+2")
    # The next result is told whole.
    assert early.told(partial("turn on", "r2")) == partial("turn on", "r2")


def test_a_result_finished_as_made_final_adds_nothing():
    early = EarlyFinals()
    early.told(partial("hello world"))
    early.finalize()
    assert early.told(final("Hello world.")) is None
    assert early.finalize() is None


def test_a_second_finalize_in_the_same_result():
    early = EarlyFinals()
    early.told(partial("one"))
    early.finalize()
    early.told(partial("one two"))
    assert early.finalize() == final("two", "r1+1")
    assert early.told(final("one two three")) == final("three", "r1+2")


# --- stored with the session: a take-over elsewhere keeps them ---------------------


@pytest.mark.django_db
def test_a_take_over_opens_the_engine_with_the_same_settings():
    from transcription.services import session_start
    from transcription.streaming.resume import _params

    asked = StreamParams(endpointing_ms=800, vad_events=True)
    row = session_start(
        user=None, token=None, auth_method="", engine="whisper", params=asked
    )
    assert row.parameters == {"detail": False, "endpointingMs": 800, "vadEvents": True}
    restored = _params(row)
    assert (restored.endpointing_ms, restored.vad_events) == (800, True)
    assert restored.options == {}
    plain = session_start(
        user=None, token=None, auth_method="", engine="whisper", params=StreamParams()
    )
    assert plain.parameters == {"detail": False}  # a seed client's row as before


@pytest.mark.django_db
def test_a_take_over_keeps_the_voice_loop_extensions():
    """replyStream, bargeIn, silenceMs, wordTimes: the session's own, not engine
    options."""
    from transcription.services import session_start
    from transcription.streaming.resume import _params

    asked = StreamParams(
        reply_stream=True, barge_in=True, silence_ms=1500, detail=True, word_times=True
    )
    row = session_start(
        user=None, token=None, auth_method="", engine="whisper", params=asked
    )
    restored = _params(row)
    assert (restored.reply_stream, restored.barge_in, restored.silence_ms) == (
        True,
        True,
        1500,
    )
    assert (restored.detail, restored.word_times) == (True, True)
    assert restored.options == {}


async def test_finalize_repeated_at_one_place_is_one_mark():
    """A client that sends Finalize over and over, with no audio between, gets one
    decoding call's worth: the marks at one place are one."""
    from transcription.engines.stream import AudioBacklog

    backlog = AudioBacklog(1 << 20)
    await backlog.put(b"\x01\x00" * 100)
    for _ in range(1000):
        backlog.mark()
    await backlog.put(b"\x02\x00" * 50)
    backlog.mark()
    assert backlog.take(1 << 20) == b"\x01\x00" * 100  # up to the first mark
    assert backlog.passed_mark()
    assert backlog.take(1 << 20) == b"\x02\x00" * 50  # the second: no mark between
    assert backlog.passed_mark()
    assert not backlog.passed_mark()
