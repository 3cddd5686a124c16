"""`manage.py run_local --host H --port P [--receiver-port R]`: what `make run` serves.

daphne and, unless RECEIVER_HOST or RECEIVER_URL is set, the demo receiver beside it
(daphne pointed at it), stopped together. Each child runs in a process group of its
own, so that a signal reaches it once, from here, however it was sent: Ctrl-C (the
terminal signals its whole foreground group), SIGTERM (what make passes on), or a
kill of this process. The first SIGINT or SIGTERM is passed on as SIGINT (daphne
drains its sessions for DRAIN_SECONDS, the receiver stops); a second one kills
them. When one child exits by itself, the other is stopped too. This process exits
last, as its signal would have ended it (or with the child's exit status).

(A shell's background job would not do: a non-interactive shell starts it with
SIGINT ignored, and its EXIT trap does not run when the shell dies of SIGINT, so
Ctrl-C left the demo receiver running and the next `make run` found its port taken.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

# How long the children may take to stop beyond daphne's own drain.
STOP_SLACK_SECONDS = 15.0


class Command(BaseCommand):
    help = "Serve daphne and the demo receiver together until interrupted (make run)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument("--receiver-port", type=int, default=settings.RECEIVER_PORT)

    def handle(self, *args, host: str, port: int, receiver_port: int, **options):
        self.signals: list[int] = []
        self.children: list[subprocess.Popen] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        env = dict(os.environ)
        if not (settings.RECEIVER_HOST or settings.RECEIVER_URL):
            manage = str(settings.BASE_DIR / "manage.py")
            self._start([sys.executable, manage, "run_receiver", "--host", "127.0.0.1",
                         "--port", str(receiver_port)])  # fmt: skip
            env.update(RECEIVER_HOST="127.0.0.1", RECEIVER_PORT=str(receiver_port))
        daphne = self._start(
            [sys.executable, "-m", "daphne", "--bind", host, "--port", str(port),
             "voiceproject.asgi:application"],
            env,
        )  # fmt: skip
        while all(child.poll() is None for child in self.children):
            time.sleep(0.2)  # a signal's handler runs here
        self._stop_all()
        if self.signals:
            # Exit as the signal would have ended us, so that make and shells see it.
            signal.signal(self.signals[0], signal.SIG_DFL)
            os.kill(os.getpid(), self.signals[0])
        sys.exit(daphne.returncode or 0)

    def _start(self, args: list[str], env: dict[str, str] | None = None):
        # Our own programs (this interpreter), no shell.
        child = subprocess.Popen(args, env=env, process_group=0)  # noqa: S603
        self.children.append(child)
        return child

    def _on_signal(self, signum: int, frame) -> None:
        self.signals.append(signum)
        self._signal_children(
            signal.SIGINT if len(self.signals) == 1 else signal.SIGKILL
        )

    def _signal_children(self, signum: int) -> None:
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def _stop_all(self) -> None:
        """Stop the children still running (one exited, or a signal came), bounded."""
        if not self.signals:
            self._signal_children(signal.SIGINT)
        deadline = time.monotonic() + settings.DRAIN_SECONDS + STOP_SLACK_SECONDS
        for child in self.children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
