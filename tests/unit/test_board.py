"""The metrics board: worker processes (real forks) publish into shared memory, a reader
merges; totals stay monotonic across a SIGKILLed worker and its successor; a reader racing
a writer never sees a torn snapshot; an oversized snapshot never spills out of its slot."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable

import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from ferryman.http.session import Digest
from ferryman.observability.board import (
    OK,
    STALE,
    STRIPPED,
    Board,
    MetricsPublisher,
    collect,
)
from ferryman.observability.metrics import Registry, merge, render

DEADLINE = 20.0
REQUESTS = "ferryman_http_requests_total"
REFUSED = ("ferryman_ratelimit_rejections_total", ("rl",))
ACTIVE = ("ferryman_connections_active", ("web",))


# processes -----------------------------------------------------------------------------------------
def fork(child: Callable[[], None]) -> int:
    """Run ``child`` in a forked process that always ends with os._exit (1 if it raised)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            child()
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def reap(pid: int, timeout: float = DEADLINE) -> int:
    """Wait (bounded) for ``pid``; returns its wait status. Kills it if it overstays."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} did not finish within {timeout}s")
        time.sleep(0.005)


def exited_ok(pid: int) -> None:
    status = reap(pid)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed with wait status {status}"


def wait_byte(fd: int, timeout: float = DEADLINE) -> bytes:
    """One byte from a pipe, bounded."""
    os.set_blocking(fd, False)
    deadline = time.monotonic() + timeout
    while True:
        try:
            data = os.read(fd, 1)
        except BlockingIOError:
            data = None
        if data is not None:
            return data
        if time.monotonic() > deadline:
            raise AssertionError("no word from the child")
        time.sleep(0.002)


def block_forever(fd: int) -> None:
    """In a child: wait to be killed (the read returns only if the parent dies first)."""
    os.read(fd, 1)


class Finished:
    """The facts of a finished request that ``observe`` reads (what a Session carries)."""

    __slots__ = ("response_status", "bytes_sent", "body_bytes_received", "digest")

    def __init__(self, status: int) -> None:
        self.response_status, self.bytes_sent, self.body_bytes_received = status, 10, 0
        self.digest = Digest(0.0)
        self.digest.end = 0.002


def count(registry: Registry, requests: int, refused: int = 0, active: int = 0) -> None:
    metrics = registry.request("web", "api", "app")
    for _ in range(requests):
        metrics.observe(Finished(200), None)
    registry.counter("ferryman_ratelimit_rejections_total", "rl").inc(refused)
    registry.collect("listeners", lambda: [(ACTIVE[0], ACTIVE[1], active)])


def ok_requests(snapshot: dict) -> int:
    return snapshot.get((REQUESTS, ("web", "api", "app", "2xx")), 0)


@pytest.fixture
def board():
    b = Board.create(3, slot_size=64 * 1024)
    yield b
    b.close()


# one process ---------------------------------------------------------------------------------------
def test_publish_and_read_back(board: Board) -> None:
    assert board.read(0) is None and board.read_all() == [None, None, None]
    with pytest.raises(IndexError, match="worker 3 is not one of the board's 3"):
        board.read(3)
    registry = Registry()
    count(registry, 4, refused=2, active=7)
    writer = board.writer(1)
    first = board.read(1)
    assert first is not None and first.generation == 1 and first.snapshot == {} and first.pid == os.getpid()
    assert writer.publish(registry.snapshot()) == OK
    read = board.read(1)
    assert read is not None and read.version == first.version + 1 and read.flags == OK
    assert ok_requests(read.snapshot) == 4 and read.snapshot[REFUSED] == 2 and read.snapshot[ACTIVE] == 7
    assert read.snapshot == registry.snapshot()
    assert board.read_all()[0] is None and board.read_all()[2] is None


def test_bad_boards_are_refused() -> None:
    with pytest.raises(ValueError, match="workers must be >= 1"):
        Board.create(0)
    with pytest.raises(ValueError, match="slot_size must be >= 64"):
        Board.create(1, slot_size=10)


def test_a_slot_taken_over_in_a_live_process_stops_the_old_writer(board: Board, caplog: pytest.LogCaptureFixture) -> None:
    old = board.writer(0)
    new = board.writer(0)
    registry = Registry()
    count(registry, 1)
    assert new.publish(registry.snapshot()) == OK
    with caplog.at_level(logging.ERROR, logger="ferryman.observability.board"):
        assert old.publish({}) == STALE
        assert old.publish({}) == STALE
    assert sum("taken over" in r.getMessage() for r in caplog.records) == 1
    assert ok_requests(board.read(0).snapshot) == 1  # type: ignore[union-attr]


# several processes ---------------------------------------------------------------------------------
def test_workers_publish_and_the_reader_merges(board: Board) -> None:
    pids = []
    for index in range(3):
        def child(index: int = index) -> None:
            registry = Registry()
            count(registry, 10 * (index + 1), refused=index, active=index + 1)
            registry.reloaded(index != 1, when=100.0 + index)
            board.writer(index).publish(registry.snapshot())

        pids.append(fork(child))
    for pid in pids:
        exited_ok(pid)
    merged = merge(board.read_all())
    assert ok_requests(merged) == 60
    assert merged[REFUSED] == 0 + 1 + 2
    assert merged[ACTIVE] == 1 + 2 + 3
    assert merged[("ferryman_reloads_total", ("ok", "0"))] == 1
    assert merged[("ferryman_reloads_total", ("error", "1"))] == 1
    assert merged[("ferryman_reload_last_success", ("1",))] == 0
    duration = merged[("ferryman_http_request_duration_seconds", ("web", "api", "app"))]
    assert sum(duration[:-1]) == 60
    # collect(): the workers have exited, so their gauges are no longer true and are left out
    collected = collect(board)
    assert ACTIVE not in collected and ok_requests(collected) == 60
    assert {collected[("ferryman_worker_starts_total", (str(i),))] for i in range(3)} == {1}
    text = render(collected)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["ferryman_worker_starts"].type == "counter"
    assert families["ferryman_metrics_truncated"].samples[0].value == 0


def test_a_killed_worker_and_its_successor_keep_totals_monotonic(board: Board) -> None:
    seen: list[int] = []

    def observe() -> dict:
        snapshot = collect(board)
        seen.append(ok_requests(snapshot))
        assert seen == sorted(seen), f"a total went down: {seen}"
        return snapshot

    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    try:
        def first() -> None:
            registry = Registry()
            writer = board.writer(0)
            for i in range(5):
                count(registry, 1, refused=1, active=9)
                writer.publish(registry.snapshot())
            os.write(ready_w, b"1")
            block_forever(hold_r)

        pid = fork(first)
        wait_byte(ready_r)
        snapshot = observe()
        assert seen[-1] == 5 and snapshot[ACTIVE] == 9 and snapshot[REFUSED] == 5  # alive: its gauges count
        os.kill(pid, signal.SIGKILL)
        status = reap(pid)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        snapshot = observe()
        assert seen[-1] == 5 and ACTIVE not in snapshot  # dead: counters stay, gauges go

        def second() -> None:
            registry = Registry()
            writer = board.writer(0)  # takes the slot over, carrying the 5
            os.write(ready_w, b"2")
            wait_byte(hold_r)
            count(registry, 3, refused=1, active=2)
            writer.publish(registry.snapshot())
            os.write(ready_w, b"3")
            block_forever(hold_r)

        pid = fork(second)
        assert wait_byte(ready_r) == b"2"
        snapshot = observe()
        assert seen[-1] == 5 and ACTIVE not in snapshot  # the successor has published its base only
        assert snapshot[("ferryman_worker_starts_total", ("0",))] == 2
        os.write(hold_w, b"go")
        assert wait_byte(ready_r) == b"3"
        snapshot = observe()
        assert seen[-1] == 8 and snapshot[REFUSED] == 6 and snapshot[ACTIVE] == 2
        duration = snapshot[("ferryman_http_request_duration_seconds", ("web", "api", "app"))]
        assert sum(duration[:-1]) == 8  # histograms are carried too
        os.kill(pid, signal.SIGKILL)
        reap(pid)
        observe()
    finally:
        for fd in (ready_r, ready_w, hold_r, hold_w):
            os.close(fd)


def test_a_worker_killed_while_publishing_leaves_a_whole_snapshot(board: Board) -> None:
    """SIGKILL lands at an arbitrary point of a tight publish loop: the reader, and the
    successor's carried base, still see a complete snapshot no older than one seen before."""
    ready_r, ready_w = os.pipe()
    try:
        def publisher() -> None:
            registry = Registry()
            writer = board.writer(2)
            refused = registry.counter("ferryman_ratelimit_rejections_total", "rl")
            metrics = registry.request("web", "api", "app")
            for i in range(2_000_000):  # bounded; killed long before the end
                refused.value += 1
                metrics.observe(Finished(200), None)
                writer.publish(registry.snapshot())
                if i == 50:
                    os.write(ready_w, b"1")

        pid = fork(publisher)
        wait_byte(ready_r)
        before = board.read(2)
        assert before is not None
        deadline = time.monotonic() + DEADLINE
        while board.read(2).version < before.version + 100:  # type: ignore[union-attr]  # publishing on: kill it mid-loop
            assert time.monotonic() < deadline, "the child stopped publishing"
        os.kill(pid, signal.SIGKILL)
        reap(pid)
        last = board.read(2)
        assert last is not None and last.version >= before.version
        value = last.snapshot[REFUSED]
        assert value >= before.snapshot[REFUSED] and ok_requests(last.snapshot) == value  # whole: both counts agree
        registry = Registry()
        successor = board.writer(2)
        assert successor.base[REFUSED] == value
        count(registry, 2, refused=2)
        successor.publish(registry.snapshot())
        after = board.read(2)
        assert after is not None and after.snapshot[REFUSED] == value + 2 and ok_requests(after.snapshot) == value + 2
        assert after.generation == 2
    finally:
        os.close(ready_r)
        os.close(ready_w)


