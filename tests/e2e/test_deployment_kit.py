"""The deployment kit's own files, tried for real: deploy/nginx/voiceproject.conf in
front of daphne started with deploy/Procfile's command line, production settings, a
WebSocket session over TLS; the systemd units through `systemd-analyze verify`.

Skipped with a reason where nginx or systemd-analyze is missing.
"""

import asyncio
import contextlib
import http.client
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import trustme
from websockets.asyncio.client import connect

from accounts.services import api_token_create
from tests.e2e.servers import (
    ROOT,
    LiveServer,
    _wait_until_listening,
    drain,
    free_port,
    run_process,
)
from transcription.models import AudioSession

pytestmark = pytest.mark.django_db(transaction=True)

DEPLOY = ROOT / "deploy"
HOST = "speech.example.com"
NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def _procfile_daphne(port: int) -> list[str]:
    """deploy/Procfile's `web1` line, on `port`, with this interpreter."""
    line = next(
        line.split(":", 1)[1]
        for line in (DEPLOY / "Procfile").read_text().splitlines()
        if line.startswith("web1:")
    )
    args = shlex.split(line)
    assert args[0] == ".venv/bin/daphne"
    args[args.index("--port") + 1] = str(port)
    return [sys.executable, "-m", "daphne", *args[1:]]


