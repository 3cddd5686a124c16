"""`manage.py run_receiver [--host H] [--port 5001]`: the built-in demo receiver."""

import asyncio

from django.core.management.base import BaseCommand

from transcription.voice_loop.demo_receiver import DemoReceiver


class Command(BaseCommand):
    help = "Serve the demo receiver (docs/protocol.md §10, TCP) until interrupted."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=5001)

    def handle(self, *args, host: str, port: int, **options) -> None:
        try:
            asyncio.run(self._serve(host, port))
        except KeyboardInterrupt:
            self.stdout.write("demo receiver stopped")

    async def _serve(self, host: str, port: int) -> None:
        server = await DemoReceiver().serve(host, port)
        bound = server.sockets[0].getsockname()
        self.stdout.write(f"demo receiver listening on {bound[0]}:{bound[1]}")
        self.stdout.flush()
        async with server:
            await server.serve_forever()
