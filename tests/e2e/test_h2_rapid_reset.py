"""HTTP/2 rapid reset (CVE-2023-44487) and streams cancelled before their turn.

A client that opens streams and resets them at once never exceeds the concurrent stream
limit, yet would make the proxy start a request upstream for each. Streams reset before
their exchange ran never reach the upstream; a connection where most streams are reset
early gets GOAWAY(ENHANCE_YOUR_CALM) and is closed; a client that cancels a minority of its
streams (gRPC deadlines, a browser leaving a page) keeps its connection."""

from __future__ import annotations

import asyncio
import logging

import pytest
from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated
from support.h2_origin import H2Client
from support.http_proxy import App, origin, start_proxy, stop

from ferryman.http.downstream_h2 import EARLY_RESET_ALLOWANCE

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"example.test")]


class CountingApp(App):
    """Counts the requests that got as far as choosing a peer (work done upstream)."""

    def __init__(self, peer) -> None:  # noqa: ANN001
        super().__init__(peer)
        self.chosen = 0

    async def upstream_peer(self, session):  # noqa: ANN001, ANN201
        self.chosen += 1
        return self.peer


def open_and_reset(client: H2Client, count: int) -> None:
    """HEADERS then RST_STREAM(CANCEL) for ``count`` new streams, in one write."""
    for _ in range(count):
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, GET, end_stream=True)
        client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
    client.flush()


async def goaway(client: H2Client) -> ConnectionTerminated | None:
    for _ in range(1000):
        for event in client.events:
            if isinstance(event, ConnectionTerminated):
                return event
        if not await client.pump():
            break
    return next((e for e in client.events if isinstance(e, ConnectionTerminated)), None)


async def test_rapid_reset_ends_the_connection_with_enhance_your_calm(caplog: pytest.LogCaptureFixture) -> None:
    server, peer = await origin()
    app = CountingApp(peer)
    proxy = await start_proxy(app)
    port = proxy.sock.getsockname()[1]
    client = await H2Client.open(port)
    try:
        with caplog.at_level(logging.INFO, logger="ferryman"):
            open_and_reset(client, 3 * EARLY_RESET_ALLOWANCE)
            event = await asyncio.wait_for(goaway(client), 10)
        assert event is not None and event.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert not await client.pump()  # and the connection is closed
        assert app.chosen == 0  # streams reset in the batch that opened them never went upstream
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "rapid reset" in warnings[0].getMessage()  # one line, not one per stream
        other = await H2Client.open(port)  # everyone else is served as before
        try:
            assert (await other.response(other.get("/")))["status"] == 200
        finally:
            await other.close()
    finally:
        await client.close()
        await stop(proxy, server)


async def test_a_client_cancelling_a_minority_of_its_streams_keeps_its_connection() -> None:
    server, peer = await origin()
    app = CountingApp(peer)
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        cancelled = 0
        for _ in range(3 * EARLY_RESET_ALLOWANCE // 2):
            assert (await client.response(client.get("/")))["status"] == 200
            assert (await client.response(client.get("/")))["status"] == 200
            open_and_reset(client, 1)
            cancelled += 1
        assert cancelled > EARLY_RESET_ALLOWANCE  # over the allowance, but a third of the streams
        response = await client.response(client.get("/"))
        assert response["status"] == 200 and response["reset"] is None
        assert not any(isinstance(e, ConnectionTerminated) for e in client.events)
    finally:
        await client.close()
        await stop(proxy, server)


async def test_a_stream_reset_before_its_turn_is_logged_at_info_and_never_goes_upstream(caplog: pytest.LogCaptureFixture) -> None:
    server, peer = await origin()
    app = CountingApp(peer)
    proxy = await start_proxy(app)
    client = await H2Client.open(proxy.sock.getsockname()[1])
    try:
        with caplog.at_level(logging.INFO, logger="ferryman"):
            open_and_reset(client, 5)
            response = await client.response(client.get("/"))
            assert response["status"] == 200
        assert app.chosen == 1  # only the stream that was not reset
        assert len(app.errors) == 6  # the logging hook saw all six
        gone = [r for r in caplog.records if "client closed the connection" in r.getMessage()]
        assert len(gone) == 5 and all(r.levelno == logging.INFO for r in gone)
    finally:
        await client.close()
        await stop(proxy, server)