def _nginx_conf(
    tmp: Path, *, https: int, http: int, upstream: int, ca, site: str | None = None
) -> Path:
    """nginx.conf in `tmp` for the kit's site (or `site`, an edited copy of it)."""
    cert = ca.issue_cert(HOST)
    cert.cert_chain_pems[0].write_to_path(tmp / "cert.pem")
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(tmp / "cert.pem", append=True)
    cert.private_key_pem.write_to_path(tmp / "key.pem")
    site = site or (DEPLOY / "nginx/voiceproject.conf").read_text()
    site = re.sub(r"\n\s*listen \[::\].*;", "", site)  # IPv4 only here
    site = site.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{https} ssl http2;")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{http};")
    site = re.sub(
        r"/etc/letsencrypt/live/[^;]*/fullchain.pem", str(tmp / "cert.pem"), site
    )
    site = re.sub(
        r"/etc/letsencrypt/live/[^;]*/privkey.pem", str(tmp / "key.pem"), site
    )
    site = site.replace("server 127.0.0.1:8001;", f"server 127.0.0.1:{upstream};")
    site = site.replace("    server 127.0.0.1:8002;\n", "")
    (tmp / "site.conf").write_text(site)
    temp_paths = "".join(
        f"    {name}_temp_path {tmp}/{name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp / "nginx.conf"
    conf.write_text(
        "user root;\n" * (Path("/proc/self").owner() == "root")
        + f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log;\n"
        + "events {}\nhttp {\n"
        + f"    access_log {tmp}/access.log;\n{temp_paths}"
        + f"    include {tmp}/site.conf;\n}}\n"
    )
    return conf


@contextlib.contextmanager
def _nginx(conf: Path, port: int):
    tmp = conf.parent
    check = subprocess.run(
        [NGINX, "-t", "-p", str(tmp), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [NGINX, "-p", str(tmp), "-c", str(conf), "-g", "daemon off;"]
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
                break
            time.sleep(0.1)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get(
    port: int, path: str, *, context=None, headers=None
) -> http.client.HTTPResponse:
    if context is None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection(
            "127.0.0.1", port, timeout=10, context=context
        )
    conn.request("GET", path, headers={"Host": HOST, **(headers or {})})
    response = conn.getresponse()
    response.read()
    return response


@pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx)"
)
def test_nginx_site_and_daphne_command_line_serve_a_session_over_tls(django_user_model):
    raw = api_token_create(
        user=django_user_model.objects.create_user(username="ops"), name="kit"
    )[1]
    ca = trustme.CA()
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False  # 127.0.0.1 is dialled; the certificate is HOST's
    daphne_port, https, plain = free_port(), free_port(), free_port()
    env = {
        "DJANGO_BEHIND_TLS_PROXY": "true",
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": HOST,
        "TRANSCRIPTION_ENGINE": "echo",
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        run_process(_procfile_daphne(daphne_port), env, name="daphne") as (
            process,
            log,
        ),
    ):
        _wait_until_listening(LiveServer(daphne_port, process, log), 60)
        conf = _nginx_conf(
            Path(tmp), https=https, http=plain, upstream=daphne_port, ca=ca
        )
        with _nginx(conf, https):
            login = _get(https, "/accounts/login/", context=context)
            redirect = _get(plain, "/accounts/login/")
            probe = _get(daphne_port, "/healthz")  # Prometheus' and probes' way in

            async def session():
                url = f"wss://{HOST}:{https}/?sendPartials=false"
                async with connect(
                    url,
                    host="127.0.0.1",  # where HOST would resolve to
                    port=https,
                    ssl=context,
                    additional_headers={
                        "Authorization": f"Bearer {raw}",
                        "X-Forwarded-For": "203.0.113.9",  # forged: nginx overwrites
                    },
                ) as ws:
                    await ws.send(b"\0" * 3200)
                    await ws.send("END_OF_STREAM")
                    return await drain(ws), ws.close_code

            messages, code = asyncio.run(session())
    assert login.status == 200
    assert "max-age=31536000" in login.headers["Strict-Transport-Security"]
    assert "Secure" in login.headers["Set-Cookie"]  # csrftoken
    assert (redirect.status, redirect.headers["Location"]) == (
        301,
        f"https://{HOST}/accounts/login/",
    )
    assert probe.status != 301  # exempt from the https redirect
    assert (messages, code) == ([{"transcript": "received 3200 bytes"}], 1000)
    session_record = AudioSession.objects.get()
    assert session_record.client == "127.0.0.1"  # nginx's view, not the forged header


FORGED = "203.0.113.9"
OVERWRITE = "proxy_set_header X-Forwarded-For $remote_addr;"
APPEND = "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;"


def _forged_through(site: str, *, server: LiveServer, ca, raw: str) -> tuple[str, bool]:
    """A page and a session through nginx running `site`, each with a forged
    X-Forwarded-For: (the session's recorded client, whether daphne's output
    names the forged address)."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    https, plain = free_port(), free_port()
    start = len(server.output())

    async def session():
        async with connect(
            f"wss://{HOST}:{https}/?sendPartials=false",
            host="127.0.0.1",
            port=https,
            ssl=context,
            additional_headers={
                "Authorization": f"Bearer {raw}",
                "X-Forwarded-For": FORGED,
            },
        ) as ws:
            await ws.send("END_OF_STREAM")
            await drain(ws)
            return ws.close_code

    with tempfile.TemporaryDirectory() as tmp:
        conf = _nginx_conf(
            Path(tmp), https=https, http=plain, upstream=server.port, ca=ca, site=site
        )
        with _nginx(conf, https):
            headers = {"X-Forwarded-For": FORGED}
            page = _get(https, "/accounts/login/", context=context, headers=headers)
            assert page.status == 200
            assert asyncio.run(session()) == 1000
    record = AudioSession.objects.order_by("-started_at").first()
    return record.client, FORGED in server.output()[start:]


@pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (apt-get install nginx)"
)
def test_the_site_overwrites_a_forged_x_forwarded_for_and_appending_would_not(
    django_user_model,
):
    """daphne's --proxy-headers takes the FIRST X-Forwarded-For entry as the client,
    the application's address_of the last: only a proxy that overwrites the header
    gives both the address it saw. Appending (nginx's usual $proxy_add_x_forwarded_for)
    hands daphne what the client wrote, and the forged address becomes the client's
    for the throttle, the records and the logs."""
    shipped = (DEPLOY / "nginx/voiceproject.conf").read_text()
    assert shipped.count(OVERWRITE) == 1
    raw = api_token_create(
        user=django_user_model.objects.create_user(username="ops"), name="kit"
    )[1]
    ca = trustme.CA()
    port = free_port()
    env = {
        "DJANGO_BEHIND_TLS_PROXY": "true",
        "DJANGO_DEBUG": "false",
        "DJANGO_ALLOWED_HOSTS": HOST,
        "TRANSCRIPTION_ENGINE": "echo",
    }
    with run_process(_procfile_daphne(port), env, name="daphne") as (process, log):
        server = LiveServer(port, process, log)
        _wait_until_listening(server, 60)
        shipped_sees = _forged_through(shipped, server=server, ca=ca, raw=raw)
        appended = shipped.replace(OVERWRITE, APPEND)
        appending_sees = _forged_through(appended, server=server, ca=ca, raw=raw)
    # The record and daphne's access log (its lines for the page and the socket).
    assert shipped_sees == ("127.0.0.1", False)
    assert appending_sees == (FORGED, True)


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_units_verify(tmp_path):
    """Instances of the templates, with /srv/voiceproject pointed at this venv."""
    root = tmp_path / "srv"
    root.mkdir()
    (root / ".venv").symlink_to(Path(sys.executable).parents[1])
    units = []
    for unit in (DEPLOY / "systemd").iterdir():
        text = unit.read_text().replace("/srv/voiceproject", str(root))
        name = unit.name.replace("@.", "@1.")
        (tmp_path / name).write_text(text)
        units.append(str(tmp_path / name))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_the_kit_agrees_with_the_settings():
    """Daphne's limits no lower than MAX_FRAME_BYTES; the drain fits the stop."""
    from django.conf import settings

    unit = (DEPLOY / "systemd/voiceproject-daphne@.service").read_text()
    args = " ".join(_procfile_daphne(8001))
    for flag in ("--websocket-max-message-size", "--websocket-max-frame-size"):
        for text in (unit, args):
            size = int(re.search(rf"{flag} (\d+)", text).group(1))
            assert size >= settings.MAX_FRAME_BYTES
    for text in (unit, args):
        close = float(re.search(r"--application-close-timeout (\d+)", text).group(1))
        assert close > settings.DRAIN_SECONDS
        assert "--websocket_timeout -1" in text
    stop = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))
    assert stop > settings.DRAIN_SECONDS + 10
    assert "KillMode=mixed" in unit
