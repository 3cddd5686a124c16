"""`manage.py run_worker [--id NAME] [--concurrency N]`: deliver receiver batches.

Run one or several beside daphne when the server does not run the worker itself
(REDIS_URL set, or VOICE_WORKER_IN_PROCESS=false). SIGTERM or SIGINT stops it in
order: nothing more is claimed, deliveries under way get DRAIN_SECONDS to finish and
the rest are released (due again at once, for another worker; the attempt does not
count). A second signal releases at once.
"""

import asyncio
import contextlib
import signal

from django.conf import settings
from django.core.management.base import BaseCommand

from transcription.voice_loop.worker import BatchWorker


class Command(BaseCommand):
    help = "Deliver due receiver batches and push the spoken replies until stopped."

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--id", dest="worker_id", default="", help="worker name (default host:pid)"
        )
        parser.add_argument("--concurrency", type=int, default=8)

    def handle(self, *args, worker_id: str, concurrency: int, **options) -> None:
        asyncio.run(self._run(BatchWorker(worker_id, concurrency=concurrency)))
        self.stdout.write("worker stopped")

    async def _run(self, worker: BatchWorker) -> None:
        task = asyncio.current_task()
        if task is None:  # asyncio.run() runs this in a task
            raise RuntimeError("run_worker runs in an asyncio task")

        def stop() -> None:
            if worker.stopping:
                task.cancel()  # asked twice: release what is left now
            else:
                worker.stop(settings.DRAIN_SECONDS)

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        self.stdout.write(f"worker {worker.worker_id} running")
        self.stdout.flush()
        with contextlib.suppress(asyncio.CancelledError):
            await worker.run()
