"""Whisper decoding inside a worker process: faster-whisper (CTranslate2) per utterance.

Runs in the processes of the Whisper engine's pool, like `offline_worker`: no Django,
plain tuples out. Each process loads one model at start-up; a session's audio is cut
into utterances by the shared VAD endpointer (`endpointing`), and each utterance is
decoded whole when it ends (its final). While it is spoken, the utterance so far is
decoded again about once per second of new speech (a partial), when the caller asks
for partials (it stops asking when the session falls behind real time). Neither is
decoded before Silero's VAD has heard speech in the utterance (`speech_gate`): noise
that the endpointer lets through costs no decoding.

Whisper's encoder is trained on 30 s windows, but CTranslate2 accepts fewer mel frames:
a window of max(10 s, utterance) costs a third of a 30 s one at nearly the same
accuracy; shorter windows make Whisper repeat itself, hence the guards below (a
token budget proportional to the audio, and a second pass that forbids repeated
trigrams when the text compresses too well).
"""

from __future__ import annotations

import os
import resource
import signal
from typing import Any, NamedTuple

import numpy as np
from pocketsphinx import Vad

from transcription.engines import language_id
from transcription.engines.endpointing import (
    BYTES_PER_SECOND,
    SAMPLE_RATE,
    EndpointedSession,
    Event,
    Words,
    exit_with_parent,
    utterance_event,
)
from transcription.engines.language_id import LanguageIdentified
from transcription.engines.speech_gate import (
    GateConfig,
    SpeechGate,
    WhisperThresholds,
    compression_ratio,
    has_words,
    load_model,
    whisper_heard_speech,
)
from transcription.engines.whisper_model import verify, whisper_language
from transcription.engines.whisper_words import word_times

MIN_WINDOW_SECONDS = 10.0
MAX_WINDOW_SECONDS = 30.0  # Whisper's encoder takes no more
# An utterance this long is cut at its next pause, or at the hard limit regardless.
CUT_AT_PAUSE_BYTES = 25 * BYTES_PER_SECOND
CUT_ANYWAY_BYTES = 29 * BYTES_PER_SECOND
# The first partial soon after the onset (the endpointer confirms speech ~0.3 s in).
FIRST_PARTIAL_BYTES = int(BYTES_PER_SECOND * 0.3) & ~1
PARTIAL_EVERY_BYTES = BYTES_PER_SECOND
# Repetition guard: text tokens allowed per second of audio (fast speech is ~5).
# The loop detector and the no-speech rule are `speech_gate.WhisperThresholds`.
TOKENS_PER_SECOND = 7
EXTRA_TOKENS = 8

_model: Any = None  # faster_whisper.WhisperModel, imported in the worker only
# The bundled multilingual base for languages other than English (config
# "multilingual"), loaded on the first such session, then kept.
_config: dict[str, Any] = {}
# What says an utterance is speech (settings, through the config; these defaults
# when a config names none).
_gate = GateConfig()
_thresholds = WhisperThresholds()
_multilingual_model: Any = None
_prompts: dict[tuple[str, bool], list[int]] = {}
_tokenizers: dict[tuple[str, bool], Any] = {}
_sessions: dict[str, Session] = {}


def init_worker(config: dict[str, Any]) -> None:
    """Process initializer: check the weights, load the model once, warm it up.

    `config`: location (directory or name), sha256 ("" when not pinned), device,
    compute_type, cpu_threads; multilingual: None, or the joined base's location,
    sha256 and distribution (the packages to name if it is altered); gate and
    thresholds: `speech_gate.GateConfig` and `WhisperThresholds` fields (optional).
    """
    global _model, _config, _gate, _thresholds
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent()
    _config = config
    _gate = GateConfig(**config.get("gate", {}))
    _thresholds = WhisperThresholds(**config.get("thresholds", {}))
    if _gate.enabled:
        load_model()
    if config["sha256"]:
        verify(config["location"], config["sha256"])
    _model = _load(config["location"])
    transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), "en", final=True)


def _load(location: str) -> Any:
    from faster_whisper import WhisperModel

    return WhisperModel(
        location,
        device=_config["device"],
        compute_type=_config["compute_type"],
        cpu_threads=_config["cpu_threads"],
        num_workers=1,
    )


