"""Two HTTP/2 endpoints wired back to back in memory, for the sans-IO tests."""

from __future__ import annotations

from typing import Any

from ferryman.protocol.h2 import H2Endpoint


def shuttle(server: H2Endpoint, client: Any, s_events: list, c_events: list, rounds: int = 50) -> None:
    """Move bytes both ways until both are quiet; ``client`` is an :class:`H2Endpoint` or
    h2's own ``H2Connection`` (the reference). Fails if they are still talking after ``rounds``."""
    receive = client.receive if isinstance(client, H2Endpoint) else client.receive_data
    for _ in range(rounds):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if not to_server and not to_client:
            return
        if to_server:
            s_events += server.receive(to_server)
        if to_client:
            c_events += receive(to_client)
    raise AssertionError("endpoints kept talking")
