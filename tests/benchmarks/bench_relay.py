"""Relay benchmark: concurrent real-time 16 kHz streams against one core.

The targets and the recorded figures: docs/performance.md §1-§3.

    /work/main/.venv/bin/python tests/benchmarks/bench_relay.py [--streams 400]
        [--seconds 20] [--servers websockets,channels,candidate,uvicorn]

Each server runs pinned to one core (`taskset -c 1`), the load generators on the other
(`taskset -c 0`). Every client sends a 1024-byte binary frame every 32 ms (real time
for 16 kHz 16-bit mono) and times each frame until its `{"partialTranscript": "N
bytes"}` comes back. Servers, in the same run and under the same load:

- websockets: a bare `websockets` relay that answers each frame with that JSON;
- channels: a plain Channels AsyncWebsocketConsumer under daphne doing the same
  (tests/benchmarks/plain_channels.py);
- candidate: our daphne + voiceproject.asgi with TRANSCRIPTION_ENGINE=echo, token auth
  and session records in a temporary, migrated SQLite database;
- uvicorn: the same application under `uvicorn --ws websockets` (a benchmark row only:
  not a supported server, see docs/performance.md §6).

Printed per server and stream count: latency p50/p99/max, frames lost, sessions closed
early or refused, the server's CPU % (from /proc/PID/stat) over the streaming window,
the load generators' CPU %, and KiB of RSS per idle connected session. The machine may
be shared, so compare a server with the baselines of the same run. `--streams
100,200,400,600` steps the count (use a smaller --seconds to stay short).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FRAME_BYTES = 1024
FRAME_SECONDS = 0.032  # 512 samples of 16 kHz 16-bit mono
PARTIAL = '{"partialTranscript": "'
GRACE_SECONDS = 3.0  # after the last frame, for replies still on their way
LAG_WARNING_MS = 20.0  # a load generator this late inflates the latencies
SERVER_CORE = "1"
LOADGEN_CORE = "0"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


# --- Load generator (a child process: --role loadgen) -------------------------


@dataclass
class ClientStats:
    sent: int = 0
    received: int = 0
    connected: bool = False
    closed_early: bool = False
    refused: bool = False
    latencies: list[float] = field(default_factory=list)


async def _client(url, index, count, ramp, go, stats, stop_sending, payload):
    """One stream: connect on the ramp, stream from `go` in its own phase, close."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    await asyncio.sleep(ramp * index / count)
    try:
        ws = await connect(
            url, compression=None, ping_interval=None, open_timeout=30, max_queue=None
        )
    except Exception:
        stats.refused = True
        return
    stats.connected = True
    sent_at: list[float] = []

    async def read():
        async for message in ws:
            now = loop.time()
            # '{"partialTranscript": "N bytes"}', read without a JSON parser (cheaper)
            if not message.startswith(PARTIAL):
                continue  # an error or a final: not a frame's answer
            frame = int(message[len(PARTIAL) :].split(" ", 1)[0]) // FRAME_BYTES - 1
            if 0 <= frame < len(sent_at):
                stats.received += 1
                stats.latencies.append((now - sent_at[frame]) * 1000)

    reader = asyncio.create_task(read())
    try:
        await go.wait()
        start = loop.time() + random.random() * FRAME_SECONDS
        k = 0
        while not stop_sending.is_set() and not reader.done():
            delay = start + k * FRAME_SECONDS - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            sent_at.append(loop.time())
            await ws.send(payload)
            stats.sent += 1
            k += 1
        deadline = loop.time() + GRACE_SECONDS
        while stats.received < stats.sent and loop.time() < deadline:
            if reader.done():
                break
            await asyncio.sleep(0.05)
        if reader.done():
            stats.closed_early = True
    except ConnectionClosed:
        stats.closed_early = True
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 5)