def _model_for(language: str) -> Any:
    """English (or any language, without a multilingual model) on the main model;
    others on the multilingual base, loaded once per process on first use."""
    global _multilingual_model
    multilingual = _config.get("multilingual")
    if language == "en" or not multilingual:
        return _model
    if _multilingual_model is None:
        location = multilingual["location"]
        verify(location, multilingual["sha256"], multilingual["distribution"])
        _multilingual_model = _load(location)
    return _multilingual_model


def _detector() -> Any:
    """The model that identifies languages: the multilingual base when there is
    one, else the main model (the engine allows language=auto only when it is
    multilingual)."""
    return _model_for(language_id.AUTO)


def identify(samples: np.ndarray) -> LanguageIdentified:
    """The language of speech (float32 at 16 kHz): the most probable one this
    server takes, by faster-whisper's detect_language (the first 30 s)."""
    _, _, probabilities = _detector().detect_language(audio=samples)
    return language_id.best_supported(probabilities) or LanguageIdentified("en-US", 0.0)


def _prompt(model: Any, language: str) -> tuple[Any, list[int]]:
    """(tokenizer, decoder prompt) for a model and a Whisper language code, cached."""
    key = (language, model is _model)
    if key not in _prompts:
        from faster_whisper.tokenizer import Tokenizer

        tokenizer = Tokenizer(
            model.hf_tokenizer,
            model.model.is_multilingual,
            task="transcribe",
            language=language,
        )
        _tokenizers[key] = tokenizer
        _prompts[key] = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    return _tokenizers[key], _prompts[key]


class _Decoded(NamedTuple):
    """An utterance decoded: its text ("" when nobody spoke), and what aligning its
    words needs (its tokens, the encoder's output, the model that made them)."""

    text: str
    tokens: list[int]
    encoded: Any
    frames: int  # mel frames of the utterance's own audio (not the padding)
    model: Any
    tokenizer: Any


def transcribe(samples: np.ndarray, language: str, *, final: bool) -> str:
    """The text of one utterance (float32 at 16 kHz), "" when nobody spoke: by
    Whisper's no-speech rule, a loop even without repeated trigrams, or no word."""
    return _decode(samples, language, final=final).text


def transcribe_words(samples: np.ndarray, language: str) -> tuple[str, Words]:
    """A final's text and its words, timed from the start of `samples`; one more
    pass of the decoder (CTranslate2's alignment), so only when asked."""
    decoded = _decode(samples, language, final=True)
    if not decoded.text:
        return "", ()
    return decoded.text, word_times(
        decoded.model,
        decoded.tokenizer,
        decoded.encoded,
        decoded.tokens,
        decoded.frames,
    )