def test_a_writer_dead_mid_write_is_skipped(board: Board) -> None:
    """White box: the newer buffer's sequence number left odd and its payload scribbled."""
    writer = board.writer(0)
    registry = Registry()
    count(registry, 1)
    writer.publish(registry.snapshot())
    count(registry, 1)
    writer.publish(registry.snapshot())
    latest = board.read(0)
    assert latest is not None and ok_requests(latest.snapshot) == 2
    off = board._buffer(0, (latest.version + 1) & 1)  # where the next publication goes
    board._words[off // 8] += 1  # a write began ...
    board._map[off + 48: off + 148] = b"\xff" * 100  # ... and died half way
    read = board.read(0)
    assert read is not None and read.version == latest.version and ok_requests(read.snapshot) == 2
    successor = board.writer(0)
    assert ok_requests(successor.base) == 2
    fresh = Registry()
    count(fresh, 5)
    successor.publish(fresh.snapshot())
    assert ok_requests(board.read(0).snapshot) == 7  # type: ignore[union-attr]


def test_a_reader_racing_a_writer_never_sees_a_torn_snapshot() -> None:
    """Every value of publication i is i; a torn read would mix two publications."""
    board = Board.create(1, slot_size=256 * 1024)
    keys = [("ferryman_ratelimit_rejections_total", (f"filter-{n}",)) for n in range(2000)]
    histogram = ("ferryman_http_request_duration_seconds", ("l", "r", "u"))

    def writer() -> None:
        w = board.writer(0)
        for i in range(1, 2001):
            snapshot: dict = {key: i for key in keys}
            snapshot[histogram] = [i] * 17
            w.publish(snapshot)

    try:
        pid = fork(writer)
        reads = versions = 0
        last_value = 0
        deadline = time.monotonic() + DEADLINE
        for _ in range(1_000_000):  # bounded; ends when the writer is done
            done, status = os.waitpid(pid, os.WNOHANG)
            read = board.read(0)
            if read is not None and read.snapshot:
                first = read.snapshot[keys[0]]
                assert all(v == first for k, v in read.snapshot.items() if k != histogram), "torn snapshot"
                assert read.snapshot[histogram] == [first] * 17, "torn histogram"
                assert len(read.snapshot) == len(keys) + 1
                assert first >= last_value, "went back in time"
                assert read.version >= versions
                last_value, versions = first, read.version
                reads += 1
            if done:
                assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
                break
            assert time.monotonic() < deadline, "the writer did not finish"
        else:
            raise AssertionError("reader loop bound reached")
        final = board.read(0)
        assert final is not None and final.snapshot[keys[0]] == 2000 and reads > 0
    finally:
        board.close()


# oversized snapshots -------------------------------------------------------------------------------
def test_an_oversized_snapshot_is_stripped_or_kept_out_never_spilled(caplog: pytest.LogCaptureFixture) -> None:
    board = Board.create(2, slot_size=2048)  # about two routes' worth with histograms, five without
    try:
        neighbour = board.writer(1)
        theirs = {REFUSED: 42, ("ferryman_http_request_duration_seconds", ("a", "b", "c")): [1] * 17}
        neighbour.publish(theirs)
        before = bytes(board._map[board._slot(1): board._slot(1) + board.slot_bytes])
        registry = Registry()
        writer = board.writer(0)
        registry.request("web", "r0", "u")  # fits, with histograms
        assert writer.publish(registry.snapshot()) == OK
        for n in range(1, 3):  # histograms no longer fit; the counters do
            registry.request("web", f"r{n}", "u").observe(Finished(200), None)
        with caplog.at_level(logging.WARNING, logger="ferryman.observability.board"):
            assert writer.publish(registry.snapshot()) == STRIPPED
            read = board.read(0)
            assert read is not None and read.flags == STRIPPED and read.needed > board.capacity
            assert not any(isinstance(v, list) for v in read.snapshot.values())
            assert sum(ok_requests_of(read.snapshot, f"r{n}") for n in range(1, 3)) == 2
            stripped = read.snapshot
            for n in range(3, 20):  # now not even the counters fit
                registry.request("web", f"r{n}", "u").observe(Finished(200), None)
            assert writer.publish(registry.snapshot()) == STALE
            assert writer.publish(registry.snapshot()) == STALE
        read = board.read(0)
        assert read is not None and read.flags == STALE and read.snapshot == stripped  # the last one that fitted
        warnings = [r.getMessage() for r in caplog.records if "over the slot" in r.getMessage()]
        assert len(warnings) == 1 and "raise the slot size" in warnings[0]
        assert bytes(board._map[board._slot(1): board._slot(1) + board.slot_bytes]) == before  # the neighbour is intact
        assert board.read(1).snapshot == theirs  # type: ignore[union-attr]
        collected = collect(board, now=read.published_at)
        assert collected[("ferryman_metrics_truncated", ("0",))] == STALE
        assert collected[("ferryman_metrics_snapshot_bytes", ("0",))] > board.capacity
        assert collected[("ferryman_metrics_truncated", ("1",))] == OK
    finally:
        board.close()


def ok_requests_of(snapshot: dict, route: str) -> int:
    return snapshot.get((REQUESTS, ("web", route, "u", "2xx")), 0)


# the background publisher --------------------------------------------------------------------------
def run(coro) -> None:  # type: ignore[no-untyped-def]
    async def bounded() -> None:
        async with asyncio.timeout(DEADLINE):
            await coro

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(bounded())
    gc.collect()


async def poll(predicate: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


def test_publisher_publishes_periodically_and_on_stop(board: Board) -> None:
    async def main() -> None:
        registry = Registry()
        publisher = MetricsPublisher(board, 1, registry, interval=0.02)
        publisher.start()
        publisher.start()  # idempotent
        assert publisher.running and board.read(1) is not None  # published at once
        count(registry, 3, active=4)
        await poll(lambda: ok_requests(board.read(1).snapshot) == 3, "a periodic publication")  # type: ignore[union-attr]
        count(registry, 2, active=4)
        await publisher.stop()
        assert not publisher.running
        assert ok_requests(board.read(1).snapshot) == 5  # type: ignore[union-attr]  # the last counts went out on stop
        await publisher.stop()  # idempotent

    run(main())


def test_exposition_publishes_its_own_counts_and_merges_the_others(board: Board) -> None:
    pid = fork(lambda: _publish_once(board, 0, 10))
    exited_ok(pid)
    registry = Registry()
    publisher = MetricsPublisher(board, 2, registry)
    count(registry, 1, active=3)  # not published yet: answering publishes it first
    text = publisher.exposition()
    assert ok_requests(board.read(2).snapshot) == 1  # type: ignore[union-attr]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    ok = (REQUESTS, (("listener", "web"), ("route", "api"), ("status", "2xx"), ("upstream", "app")))
    assert samples[ok] == 11
    assert samples[("ferryman_connections_active", (("listener", "web"),))] == 3  # worker 0 is gone; worker 2 is us
    assert samples[("ferryman_worker_starts_total", (("worker", "0"),))] == 1
    assert samples[("ferryman_worker_starts_total", (("worker", "2"),))] == 1
    assert ("ferryman_worker_starts_total", (("worker", "1"),)) not in samples


def test_totals_never_drop_whichever_worker_answers(board: Board) -> None:
    """Scrapes land on any worker: one answering with counts it has not published would
    let the next answer, from another worker, show a lower total (a counter reset)."""
    registries = [Registry(), Registry()]
    publishers = [MetricsPublisher(board, i, registries[i], interval=3600) for i in range(2)]
    totals = []
    for step in range(10):
        worker = step % 2
        count(registries[worker], 10 if worker == 0 else 1)  # counted between two periodic publications
        text = publishers[worker].exposition()
        value = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                    if s.name == REQUESTS and s.labels["status"] == "2xx")
        totals.append(value)
    assert totals == sorted(totals), totals
    assert totals[-1] == 5 * 10 + 5 * 1


def test_exposition_without_a_board_is_this_process_alone() -> None:
    registry = Registry()
    count(registry, 2)
    registry.reloaded(True, when=5.0)
    publisher = MetricsPublisher(None, 0, registry)
    publisher.start()  # nothing to publish to: no task
    assert not publisher.running
    text = publisher.exposition()
    assert 'ferryman_reloads_total{result="ok",worker="0"} 1' in text
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"ferryman_http_requests", "ferryman_reloads", "ferryman_reload_last_success"} <= families
    assert "ferryman_worker_starts" not in families
    with pytest.raises(ValueError, match="interval must be > 0"):
        MetricsPublisher(None, 0, registry, interval=0)


def _publish_once(board: Board, index: int, requests: int) -> None:
    registry = Registry()
    count(registry, requests, active=100)
    board.writer(index).publish(registry.snapshot())


def test_a_first_write_that_died_half_way_leaves_no_snapshot(board: Board) -> None:
    """The only written buffer left odd: nothing to read (at once, no spinning), and a
    successor takes the slot over from scratch."""
    off = board._buffer(0, 1)
    board._words[off // 8] = 1
    board._map[off + 48: off + 64] = b"\xff" * 16
    assert board.read(0) is None
    successor = board.writer(0)
    assert successor.base == {}
    registry = Registry()
    count(registry, 3)
    successor.publish(registry.snapshot())
    read = board.read(0)
    assert read is not None and ok_requests(read.snapshot) == 3 and read.generation == 1
