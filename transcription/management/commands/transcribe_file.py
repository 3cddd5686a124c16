"""Stream an audio file to a server by the seed-004 protocol; print the finals."""

import asyncio
import json
import os
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from transcription.audio_files import AudioFileError, PcmAudio, read_pcm


class Command(BaseCommand):
    help = (
        "Stream a WAV file (any common rate, mono or stereo) or raw 16-bit PCM "
        "(--sample-rate) to a running voiceproject server and print the final "
        "transcripts. The token comes from --token or $VOICEPROJECT_TOKEN and is sent "
        "in an Authorization header, never in the URL."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--url", default="ws://127.0.0.1:8765/")
        parser.add_argument("--token", default=os.environ.get("VOICEPROJECT_TOKEN"))
        parser.add_argument("--language", default="en-US")
        parser.add_argument("--sample-rate", type=int, help="raw PCM input's rate")
        parser.add_argument(
            "--realtime", action="store_true", help="pace frames as a microphone would"
        )
        parser.add_argument("--chunk-bytes", type=int, default=1024)
        parser.add_argument(
            "--partials", action="store_true", help="also print partial transcripts"
        )

    def handle(self, *args, **options):
        if not options["token"]:
            raise CommandError("a token is needed: --token or $VOICEPROJECT_TOKEN")
        if not options["path"].is_file():
            raise CommandError(f"no such file: {options['path']}")
        try:
            audio = read_pcm(options["path"], raw_sample_rate=options["sample_rate"])
        except AudioFileError as exc:
            raise CommandError(str(exc)) from exc
        self.server_error = ""
        code, reason = asyncio.run(self._stream(audio, options))
        if code != 1000:
            raise CommandError(close_message(code, reason, self.server_error))
        if self.server_error:  # not expected: every error precedes a close != 1000
            self.stderr.write(f"error: {self.server_error}")

    def _url(self, audio: PcmAudio, options) -> str:
        parts = urlsplit(options["url"])
        query = urlencode(
            {
                "language": options["language"],
                "encoding": "pcm",
                "sampleRate": audio.sample_rate,
                "sendPartials": "true" if options["partials"] else "false",
            }
        )
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, ""))

    async def _stream(self, audio: PcmAudio, options) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {options['token']}"}
        try:
            async with connect(
                self._url(audio, options), additional_headers=headers, max_size=None
            ) as ws:
                progress = tqdm(
                    total=len(audio.data),
                    unit="B",
                    unit_scale=True,
                    desc=options["path"].name,
                    disable=None,
                )
                sender = asyncio.create_task(self._send(ws, audio, options, progress))
                try:
                    await self._receive(ws, progress)
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                    progress.close()
            return ws.close_code or 1006, ws.close_reason or ""
        except (OSError, InvalidHandshake, InvalidURI) as exc:
            raise CommandError(f"cannot connect to {options['url']}: {exc}") from exc

    async def _send(self, ws, audio: PcmAudio, options, progress) -> None:
        size = options["chunk_bytes"]
        pause = size / (2 * audio.sample_rate) if options["realtime"] else 0
        try:
            for start in range(0, len(audio.data), size):
                chunk = audio.data[start : start + size]
                await ws.send(chunk)
                progress.update(len(chunk))
                await asyncio.sleep(pause)
            await ws.send("END_OF_STREAM")
        except ConnectionClosed:
            return

    async def _receive(self, ws, progress) -> None:
        # On a terminal the partials live in the progress bar; in a pipe or a file,
        # where there is no bar, they are lines of their own.
        partial_lines = not self.stdout.isatty()
        try:
            async for message in ws:
                data = json.loads(message)
                if "transcript" in data:
                    progress.clear()
                    self.stdout.write(data["transcript"])
                    progress.refresh()
                elif "partialTranscript" in data:
                    if partial_lines:
                        self.stdout.write(f"partial: {data['partialTranscript']}")
                    progress.set_postfix_str(data["partialTranscript"][-40:])
                elif "error" in data:
                    self.server_error = data["error"]  # said once, with the close
                elif data.get("type") == "language":
                    # --language auto: on stderr, so stdout stays the transcript.
                    progress.clear()
                    self.stderr.write(
                        f"language: {data['language']} ({data['probability']:.2f})"
                    )
                    progress.refresh()
                elif data.get("type") == "server_response":
                    progress.clear()
                    self.stdout.write(f"reply: {data.get('message', '')}")
        except ConnectionClosed:
            return


def close_message(code: int, reason: str, error: str) -> str:
    """One line for a close other than 1000: the server's own words first."""
    if code == 1006:
        what = "the connection dropped"
    else:
        what = f"the server closed the session with code {code}"
    said = error or reason
    return f"{said} ({what})" if said else what
