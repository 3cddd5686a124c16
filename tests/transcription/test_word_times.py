"""Word times (wordTimes=true, timestamp_granularities[]=word): how each engine finds
them, measured against the fixtures' true word times (Festival's)."""

import json
from types import SimpleNamespace

import pytest
from amazon_transcribe.model import (
    Alternative,
    Item,
    Result,
    Transcript,
)
from amazon_transcribe.model import TranscriptEvent as AwsTranscriptEvent

from tests.audio import fixture_pcm
from tests.transcription.word_times import boundary_errors, matched, true_words
from transcription.engines import StreamParams, TranscriptEvent, Word
from transcription.engines import pocketsphinx_worker as worker
from transcription.engines.aws_transcribe import _transcript_events
from transcription.engines.early_finals import EarlyFinals
from transcription.engines.endpointing import shifted, utterance_event
from transcription.engines.whisper_words import _bounded, bare
from transcription.streaming.protocol import ProtocolError, event_message, parse_params

CAPS = SimpleNamespace(
    languages=("en-US",),
    encodings=("pcm",),
    min_sample_rate=8000,
    max_sample_rate=48000,
    options=(),
    identifies_language=False,
    endpointing=True,
)

# --- the fixtures' truth --------------------------------------------------------


def test_the_true_word_times_are_festivals_words_in_order():
    assert [w for w, _, _ in true_words("hello_world")] == ["hello", "world"]
    words = true_words("two_utterances")
    assert " ".join(w for w, _, _ in words) == (
        "the weather is nice today please turn on the lights"
    )
    starts = [start for _, start, _ in words]
    assert starts == sorted(starts)
    assert all(start < end for _, start, end in words)
    # The second sentence after the first one's wave and the 1.5 s of silence.
    assert words[5][1] > 1.97 + 1.5


def test_words_are_matched_to_the_truth_in_order_leaving_misheard_ones_out():
    heard = [("Waste", 3.8, 4.0), ("turn", 4.05, 4.3), ("lights.", 4.5, 5.1)]
    pairs = matched(heard, "two_utterances")
    assert [(h[0], t[0]) for h, t in pairs] == [("turn", "turn"), ("lights.", "lights")]
    errors = boundary_errors(heard, "two_utterances")
    assert len(errors) == 4
    assert max(errors) == pytest.approx(abs(5.1 - 5.138), abs=0.001)


# --- pocketsphinx: the decoder's segmentation -------------------------------------


def _segment(word: str, start: int, end: int) -> SimpleNamespace:
    return SimpleNamespace(word=word, start_frame=start, end_frame=end)


def test_pocketsphinx_words_leave_out_silences_fillers_and_sentence_marks():
    decoder = SimpleNamespace(
        config={"frate": 100},
        seg=lambda: [
            _segment("<s>", 0, 20),
            _segment("read(2)", 21, 50),
            _segment("<sil>", 51, 60),
            _segment("[NOISE]", 61, 70),
            _segment("++UM++", 71, 80),
            _segment("it", 81, 99),
            _segment("</s>", 100, 130),
        ],
    )
    # 0.5 s of the utterance never reached the decoder: its frames start later.
    assert worker.decoded_words(decoder, 0.5) == (
        ("read", 0.71, 1.01),
        ("it", 1.31, 1.5),
    )


def decode_here(name: str, word_times: bool) -> list:
    audio = fixture_pcm(f"{name}.wav")
    worker.session_open("words", 16000, "en-US", None, word_times)
    try:
        events = []
        for start in range(0, len(audio), 8000):
            events += worker.feed("words", audio[start : start + 8000], False, False)
        return events + worker.feed("words", b"", True, False)
    finally:
        worker.session_close("words")


@pytest.mark.parametrize("name", ["hello_world", "two_utterances"])
def test_pocketsphinx_word_times_are_close_to_the_truth(name):
    finals = [event for event in decode_here(name, True) if not event[1]]
    words = [word for final in finals for word in final[5]]
    if name == "hello_world":
        assert [w for w, _, _ in words] == ["hello", "world"]
    # Each final's words are its text's, in order, within the final.
    for text, _, start, end, _, timed in finals:
        assert [w for w, _, _ in timed] == text.split()
        assert all(start <= s < e <= end for _, s, e in timed)
    starts = [s for _, s, _ in words]
    assert starts == sorted(starts)
    assert len(matched(words, name)) >= len(true_words(name)) - 2
    errors = boundary_errors(words, name)
    assert max(errors) < 0.15  # measured: 58 ms at most (docs/engines.md)
    assert sum(errors) / len(errors) < 0.06


def test_pocketsphinx_finals_carry_no_words_unless_asked():
    finals = [event for event in decode_here("hello_world", False) if not event[1]]
    assert finals
    assert all(len(event) == 5 for event in finals)


# --- the worker's events and Whisper's words --------------------------------------