async def loadgen(args) -> None:
    """Connect, report READY on stdout, stream after GO on stdin, write results."""
    loop = asyncio.get_running_loop()
    go, stop_sending = asyncio.Event(), asyncio.Event()
    payload = os.urandom(FRAME_BYTES)
    url = args.url + os.environ.get("BENCH_TOKEN_QUERY", "")
    stats = [ClientStats() for _ in range(args.count)]
    tasks = [
        asyncio.create_task(
            _client(url, i, args.count, args.ramp, go, s, stop_sending, payload)
        )
        for i, s in enumerate(stats)
    ]
    connect_deadline = loop.time() + args.ramp + 30
    while loop.time() < connect_deadline:
        if sum(s.connected or s.refused for s in stats) == args.count:
            break
        await asyncio.sleep(0.1)
    print("READY", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    go.set()
    lags: list[float] = []

    async def probe():
        while not stop_sending.is_set():
            t = loop.time()
            await asyncio.sleep(0.005)
            lags.append((loop.time() - t - 0.005) * 1000)

    probe_task = asyncio.create_task(probe())
    cpu0 = os.times()
    await asyncio.sleep(args.seconds)
    cpu1 = os.times()
    stop_sending.set()
    await asyncio.wait([*tasks, probe_task], timeout=GRACE_SECONDS + 10)
    result = {
        "sent": sum(s.sent for s in stats),
        "received": sum(s.received for s in stats),
        "closed_early": sum(s.closed_early for s in stats),
        "refused": sum(s.refused for s in stats),
        "cpu_seconds": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "loop_lag_ms": sorted(lags)[int(len(lags) * 0.99)] if lags else 0.0,
        "loop_lag_max_ms": max(lags, default=0.0),
        "latencies": [round(x, 3) for s in stats for x in s.latencies],
    }
    # The run is over: a blocking write no longer delays anything.
    Path(args.out).write_text(json.dumps(result))  # noqa: ASYNC240


# --- The bare websockets relay (a child process: --role websockets-server) ----


async def websockets_server(args) -> None:
    from websockets.asyncio.server import serve

    async def relay(ws):
        received = 0
        async for message in ws:
            received += len(message)
            await ws.send(json.dumps({"partialTranscript": f"{received} bytes"}))

    async with serve(relay, "127.0.0.1", args.port, compression=None, max_size=2**20):
        await asyncio.Future()


# --- Orchestration ----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int, stat: str = "") -> float:
    """CPU seconds of a process, or of one of its threads (`stat`: its
    /proc/PID/task/TID/stat file)."""
    text = Path(stat or f"/proc/{pid}/stat").read_text()
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_BYTES


def wait_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log.read_text()[-3000:]}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port), timeout=0.5),
        ):
            return
        time.sleep(0.1)
    raise RuntimeError("server did not listen within 60 s")


def prepare_database(workdir: Path) -> tuple[dict[str, str], str]:
    """A migrated SQLite file and one API token for the candidate's clients."""
    env = {
        "DJANGO_SETTINGS_MODULE": "voiceproject.settings",
        "DJANGO_SECRET_KEY": "bench-relay-secret-key",
        "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
        "TRANSCRIPTION_ENGINE": "echo",
        "MAX_SESSIONS_PER_TOKEN": "100000",
        "MAX_SESSIONS_PER_USER": "100000",
        "MAX_SESSIONS_PER_PROCESS": "100000",
        "TRANSCRIPTION_IDLE_TIMEOUT": "600",
        "LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    import django
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    from accounts.services import api_token_create

    user = get_user_model().objects.create_user(username="bench")
    _, raw = api_token_create(user=user, name="bench")
    return env, raw


def server_command(kind: str, port: int) -> tuple[list[str], str]:
    """The command line and the WebSocket path of one server under test."""
    python = sys.executable
    if kind == "websockets":
        cmd = [python, __file__, "--role", "websockets-server", "--port", str(port)]
        return cmd, "/"
    if kind == "uvicorn":
        cmd = [
            *(python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)),
            *("--ws", "websockets", "--no-access-log", "--log-level", "warning"),
            "voiceproject.asgi:application",
        ]
        return cmd, "/?sampleRate=16000"
    app = {
        "channels": "tests.benchmarks.plain_channels:application",
        "candidate": "voiceproject.asgi:application",
    }[kind]
    cmd = [python, "-m", "daphne", "--bind", "127.0.0.1", "--port", str(port), app]
    return cmd, "/?sampleRate=16000"


async def warm_up(url: str, clients: int = 5, frames: int = 10) -> None:
    """A few short sessions, so lazy imports and caches do not count as sessions."""
    from websockets.asyncio.client import connect

    async def one():
        async with connect(url, compression=None, ping_interval=None) as ws:
            for _ in range(frames):
                await ws.send(bytes(FRAME_BYTES))
                await asyncio.wait_for(ws.recv(), 10)

    await asyncio.gather(*(one() for _ in range(clients)))


@dataclass
class Result:
    server: str
    streams: int
    p50: float = math.nan
    p99: float = math.nan
    max: float = math.nan
    lost: int = 0
    sent: int = 0
    closed: int = 0
    cpu: float = math.nan
    loadgen_cpu: float = math.nan
    loadgen_lag: float = 0.0  # p99 event-loop lag of the busiest load generator
    kib_per_session: float = math.nan


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def priority(args) -> list[str]:
    """A command prefix that runs a process at the --nice niceness."""
    return ["nice", "-n", str(args.nice)] if args.nice else []


