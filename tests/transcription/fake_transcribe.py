"""A local AWS Transcribe Streaming server that speaks the real wire protocol.

HTTP/2 over TLS (the SDK's awscrt refuses plain-text HTTP/2), served with `h2`; the
request and response bodies are AWS event streams, framed with the SDK's own codec. It
checks what the service checks: the SigV4 `authorization` header (recomputed with the
secret key the test gave the client), and that every audio event arrives inside a
signed envelope whose chunk signature chains from the request's signature. It answers
with partial and final `TranscriptEvent`s, decoded from the audio with pocketsphinx
(PCM at any rate, resampled to 16 kHz) or taken from a script, and it can play each
error the service sends: an HTTP error at start, an exception event mid-stream, the
15-second no-audio timeout.

It runs its own event loop in a thread, so an in-process engine and a daphne
subprocess reach it alike at `fake.url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import hmac
import json
import pathlib
import re
import ssl
import threading
import uuid
from binascii import hexlify, unhexlify
from collections.abc import Iterator
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import numpy as np
import trustme
from amazon_transcribe.eventstream import (
    EventStreamBuffer,
    EventStreamMessageSerializer,
)

ACCESS_KEY_ID = "AKIAFAKETRANSCRIBE01"
SECRET_ACCESS_KEY = "fake-secret-access-key-for-tests"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
NO_AUDIO_MESSAGE = (
    "Your request timed out because no new audio was received for 15 seconds."
)
MAX_AUDIO_EVENT_BYTES = 32 * 1024  # the service refuses bigger audio chunks
RECOGNIZER_RATE = 16000

_AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"transcribe/aws4_request, SignedHeaders=(?P<signed>[^,]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
_STATUS = {
    "BadRequestException": 400,
    "ConflictException": 409,
    "LimitExceededException": 429,
    "InternalFailureException": 500,
    "ServiceUnavailableException": 503,
}


@dataclass
class Play:
    """What the fake does with the next streams (the test sets it)."""

    start_error: str = ""  # an exception name from _STATUS: HTTP error at start
    stream_error: str = ""  # exception event after the first audio event
    error_message: str = "played by the fake"
    # (text, is_partial) results answering the first audio event, instead of decoding
    script: list[tuple[str, bool]] | None = None
    no_audio_timeout: float = 15.0
    hang: bool = False  # take the request, never answer it


@dataclass
class Received:
    """What one stream brought: headers, audio events, signature checks."""

    headers: dict[str, str]
    request_signed: bool = False
    audio_events: list[int] = field(default_factory=list)
    bad_envelopes: int = 0
    ended: bool = False  # the client sent the empty end-of-stream envelope
    reset: bool = False  # the client went away (RST_STREAM or connection lost)

    @property
    def audio_bytes(self) -> int:
        return sum(self.audio_events)


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _signing_key(date: str, region: str) -> bytes:
    key = _sign(("AWS4" + SECRET_ACCESS_KEY).encode(), date)
    return _sign(_sign(_sign(key, region), "transcribe"), "aws4_request")


def _request_signature_ok(headers: dict[str, str], match: re.Match) -> bool:
    """Recompute the SigV4 signature of the request headers (HTTP/2: host=authority)."""
    values = {**headers, "host": headers.get(":authority", "").split(":")[0]}
    signed = match["signed"].split(";")
    canonical = "\n".join(
        [
            headers[":method"],
            headers[":path"].split("?")[0],
            "",
            *(f"{name}:{values.get(name, '').strip()}" for name in signed),
            "",
            match["signed"],
            headers.get("x-amz-content-sha256", EMPTY_SHA256),
        ]
    )
    scope = f"{match['date']}/{match['region']}/transcribe/aws4_request"
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            headers.get("x-amz-date", ""),
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = _signing_key(match["date"], match["region"])
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, match["signature"])


class _Recognizer:
    """pocketsphinx with its endpointer: partial hypotheses and one final per pause."""

    def __init__(self, sample_rate: int):
        import soxr
        from pocketsphinx import Decoder, Endpointer

        # As the service takes PCM at any rate: heard at pocketsphinx's 16 kHz.
        self.resampler = (
            None
            if sample_rate == RECOGNIZER_RATE
            else soxr.ResampleStream(sample_rate, RECOGNIZER_RATE, 1, dtype="int16")
        )
        self.endpointer = Endpointer(sample_rate=RECOGNIZER_RATE)
        self.decoder = Decoder(samprate=RECOGNIZER_RATE, loglevel="FATAL")
        self.pending = b""
        self.partial = ""
        self.samples = 0
        self.utterance_start = 0.0
        self.sample_rate = RECOGNIZER_RATE

    def resampled(self, audio: bytes) -> bytes:
        if self.resampler is None:
            return audio
        samples = np.frombuffer(audio[: len(audio) // 2 * 2], dtype="<i2")
        return self.resampler.resample_chunk(samples).astype("<i2").tobytes()

    def feed(self, audio: bytes) -> list[tuple[str, bool, float, float]]:
        self.pending += audio
        size = self.endpointer.frame_bytes
        results = []
        while len(self.pending) >= size:
            frame, self.pending = self.pending[:size], self.pending[size:]
            results += self._frame(frame, last=False)
        return results

    def end(self) -> list[tuple[str, bool, float, float]]:
        frame, self.pending = self.pending, b""
        return self._frame(frame, last=True)

    def _frame(self, frame: bytes, *, last: bool) -> list:
        was_in_speech = self.endpointer.in_speech
        if last:
            speech = self.endpointer.end_stream(frame)
        else:
            speech = self.endpointer.process(frame)
        self.samples += len(frame) // 2
        if speech is None:
            return []
        if not was_in_speech:
            self.decoder.start_utt()
            self.utterance_start = self.endpointer.speech_start
        self.decoder.process_raw(speech)
        hyp = self.decoder.hyp()
        now = self.samples / self.sample_rate
        if self.endpointer.in_speech and not last:
            if hyp is None or hyp.hypstr == self.partial:
                return []
            self.partial = hyp.hypstr  # like the service: a partial when it changes
            return [(hyp.hypstr, True, self.utterance_start, now)]
        self.decoder.end_utt()
        self.partial = ""
        hyp = self.decoder.hyp()
        end = self.endpointer.speech_end
        # As the service times each word: pocketsphinx's segmentation (100 frames/s).
        words = [
            (
                seg.word,
                self.utterance_start + seg.start_frame / 100,
                self.utterance_start + (seg.end_frame + 1) / 100,
            )
            for seg in self.decoder.seg()
            if seg.word and seg.word[0] not in "<[+"
        ]
        return [(hyp.hypstr if hyp else "", False, self.utterance_start, end, words)]


class _Stream:
    """One StartStreamTranscription request: envelopes in, transcript events out."""

    def __init__(self, fake: FakeTranscribe, received: Received, signature: str):
        self.fake = fake
        self.play = fake.play
        self.received = received
        self.prior_signature = unhexlify(signature)
        self.buffer = EventStreamBuffer()
        self.result_id = str(uuid.uuid4())
        encoding = received.headers.get("x-amzn-transcribe-media-encoding")
        rate = int(received.headers.get("x-amzn-transcribe-sample-rate", "0"))
        self.decodes = self.play.script is None and encoding == "pcm"
        self.recognizer: _Recognizer | None = None
        self.seconds = 0.0
        self.rate = rate or 16000

    def feed(self, data: bytes) -> tuple[list[bytes], bool]:
        """Messages to send for this data, and whether the response is complete."""
        self.buffer.add_data(data)
        out: list[bytes] = []
        for envelope in self.buffer:
            audio = self._open_envelope(envelope)
            if audio is None:
                out.append(self._exception("BadRequestException", "bad envelope"))
                return out, True
            if audio == b"":
                self.received.ended = True
                out += self._results(self.recognizer.end() if self.recognizer else [])
                return out, True
            if len(audio) > MAX_AUDIO_EVENT_BYTES:
                out.append(
                    self._exception(
                        "BadRequestException",
                        f"Audio chunk of {len(audio)} bytes exceeds the maximum.",
                    )
                )
                return out, True
            self.received.audio_events.append(len(audio))
            if self.play.stream_error:
                out.append(
                    self._exception(self.play.stream_error, self.play.error_message)
                )
                return out, True
            out += self._results(self._recognize(audio))
        return out, False

    def _recognize(self, audio: bytes) -> list[tuple[str, bool, float, float]]:
        start = self.seconds
        self.seconds += len(audio) / (2 * self.rate)
        if self.decodes:
            if self.recognizer is None:
                self.recognizer = _Recognizer(self.rate)
            return self.recognizer.feed(self.recognizer.resampled(audio))
        if len(self.received.audio_events) > 1:
            return []
        return [
            (text, partial, start, self.seconds) for text, partial in self.play.script
        ]

    def _open_envelope(self, envelope) -> bytes | None:
        """The audio inside a signed envelope; None when the signature is wrong."""
        date = envelope.headers.get(":date")
        signature = envelope.headers.get(":chunk-signature")
        if not isinstance(date, int) or not isinstance(signature, bytes):
            self.received.bad_envelopes += 1
            return None
        when = datetime.datetime.fromtimestamp(date / 1000, datetime.UTC)
        stamp = when.strftime("%Y%m%dT%H%M%SZ")
        headers = EventStreamMessageSerializer().encode_headers({":date": when})
        region = self.fake.region
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                stamp,
                f"{stamp[:8]}/{region}/transcribe/aws4_request",
                hexlify(self.prior_signature).decode(),
                hashlib.sha256(headers).hexdigest(),
                hashlib.sha256(envelope.payload).hexdigest(),
            ]
        )
        key = _signing_key(stamp[:8], region)
        expected = hmac.new(key, to_sign.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, signature):
            self.received.bad_envelopes += 1
            return None
        self.prior_signature = signature
        if envelope.payload == b"":
            return b""
        inner = EventStreamBuffer()
        inner.add_data(envelope.payload)
        message = next(inner)
        if message.headers.get(":event-type") != "AudioEvent":
            self.received.bad_envelopes += 1
            return None
        return message.payload

    def _results(self, results) -> list[bytes]:
        out = []
        for text, partial, start, end, *words in results:
            out.append(self._transcript_event(text, partial, start, end, *words[:1]))
            if not partial:
                self.result_id = str(uuid.uuid4())
        return out

    def _transcript_event(
        self, text: str, partial: bool, start, end, words=None
    ) -> bytes:
        items = _items(text, start, end, words)
        if self.received.headers.get("x-amzn-transcribe-show-speaker-label") == "True":
            # As AWS does: each word with the speaker it heard.
            for item in items:
                if item["Type"] == "pronunciation":
                    item["Speaker"] = "spk_0"
        alternatives = [{"Transcript": text, "Items": items}] if text else []
        result = {
            "ResultId": self.result_id,
            "StartTime": round(start, 3),
            "EndTime": round(end, 3),
            "IsPartial": partial,
            "Alternatives": alternatives,
        }
        body = {"Transcript": {"Results": [result] if text else []}}
        return EventStreamMessageSerializer().serialize(
            {
                ":message-type": "event",
                ":event-type": "TranscriptEvent",
                ":content-type": "application/json",
            },
            json.dumps(body).encode(),
        )

    def _exception(self, name: str, message: str) -> bytes:
        return EventStreamMessageSerializer().serialize(
            {
                ":message-type": "exception",
                ":exception-type": name,
                ":content-type": "application/json",
            },
            json.dumps({"Message": message}).encode(),
        )


_TOKENS = re.compile(r"\w[\w']*|[^\w\s]")


def _is_word(token: str) -> bool:
    return token[0].isalnum() or token[0] == "_"


def _items(text: str, start: float, end: float, words=None) -> list[dict]:
    """A result's Items as AWS gives them: a pronunciation item per word, timed
    (by `words`, or the result's time shared out), and punctuation untimed."""
    tokens = _TOKENS.findall(text)
    spoken = [token for token in tokens if _is_word(token)]
    if words is None or len(words) != len(spoken):
        step = (end - start) / max(len(spoken), 1)
        words = [
            (word, start + index * step, start + (index + 1) * step)
            for index, word in enumerate(spoken)
        ]
    timed = iter(words)
    items = []
    for token in tokens:
        if _is_word(token):
            _, word_start, word_end = next(timed)
            items.append(
                {
                    "Type": "pronunciation",
                    "Content": token,
                    "StartTime": round(word_start, 3),
                    "EndTime": round(word_end, 3),
                }
            )
        else:
            items.append({"Type": "punctuation", "Content": token})
    return items


class FakeTranscribe:
    """The server; `with FakeTranscribe(cert) as fake:` serves at `fake.url`."""

    def __init__(self, certificate, *, region: str = "eu-west-1"):
        self.certificate = certificate  # a trustme LeafCert for 127.0.0.1
        self.region = region
        self.play = Play()
        self.received: list[Received] = []
        self.refusals: list[str] = []  # requests refused before any stream
        self.port = 0
        self.env: dict[str, str] = {}  # what a client process needs to reach it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeTranscribe:
        self._thread = threading.Thread(target=self._run, name="fake-transcribe")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake Transcribe did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.certificate.configure_cert(context)
        context.set_alpn_protocols(["h2"])
        server = await asyncio.start_server(
            self._connection, "127.0.0.1", 0, ssl=context
        )
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for writer in list(self._writers):
                writer.close()
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _connection(self, reader, writer) -> None:
        self._writers.add(writer)
        self._handlers.add(asyncio.current_task())
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, _Stream] = {}
        timers: dict[int, asyncio.TimerHandle] = {}

        def flush() -> None:
            data = conn.data_to_send()
            if data and not writer.is_closing():
                writer.write(data)

        def finish(stream_id: int, messages: list[bytes]) -> None:
            for message in messages:
                conn.send_data(stream_id, message)
            conn.end_stream(stream_id)
            streams.pop(stream_id, None)
            timer = timers.pop(stream_id, None)
            if timer:
                timer.cancel()

        def arm(stream_id: int) -> None:
            if timer := timers.pop(stream_id, None):
                timer.cancel()
            stream = streams[stream_id]

            def timeout() -> None:
                if stream_id in streams:
                    message = stream._exception("BadRequestException", NO_AUDIO_MESSAGE)
                    finish(stream_id, [message])
                    flush()

            timers[stream_id] = asyncio.get_running_loop().call_later(
                self.play.no_audio_timeout, timeout
            )

        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self._request(conn, event, streams)
                        if event.stream_id in streams:
                            arm(event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                        stream = streams.get(event.stream_id)
                        if stream is None:
                            continue
                        messages, done = stream.feed(event.data)
                        if done:
                            finish(event.stream_id, messages)
                        else:
                            for message in messages:
                                conn.send_data(event.stream_id, message)
                            arm(event.stream_id)
                    elif isinstance(event, h2.events.StreamReset) and (
                        stream := streams.pop(event.stream_id, None)
                    ):
                        stream.received.reset = True
                flush()
                await writer.drain()
        except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            for stream in streams.values():
                stream.received.reset = True
            for timer in timers.values():
                timer.cancel()
            self._writers.discard(writer)
            writer.close()

    def _request(self, conn, event, streams: dict[int, _Stream]) -> None:
        headers = dict(event.headers)
        match = _AUTH.match(headers.get("authorization", ""))
        problem = ""
        if headers.get(":path") != "/stream-transcription":
            problem = "unknown path"
        elif match is None or match["key"] != ACCESS_KEY_ID:
            problem = "missing or malformed SigV4 authorization"
        elif match["region"] != self.region:
            problem = "wrong region"
        elif not _request_signature_ok(headers, match):
            problem = "request signature does not match"
        if problem:
            self.refusals.append(problem)
            self._reply_error(conn, event.stream_id, "BadRequestException", problem)
            return
        received = Received(headers=headers, request_signed=True)
        self.received.append(received)
        if self.play.hang:
            return
        if self.play.start_error:
            self._reply_error(
                conn, event.stream_id, self.play.start_error, self.play.error_message
            )
            return
        echoed = {
            name: value
            for name, value in headers.items()
            if name.startswith("x-amzn-transcribe-")
        }
        conn.send_headers(
            event.stream_id,
            [
                (":status", "200"),
                ("content-type", "application/vnd.amazon.eventstream"),
                ("x-amzn-request-id", str(uuid.uuid4())),
                ("x-amzn-transcribe-session-id", str(uuid.uuid4())),
                *echoed.items(),
            ],
        )
        streams[event.stream_id] = _Stream(self, received, match["signature"])

    def _reply_error(self, conn, stream_id: int, name: str, message: str) -> None:
        body = json.dumps({"Message": message}).encode()
        conn.send_headers(
            stream_id,
            [
                (":status", str(_STATUS[name])),
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", f"{name}:http://internal.amazon.com/coral/"),
                ("content-length", str(len(body))),
            ],
        )
        conn.send_data(stream_id, body, end_stream=True)


@contextlib.contextmanager
def running_fake(directory: pathlib.Path) -> Iterator[FakeTranscribe]:
    """A fake with a throw-away CA (written to `directory`) and its client env."""
    authority = trustme.CA()
    ca_file = directory / "fake-transcribe-ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    with FakeTranscribe(authority.issue_cert("127.0.0.1")) as fake:
        fake.env = {
            "SSL_CERT_FILE": str(ca_file),
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": fake.region,
            "AWS_TRANSCRIBE_ENDPOINT": fake.url,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        yield fake
