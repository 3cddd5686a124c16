"""`manage.py check_aws`: do credentials resolve, do Transcribe and Polly answer."""

import asyncio
from collections.abc import Callable

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from transcription.engines import EngineError, StreamParams
from transcription.engines.aws_transcribe import AwsTranscribeEngine

Check = Callable[[float], str]  # returns what it found; raises CheckFailed


class CheckFailed(Exception):
    pass


def check_region(timeout: float) -> str:
    region = settings.AWS_REGION
    if region not in boto3.Session().get_available_regions("transcribe"):
        raise CheckFailed(f"{region!r} is not a region AWS Transcribe is known in")
    return region


def check_credentials(timeout: float) -> str:
    credentials = boto3.Session().get_credentials()
    if credentials is None:
        raise CheckFailed(
            "none found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "AWS_PROFILE, or run with an IAM role)"
        )
    key = credentials.access_key
    return f"{credentials.method}, access key …{key[-4:]}"


def check_transcribe(timeout: float) -> str:
    """One short stream of silence, read to its end, as the server would."""
    endpoint = settings.AWS_TRANSCRIBE_ENDPOINT or "the regional endpoint"

    async def stream_silence() -> None:
        stream = await AwsTranscribeEngine().open(StreamParams())
        try:
            await stream.send_audio(b"\0" * 3200)
            await stream.end_audio()
            async for _ in stream.events():
                pass
        finally:
            await stream.aclose()

    try:
        asyncio.run(asyncio.wait_for(stream_silence(), timeout))
    except EngineError as exc:
        raise CheckFailed(exc.message) from None
    except TimeoutError:
        raise CheckFailed(f"no answer from {endpoint} in {timeout:g} s") from None
    return f"streaming works at {endpoint}"


def check_polly(timeout: float) -> str:
    endpoint = getattr(settings, "AWS_POLLY_ENDPOINT", "") or None
    voice = getattr(settings, "POLLY_VOICE", "") or "Joanna"
    client = boto3.client(
        "polly",
        region_name=settings.AWS_REGION,
        endpoint_url=endpoint,
        config=Config(
            connect_timeout=min(timeout, 5),
            read_timeout=timeout,
            retries={"max_attempts": 1},
        ),
    )
    try:
        reply = client.synthesize_speech(Text="ok", OutputFormat="mp3", VoiceId=voice)
        size = len(reply["AudioStream"].read())
    except (BotoCoreError, ClientError) as exc:
        raise CheckFailed(str(exc)) from None
    return f"voice {voice} spoke {size} bytes of MP3"


class Command(BaseCommand):
    help = (
        "Check the production AWS setup: region, credentials, and that Transcribe "
        "Streaming and Polly answer. Exits non-zero if anything fails."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--timeout",
            type=float,
            default=10.0,
            help="seconds allowed for each service (default 10)",
        )

    def handle(self, *args, **options):
        timeout = options["timeout"]
        checks: list[tuple[str, Check]] = [
            ("region", check_region),
            ("credentials", check_credentials),
            ("Transcribe", check_transcribe),
            ("Polly", check_polly),
        ]
        failed = []
        for name, check in checks:
            if name in ("Transcribe", "Polly") and "credentials" in failed:
                self.stdout.write(f"SKIP {name}: no credentials")
                continue
            try:
                found = check(timeout)
            except CheckFailed as exc:
                failed.append(name)
                self.stdout.write(self.style.ERROR(f"FAIL {name}: {exc}"))
            else:
                self.stdout.write(self.style.SUCCESS(f"OK   {name}: {found}"))
        if failed:
            raise CommandError(f"AWS is not ready: {', '.join(failed)} failed.")
        self.stdout.write("AWS is ready.")
