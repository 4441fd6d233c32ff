"""One client process of ``bench/fanout.py``: many subscriptions to one execution.

Kept apart from the benchmark, with only ``websockets`` to import, so that
a client process starts in a fraction of a second and its start-up is not
counted in the time to subscribe.  Run by ``bench/fanout.py`` as
``python -m bench.fanout_client --url URL --id ID --count N``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

STATUS_KINDS = ["QUEUED", "RUNNING", "LAB_STARTING"]

WATCH = """
subscription Watch($id: ID!, $kinds: [EventKind!]) {
  executionStatus(id: $id, kinds: $kinds) { sequence kind status }
}
"""

TERMINAL = frozenset({"SUCCEEDED", "FAILED", "CANCELLED", "TIMED_OUT"})

SUBSCRIBE_SECONDS = 600.0
"""How long the subscriptions may take to open."""
FINISH_SECONDS = 300.0
"""How long after they opened every subscription must have ended."""
OPENING_AT_ONCE = 64
"""Websocket handshakes in flight at once (the server's listen backlog)."""


class ClientError(Exception):
    """A subscription failed or ended without its terminal event."""


class Watchers:
    """The subscriptions of this process and what they received."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ws_url = args.url.replace("http", "ws", 1) + "/graphql"
        self.ends: list[float] = []
        self.first = asyncio.Event()
        self.started = 0
        self.opening = asyncio.Semaphore(OPENING_AT_ONCE)

    def subscribe(self, number: int) -> str:
        variables = {"id": self.args.id, "kinds": STATUS_KINDS}
        return json.dumps(
            {
                "id": str(number),
                "type": "subscribe",
                "payload": {"query": WATCH, "variables": variables},
            }
        )

    async def connection(self, count: int, offset: int) -> None:
        """One websocket carrying ``count`` subscriptions, until all complete."""
        async with self.opening:
            ws = await connect(
                self.ws_url,
                subprotocols=[Subprotocol("graphql-transport-ws")],
                open_timeout=60,
                ping_interval=None,
                max_size=None,
            )
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            ack = json.loads(await ws.recv())
            if ack.get("type") != "connection_ack":
                raise ClientError(f"no connection_ack: {ack}")
            for n in range(count):
                await ws.send(self.subscribe(offset + n))
        async with ws:
            seen: set[str] = set()
            done = 0
            while done < count:
                message = json.loads(await ws.recv())
                if message.get("type") == "complete":
                    done += 1
                    continue
                event = (message.get("payload") or {}).get("data") or {}
                event = event.get("executionStatus")
                if message.get("type") != "next" or event is None:
                    raise ClientError(f"subscription error: {message}")
                if message["id"] not in seen:
                    seen.add(message["id"])
                    self.started += 1
                    if self.started == self.args.count:
                        self.first.set()
                if event["status"] in TERMINAL:
                    self.ends.append(time.monotonic())


async def client_main(args: argparse.Namespace) -> None:
    """Open the subscriptions, report, stamp the ends.

    Writes ``{"ready": n}`` on stdout once all ``--count`` subscriptions
    have their first event, then ``{"ends": [...]}`` (monotonic seconds of
    each terminal event) once all have ended.
    """
    watchers = Watchers(args)
    per = args.per_connection
    sizes = [per] * (args.count // per)
    if args.count % per:
        sizes.append(args.count % per)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    async with asyncio.timeout(SUBSCRIBE_SECONDS + FINISH_SECONDS):
        tasks = [
            asyncio.create_task(watchers.connection(size, offset))
            for size, offset in zip(sizes, offsets, strict=True)
        ]
        waiting = asyncio.create_task(watchers.first.wait())
        try:
            await asyncio.wait([waiting, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done():
                    task.result()  # an error, or a watch that ended early
            print(json.dumps({"ready": watchers.started}), flush=True)
            await asyncio.gather(*tasks)
        finally:
            waiting.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(waiting, *tasks, return_exceptions=True)
    print(json.dumps({"ends": watchers.ends}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--per-connection", type=int, default=1)
    asyncio.run(client_main(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
