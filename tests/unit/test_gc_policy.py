"""The collector's young-generation threshold while serving (server.relax_gc)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from ferryman.server import Server
from ferryman.server.server import GC_DEFAULT_THRESHOLD, GC_SERVING_THRESHOLD, relax_gc


@pytest.fixture
def threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def test_the_default_threshold_is_raised_and_the_older_generations_kept(threshold: None) -> None:
    gc.set_threshold(GC_DEFAULT_THRESHOLD, 7, 3)
    assert relax_gc() is True
    assert gc.get_threshold() == (GC_SERVING_THRESHOLD, 7, 3)


def test_a_threshold_the_application_chose_is_kept(threshold: None) -> None:
    gc.set_threshold(1234, 10, 10)
    assert relax_gc() is False
    assert gc.get_threshold() == (1234, 10, 10)


def test_a_serving_server_runs_with_the_relaxed_threshold(threshold: None) -> None:
    gc.set_threshold(GC_DEFAULT_THRESHOLD, 10, 10)
    server = Server(grace_period=0.1)
    seen: list[tuple[int, int, int]] = []

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        while server._stop is None:  # started its services
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        seen.append(gc.get_threshold())
        server.shutdown()
        await asyncio.wait_for(serving, 5)

    asyncio.run(main())
    assert seen == [(GC_SERVING_THRESHOLD, 10, 10)]