def _decode(samples: np.ndarray, language: str, *, final: bool) -> _Decoded:
    from faster_whisper.transcribe import get_ctranslate2_storage

    model = _model_for(language)
    tokenizer, prompt = _prompt(model, language)
    seconds = len(samples) / SAMPLE_RATE
    window = min(MAX_WINDOW_SECONDS, max(MIN_WINDOW_SECONDS, seconds))
    frames_wanted = int(window * SAMPLE_RATE)
    padded = np.zeros(frames_wanted, dtype=np.float32)
    padded[: len(samples)] = samples[:frames_wanted]
    hop = model.feature_extractor.hop_length
    features = model.feature_extractor(padded, padding=0)[:, : frames_wanted // hop]
    encoded = model.model.encode(
        get_ctranslate2_storage(np.expand_dims(features, 0)), to_cpu=False
    )
    budget = int(TOKENS_PER_SECOND * seconds) + EXTRA_TOKENS

    def generate(no_repeat_ngram_size: int) -> tuple[str, Any]:
        result = model.model.generate(
            encoded,
            [prompt],
            beam_size=1,
            max_length=len(prompt) + budget,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
            no_repeat_ngram_size=no_repeat_ngram_size,
        )[0]
        return tokenizer.decode(result.sequences_ids[0]).strip(), result

    def decoded(text: str, result: Any = None) -> _Decoded:
        tokens = list(result.sequences_ids[0]) if result is not None else []
        frames = min(len(samples), frames_wanted) // hop
        return _Decoded(text, tokens, encoded, frames, model, tokenizer)

    # Partials always forbid repeated trigrams (they are replaced anyway); a final
    # does only when its first pass looks like a loop.
    text, result = generate(0 if final else 3)
    tokens = len(result.sequences_ids[0])
    avg_logprob = result.scores[0] * tokens / (tokens + 1)
    if not whisper_heard_speech(result.no_speech_prob, avg_logprob, _thresholds):
        return decoded("")  # judged on the unconstrained pass: the second scores lower
    if final and compression_ratio(text) > _thresholds.compression_ratio:
        text, result = generate(3)
        if compression_ratio(text) > _thresholds.compression_ratio:
            return decoded("")  # still a loop: what Whisper hallucinates from noise
    return decoded(text, result) if has_words(text) else decoded("")


class _Held(NamedTuple):
    """An utterance heard before the session's language was known."""

    audio: bytes
    start: float
    end: float
    number: int


class Session(EndpointedSession):
    """One stream: the endpointer's utterances, decoded by Whisper once Silero
    (`self.gate`) has heard speech in them; the others cost no decoding.

    With language=auto the utterances with speech are held, undecoded and without
    partials, until the language is identified (`language_id`'s rule); then they are
    decoded in it, in order, and the session goes on as if that language had been
    asked.
    """

    def __init__(
        self,
        sample_rate: int,
        language: str,
        endpointing_ms: int | None = None,
        word_times: bool = False,
    ):
        super().__init__(sample_rate, endpointing_ms)
        self.word_times = word_times
        self.identifying = language == language_id.AUTO
        self.waiting: list[_Held] = []  # utterances before the language is known
        self.tries = 0
        self.found: LanguageIdentified | None = None  # for the caller, once
        self.ending = False  # the stream ends with this call
        self.next_try = language_id.IDENTIFY_AFTER_SECONDS
        if self.identifying:
            self.language = ""
            _detector()  # a first auto session loads the base here
        else:
            self.language = whisper_language(language) or "en"
            _model_for(self.language)  # a first non-English session loads the base
        self.vad = Vad(sample_rate=SAMPLE_RATE)  # pauses inside long utterances
        self.gate = SpeechGate(_gate)
        self.audio = bytearray()  # the utterance under way, 16 kHz
        self.partial = ""
        self.partial_due = FIRST_PARTIAL_BYTES

    def _start_utterance(self) -> None:
        super()._start_utterance()
        self._reset_utterance()

    def _reset_utterance(self) -> None:
        self.gate.reset()
        self.audio.clear()
        self.partial = ""
        self.partial_due = FIRST_PARTIAL_BYTES

    def _decode(self, speech: bytes) -> None:
        super()._decode(speech)
        self.audio += speech
        self.gate.add(speech)
        if len(self.audio) >= CUT_ANYWAY_BYTES or (
            len(self.audio) >= CUT_AT_PAUSE_BYTES
            and len(speech) == self.frame_bytes
            and not self.vad.is_speech(speech)
        ):
            self._cut()

    def _cut(self) -> None:
        """End the utterance here and go on with a new one (the speaker did not
        stop, but Whisper's window is 30 s)."""
        self._end_utterance()
        self.utterances += 1
        self.utterance_start += self.utterance_bytes / BYTES_PER_SECOND
        self.utterance_bytes = 0
        self._reset_utterance()

    def feed_events(
        self, data: bytes, last: bool, partials: bool = True, finalize: bool = False
    ) -> list[Event | LanguageIdentified]:
        """`feed()`, with the language identified in this call first."""
        self.ending = last  # a try in this call takes its best guess
        events: list[Event | LanguageIdentified] = [
            *self.feed(data, last, partials, finalize)
        ]
        if last and self.identifying and self.waiting:
            self._identify(ended=True)  # whatever was heard, now
            events += self.events
            self.events = []
        if self.found is not None:
            # First: nothing is emitted while identifying, and the finals it let
            # be decoded follow it.
            events.insert(0, self.found)
            self.found = None
        return events

    def _speech_confirmed(self) -> bool:
        return self.gate.heard_speech()

    def _end_utterance(self) -> None:
        if not self.audio:  # cut just before the endpointer's own end
            return
        if self.identifying:
            if self.gate.heard_speech():  # noise is neither held nor identified
                end = self.utterance_start + self.utterance_bytes / BYTES_PER_SECOND
                self.waiting.append(
                    _Held(bytes(self.audio), self.utterance_start, end, self.utterances)
                )
            self.audio.clear()
            self._identify(ended=True)
            return
        if self.gate.heard_speech():
            text, words = self._final(self.audio)
            if text:
                self._emit(text, is_partial=False, words=words)
        self.audio.clear()

    def _after_feed(self) -> None:
        if self.identifying:
            self._identify(ended=False)
            if self.identifying:
                return
            self.partial_due = len(self.audio)  # a partial of it now
        if not (self.partials and self.endpointer.in_speech and self.audio):
            return
        if len(self.audio) < self.partial_due or not self.gate.heard_speech():
            return
        self.partial_due = len(self.audio) + PARTIAL_EVERY_BYTES
        text = self._transcribe(final=False)
        if text and text != self.partial:
            self.partial = text
            self._emit(text, is_partial=True)

    def _transcribe(self, *, final: bool) -> str:
        return transcribe(_floats(self.audio), self.language, final=final)

    def _final(self, audio: bytes | bytearray) -> tuple[str, Words | None]:
        """A final's text, and its words (from the utterance's start) when the
        session asked for them (None otherwise)."""
        if self.word_times:
            return transcribe_words(_floats(audio), self.language)
        return transcribe(_floats(audio), self.language, final=True), None

    def _identify(self, *, ended: bool) -> None:
        """Try to identify the language of the speech held so far (and of the
        utterance under way); once it is, decode what was held."""
        under_way = bytes(self.audio) if self.gate.heard_speech() else b""
        speech = b"".join(held.audio for held in self.waiting) + under_way
        if not speech:
            return  # no speech heard yet: nothing to identify
        seconds = len(speech) / BYTES_PER_SECOND
        last = self.ending
        if not (
            (last and ended)
            or language_id.worth_trying(seconds, next_try=self.next_try, ended=ended)
        ):
            return
        self.tries += 1
        guess = identify(_floats(speech))
        if not language_id.accepted(
            guess.probability, seconds=seconds, tries=self.tries, last=last
        ):
            self.next_try = seconds + language_id.IDENTIFY_AFTER_SECONDS
            return
        self.identifying = False
        self.language = whisper_language(guess.language) or "en"
        self.found = guess
        held, self.waiting = self.waiting, []
        for utterance in held:
            text, words = self._final(utterance.audio)
            if text:
                self.events.append(
                    utterance_event(
                        text,
                        False,
                        utterance.start,
                        utterance.end,
                        utterance.number,
                        words,
                    )
                )


def _floats(audio: bytes | bytearray) -> np.ndarray:
    return np.frombuffer(bytes(audio), dtype="<i2").astype(np.float32) / 32768.0


def session_open(
    key: str,
    sample_rate: int,
    language: str = "en-US",
    endpointing_ms: int | None = None,
    word_times: bool = False,
) -> int:
    """Start a session's state here; returns this worker's pid; `word_times`: its
    finals carry their words' times."""
    _sessions[key] = Session(sample_rate, language, endpointing_ms, word_times)
    return os.getpid()


def feed(
    key: str,
    data: bytes,
    last: bool = False,
    partials: bool = True,
    finalize: bool = False,
) -> list[Event | LanguageIdentified]:
    """Decode more audio of a session; `last` flushes it and ends its last utterance,
    `finalize` ends the utterance under way (the stream goes on)."""
    return _sessions[key].feed_events(data, last, partials, finalize)


def session_close(key: str) -> None:
    """Forget a session (it may be unknown: its open may have been cancelled)."""
    _sessions.pop(key, None)


def stats() -> dict[str, int]:
    """What this worker holds and its memory, for tests and benchmarks."""
    with open("/proc/self/statm") as statm:
        rss_pages = int(statm.read().split()[1])
    return {
        "pid": os.getpid(),
        "sessions": len(_sessions),
        "multilingual_loaded": int(_multilingual_model is not None),
        "rss_kib": rss_pages * os.sysconf("SC_PAGE_SIZE") // 1024,
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