def prioritize(pid: int, args) -> None:
    """Give the process's own session group the --nice niceness too.

    Other people's work on a shared machine delays a process by hundreds of ms. With
    sched_autogroup (Linux's default on desktops and many VMs) a process's niceness
    counts only within its session, so each process here starts a session and that
    session's autogroup gets the niceness, for the few minutes of a run.
    """
    if args.nice:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(str(args.nice))


@contextlib.contextmanager
def profiling(pid: int, seconds: float, args, name: str):
    """With --py-spy DIR: the server's stacks over the window, as collapsed stacks."""
    if not args.py_spy:
        yield
        return
    out = Path(args.py_spy) / f"{name}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    cmd = [str(spy), "record", "--pid", str(pid), "--duration", str(int(seconds))]
    cmd += ["--rate", "250", "--format", "raw", "--nonblocking", "--output", str(out)]
    process = subprocess.Popen(
        ["taskset", "-c", LOADGEN_CORE, *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        try:
            process.wait(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_one(kind: str, streams: int, args, env: dict[str, str], token: str) -> Result:
    port = free_port()
    # "candidate@DIR" runs the candidate from another checkout (e.g. with a change).
    kind, _, root = kind.partition("@")
    root = Path(root).resolve() if root else ROOT
    cmd, path = server_command(kind, port)
    workdir = Path(args.workdir)
    log = workdir / f"{kind}-{streams}-{port}.log"
    server_env = {**os.environ, **env, "PYTHONPATH": str(root)}
    if kind == "channels":
        server_env.pop("DJANGO_SETTINGS_MODULE", None)
    url = f"ws://127.0.0.1:{port}{path}"
    # The token goes to the clients by environment, never on a command line.
    token_query = f"&token={token}" if kind in {"candidate", "uvicorn"} else ""
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*priority(args), "taskset", "-c", SERVER_CORE, *cmd],
            cwd=root,
            env=server_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prioritize(server.pid, args)
    loadgens: list[tuple[subprocess.Popen, Path]] = []
    try:
        wait_listening(port, server, log)
        asyncio.run(warm_up(url + token_query))
        time.sleep(0.5)
        rss_before = rss_bytes(server.pid)
        procs = args.loadgen_procs or max(1, math.ceil(streams / 300))
        ramp = max(2.0, streams / args.connect_rate)
        for i in range(procs):
            count = streams // procs + (1 if i < streams % procs else 0)
            out_path = workdir / f"{kind}-{streams}-{i}.json"
            lg_cmd = [
                *priority(args),
                "taskset",
                "-c",
                LOADGEN_CORE,
                sys.executable,
                __file__,
                "--role",
                "loadgen",
                "--url",
                url,
                "--count",
                str(count),
                "--ramp",
                str(ramp),
                "--seconds",
                str(args.seconds),
                "--out",
                str(out_path),
            ]
            process = subprocess.Popen(
                lg_cmd,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "BENCH_TOKEN_QUERY": token_query},
                start_new_session=True,
            )
            prioritize(process.pid, args)
            loadgens.append((process, out_path))
        for process, _ in loadgens:
            if process.stdout.readline().strip() != "READY":
                raise RuntimeError(f"a load generator failed ({kind}, {streams})")
        time.sleep(1.0)
        rss_idle = rss_bytes(server.pid)
        for process, _ in loadgens:
            process.stdin.write("GO\n")
            process.stdin.flush()
        # The CPU window skips the first second (phases settling) and the tail.
        time.sleep(1.0)
        t0, c0 = time.monotonic(), cpu_seconds(server.pid)
        window = max(1.0, args.seconds - 1.5)
        with profiling(server.pid, window, args, f"{kind}-{streams}"):
            time.sleep(window)
        t1, c1 = time.monotonic(), cpu_seconds(server.pid)
        for process, _ in loadgens:
            process.wait(timeout=args.seconds + GRACE_SECONDS + 60)
        result = Result(server=kind, streams=streams)
        latencies: list[float] = []
        loadgen_cpu = 0.0
        for _, out_path in loadgens:
            data = json.loads(out_path.read_text())
            latencies.extend(data["latencies"])
            result.sent += data["sent"]
            result.lost += data["sent"] - data["received"]
            result.closed += data["closed_early"] + data["refused"]
            loadgen_cpu += data["cpu_seconds"]
            result.loadgen_lag = max(result.loadgen_lag, data["loop_lag_ms"])
            out_path.unlink()
        latencies.sort()
        result.p50 = percentile(latencies, 0.50)
        result.p99 = percentile(latencies, 0.99)
        result.max = latencies[-1] if latencies else math.nan
        result.cpu = 100 * (c1 - c0) / (t1 - t0)
        result.loadgen_cpu = 100 * loadgen_cpu / args.seconds
        result.kib_per_session = (rss_idle - rss_before) / 1024 / streams
        return result
    finally:
        for process, _ in loadgens:
            if process.poll() is None:
                process.kill()
                process.wait()
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def header(width: int) -> str:
    return (
        f"{'server':<{width}}{'streams':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'lost':>8}{'closed':>8}{'CPU %':>7}{'loadgen %':>11}{'KiB/session':>13}"
    )


def row(r: Result, width: int) -> str:
    return (
        f"{r.server:<{width}}{r.streams:>8}{r.p50:>9.1f}{r.p99:>9.1f}{r.max:>9.0f}"
        f"{r.lost:>8}{r.closed:>8}{r.cpu:>7.0f}{r.loadgen_cpu:>11.0f}"
        f"{r.kib_per_session:>13.1f}"
    )


def label(kind: str) -> str:
    name, _, root = kind.partition("@")
    return f"{name}@{Path(root).name}" if root else name


def orchestrate(args) -> None:
    counts = [int(x) for x in args.streams.split(",")]
    servers = args.servers.split(",")
    results: dict[tuple[str, int], list[Result]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        args.workdir = tmp
        env, token = prepare_database(Path(tmp))
        print(
            f"{len(counts) * len(servers) * args.rounds} runs of {args.seconds:g} s; "
            f"server on core {SERVER_CORE}, load on core {LOADGEN_CORE}",
            flush=True,
        )
        width = max(11, *(len(label(kind)) + 2 for kind in servers))
        print(header(width), flush=True)
        # Rounds interleave the servers, so that a slow minute of a shared machine
        # weighs on all of them alike; the summary takes each one's median.
        for streams in counts:
            for _ in range(args.rounds):
                for kind in servers:
                    try:
                        result = run_one(kind, streams, args, env, token)
                    except RuntimeError as exc:
                        print(
                            f"{label(kind):<{width}}{streams:>8}  failed: {exc}",
                            flush=True,
                        )
                        continue
                    result.server = label(kind)
                    results.setdefault((result.server, streams), []).append(result)
                    print(row(result, width), flush=True)
                    if result.loadgen_lag > LAG_WARNING_MS:
                        print(
                            f"{'':<{width}}  (load generator lagged: p99 "
                            f"{result.loadgen_lag:.0f} ms, in these latencies too)",
                            flush=True,
                        )
    if args.rounds > 1 or "websockets" in servers:
        summary(results, counts, [label(kind) for kind in servers], args, width)


def summary(results, counts, names, args, width: int) -> None:
    """Each server's median over the rounds, and its CPU against the bare relay's."""
    print(
        f"\nmedians of {args.rounds} round(s); ratio = CPU / bare websockets' CPU\n"
        f"{header(width)}{'ratio':>7}"
    )
    for streams in counts:
        bare = results.get(("websockets", streams))
        bare_cpu = statistics.median(r.cpu for r in bare) if bare else math.nan
        for name in names:
            runs = results.get((name, streams))
            if not runs:
                continue
            median = Result(server=name, streams=streams)
            for key in ("p50", "p99", "max", "cpu", "loadgen_cpu", "kib_per_session"):
                setattr(median, key, statistics.median(getattr(r, key) for r in runs))
            median.lost = round(statistics.median(r.lost for r in runs))
            median.closed = round(statistics.median(r.closed for r in runs))
            print(f"{row(median, width)}{median.cpu / bare_cpu:>7.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="400", help="count, or a list: 100,200")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--servers", default="websockets,channels,candidate,uvicorn")
    parser.add_argument(
        "--nice", type=int, default=-10, help="niceness of servers and load; 0: as is"
    )
    parser.add_argument(
        "--connect-rate", type=float, default=150, help="new sessions a second"
    )
    parser.add_argument("--py-spy", help="record the servers' stacks into this DIR")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs per server and count (medians)"
    )
    parser.add_argument("--loadgen-procs", type=int, default=0, help="0: 1 per 300")
    parser.add_argument("--role", default="orchestrate", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--ramp", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "loadgen":
        asyncio.run(loadgen(args))
    elif args.role == "websockets-server":
        asyncio.run(websockets_server(args))
    else:
        sys.path.insert(0, str(ROOT))
        orchestrate(args)


if __name__ == "__main__":
    main()