def test_an_utterances_words_move_to_the_streams_clock_within_it():
    event = utterance_event(
        "a b c", False, 2.0, 3.0, 4, (("a", 0.0, 0.4), ("b", 0.4, 0.9), ("c", 0.9, 1.6))
    )
    assert event == (
        "a b c",
        False,
        2.0,
        3.0,
        4,
        (("a", 2.0, 2.4), ("b", 2.4, 2.9), ("c", 2.9, 3.0)),
    )
    assert shifted((("late", 1.5, 2.0),), 2.0, 3.0) == (("late", 3.0, 3.0),)
    assert utterance_event("a", True, 2.0, 3.0, 4) == ("a", True, 2.0, 3.0, 4)


def test_whisper_words_lose_their_spaces_and_punctuation_as_openais_do():
    assert bare(" Hello,") == "Hello"
    assert bare(" «¿Qué?»") == "Qué"
    assert bare(" don't") == "don't"
    assert bare(" ...") == ""


def test_whisper_words_are_kept_shorter_than_twice_the_median():
    timed = [
        (" Well", 0.0, 1.5),  # the first word swallowed the lead-in
        (",", 1.5, 1.5),
        (" I", 1.5, 1.7),
        (" see", 1.7, 2.0),
        (".", 2.0, 4.0),  # punctuation: no word
        (" Then", 4.0, 4.3),
        (" yes", 4.3, 6.0),  # the last word swallowed the silence after it
    ]
    # Median of 1.5, 0.2, 0.3, 0.3, 1.7 is 0.3: no word longer than 0.6 s.
    assert _bounded(timed) == (
        ("Well", 0.9, 1.5),
        ("I", 1.5, 1.7),
        ("see", 1.7, 2.0),
        ("Then", 4.0, 4.3),
        ("yes", 4.3, 4.9),
    )


# --- AWS: its items --------------------------------------------------------------


def _aws_event(partial: bool = False) -> AwsTranscriptEvent:
    items = [
        Item(0.5, 0.9, "pronunciation", "Hello"),
        Item(None, None, "punctuation", ","),
        Item(1.0, 1.4, "pronunciation", "world"),
        Item(None, None, "punctuation", "."),
    ]
    result = Result(
        result_id="r1",
        start_time=0.5,
        end_time=1.4,
        is_partial=partial,
        alternatives=[Alternative("Hello, world.", items, None)],
    )
    return AwsTranscriptEvent(transcript=Transcript(results=[result]))


def test_aws_words_are_its_pronunciation_items():
    (event,) = _transcript_events(_aws_event(), word_times=True)
    assert event.words == (Word("Hello", 0.5, 0.9), Word("world", 1.0, 1.4))
    (event,) = _transcript_events(_aws_event())
    assert event.words == ()  # not asked: none


def test_a_finalized_aws_result_keeps_the_words_it_had_not_made_final():
    early = EarlyFinals()
    (partial,) = _transcript_events(_aws_event(partial=True), word_times=True)
    partial = TranscriptEvent(
        text="Hello,", is_partial=True, result_id="r1", words=partial.words[:1]
    )
    early.told(partial)
    made_final = early.finalize()
    assert made_final is not None
    assert made_final.words == (Word("Hello", 0.5, 0.9),)
    (final,) = _transcript_events(_aws_event(), word_times=True)
    rest = early.told(final)
    assert rest is not None
    assert (rest.text, rest.words) == ("world.", (Word("world", 1.0, 1.4),))


# --- the protocol: wordTimes ------------------------------------------------------


def test_word_times_are_asked_with_detail():
    params = parse_params(b"detail=true&wordTimes=true", CAPS)
    assert params.word_times
    assert params.detail
    assert parse_params(b"detail=true", CAPS).word_times is False
    with pytest.raises(ProtocolError, match="wordTimes=true needs detail=true"):
        parse_params(b"wordTimes=true", CAPS)
    with pytest.raises(ProtocolError, match="Invalid wordTimes 'yes'"):
        parse_params(b"detail=true&wordTimes=yes", CAPS)


def test_a_final_says_its_words_only_when_asked():
    final = TranscriptEvent(
        text="hello world",
        is_partial=False,
        start=0.2,
        end=1.0,
        result_id="x-1",
        words=(Word("hello", 0.24, 0.55), Word("world", 0.55, 0.93)),
    )
    said = json.loads(event_message(final, detail=True, word_times=True))
    assert said["words"] == [
        {"word": "hello", "start": 0.24, "end": 0.55},
        {"word": "world", "start": 0.55, "end": 0.93},
    ]
    assert "words" not in json.loads(event_message(final, detail=True))
    assert json.loads(event_message(final, detail=False)) == {
        "transcript": "hello world"
    }
    partial = TranscriptEvent(text="hello", is_partial=True)
    assert "words" not in json.loads(
        event_message(partial, detail=True, word_times=True)
    )
    # An engine without word times (echo): the key is there, empty.
    bare_final = TranscriptEvent(text="received 3 bytes", is_partial=False)
    said = json.loads(event_message(bare_final, detail=True, word_times=True))
    assert said["words"] == []


def test_stream_params_ask_for_no_word_times_by_default():
    assert StreamParams().word_times is False
