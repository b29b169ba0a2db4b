#!/usr/bin/env python3
"""The least a Python TLS server spends per connection on this interpreter: a benchmark
tool, not a product.

uvloop's ``create_server(ssl=...)`` with Python's ``ssl`` module (``floor_proxy.py``'s
context: TLS 1.2 and 1.3, the module's default ciphers, ALPN ``http/1.1``), httptools to find where each request ends,
and a fixed answer: ``200`` with the benchmark's 100-byte ``/small`` body, for any request;
``Connection: close`` (or HTTP/1.0) closes after it. No proxying at all, so against nginx
answering the same way over TLS (``tls.py --with-nginx-bare``) it shows what the TLS
handshake and record layer alone cost Python here.

Usage::

    python benchmarks/tls_bare.py --listen 127.0.0.1:8443 --cert cert.pem --key key.pem
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMALL_BODY
from floor_proxy import host_port, tls_context  # the floor's TLS settings

BODY = SMALL_BODY.encode()
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n" % len(BODY)
KEEP = ANSWER + b"\r\n" + BODY
CLOSE = ANSWER + b"Connection: close\r\n\r\n" + BODY


class Answer(asyncio.Protocol):
    """One client connection: every complete request gets the fixed answer."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        if self.parser.should_keep_alive():
            self.transport.write(KEEP)
        else:
            self.transport.write(CLOSE)
            self.transport.close()


async def serve(host: str, port: int, tls: ssl.SSLContext) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Answer, host, port, ssl=tls, backlog=4096)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set_result, None)
    print(f"bare TLS server on https://{host}:{port}", flush=True)
    async with server:
        await stop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", type=host_port, required=True, help="HOST:PORT to accept on")
    p.add_argument("--cert", required=True, metavar="FILE", help="PEM certificate chain")
    p.add_argument("--key", required=True, metavar="FILE", help="PEM private key of --cert")
    args = p.parse_args(argv)
    try:
        tls = tls_context(args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        p.error(f"--cert {args.cert} / --key {args.key}: {exc}")
    host, port = args.listen
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(host, port, tls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
