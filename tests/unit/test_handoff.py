"""Socket handoff over Unix sockets: fd passing, listener handoff between processes (binary
upgrade), and least_conn dispatch of accepted connections to workers.

Real sockets throughout; the listener handoff and one dispatch test cross into child
processes (``python -c``), the rest run sender and receiver on one loop.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest
import uvloop

from ferryman.net.balance import BalancedAcceptor, ConnectionDispatcher, ConnectionReceiver
from ferryman.net.handoff import (
    MAX_FDS_PER_MESSAGE,
    HandoffError,
    ListenerHandoff,
    recv_fds,
    recv_fds_async,
    send_fds,
    send_fds_async,
)

LOCAL = "127.0.0.1"
WAIT = 10.0  # bound on any single wait in these tests
Run = Callable[[Callable[[], Awaitable[Any]]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Run a test coroutine on the parametrized loop, bounded in time."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop

    def runner(main: Callable[[], Awaitable[Any]]) -> Any:
        async def bounded() -> Any:
            async with asyncio.timeout(30):
                return await main()

        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(bounded())

    return runner


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def seqpacket_pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a, b


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` on the loop until true, bounded by WAIT."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@contextmanager
def tcp_listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind((LOCAL, 0))
    sock.listen(128)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def connected_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """(client, accepted server side) over loopback TCP."""
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setblocking(False)
    await loop.sock_connect(client, listener.getsockname())
    server, _ = await loop.sock_accept(listener)
    return client, server


async def recv_some(sock: socket.socket, size: int = 4096) -> bytes:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(WAIT):
        return await loop.sock_recv(sock, size)


# ------------------------------------------------------------------------ fd passing


def test_fds_arrive_close_on_exec_and_refer_to_the_same_files() -> None:
    a, b = seqpacket_pair()
    r, w = os.pipe()
    with a, b:
        send_fds(a, [r, w], b"pipe")
        payload, fds = recv_fds(b, 4)
        assert payload == b"pipe" and len(fds) == 2 and not set(fds) & {r, w}
        assert not any(os.get_inheritable(fd) for fd in fds)
        os.write(fds[1], b"through the copy")
        assert os.read(r, 64) == b"through the copy"
        for fd in (r, w, *fds):
            os.close(fd)


def test_truncated_fds_are_closed_and_reported() -> None:
    a, b = seqpacket_pair()
    with a, b:
        baseline = open_fds()
        sent = [socket.socket() for _ in range(10)]
        send_fds(a, [s.fileno() for s in sent], b"ten")
        for s in sent:
            s.close()
        with pytest.raises(HandoffError, match="truncated message .fds: room for 2 fds") as info:
            recv_fds(b, 2)
        assert info.value.errno == errno.EMSGSIZE
        assert open_fds() == baseline  # the two that fitted were closed, the kernel dropped the rest


def test_truncated_payload_is_reported_and_its_fds_closed() -> None:
    a, b = seqpacket_pair()
    with a, b, socket.socket() as s:
        baseline = open_fds()
        send_fds(a, [s.fileno()], b"x" * 100)
        with pytest.raises(HandoffError, match="truncated message .bytes"):
            recv_fds(b, 4, bufsize=10)
        assert open_fds() == baseline


def test_eof_and_argument_checks() -> None:
    a, b = seqpacket_pair()
    with b:
        with a:
            with pytest.raises(ValueError, match="must not be empty"):
                send_fds(a, [], b"")
            with pytest.raises(ValueError, match=f"at most {MAX_FDS_PER_MESSAGE}"):
                send_fds(a, [a.fileno()] * (MAX_FDS_PER_MESSAGE + 1), b"x")
        assert recv_fds(b, 1) == (b"", [])


def test_stream_partial_send_finishes_without_duplicating_fds() -> None:
    """A stream socket may take part of the payload: the rest follows, the fds come once."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.setblocking(False)
    big = os.urandom(1 << 20)
    r, w = os.pipe()
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            send_fds(a, [r, w], big)
        except Exception as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    got, fds = bytearray(), []
    with a, b:
        b.settimeout(WAIT)
        while len(got) < len(big):
            payload, more = recv_fds(b, 4)
            assert payload, "EOF before the whole payload"
            got += payload
            fds += more
        thread.join(WAIT)
    assert not errors and bytes(got) == big and len(fds) == 2
    for fd in (r, w, *fds):
        os.close(fd)


def test_async_variants_wait_for_data_and_for_room(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = seqpacket_pair()
        with a, b, socket.socket() as s:
            a.setblocking(False)
            b.setblocking(False)
            receiving = loop.create_task(recv_fds_async(loop, b, 1))
            await asyncio.sleep(0)
            assert not receiving.done()
            await send_fds_async(loop, a, [s.fileno()], b"late")
            payload, fds = await receiving
            assert payload == b"late" and len(fds) == 1
            os.close(fds[0])
            queued = 0
            while True:  # fill the channel
                try:
                    send_fds(a, [], b"filler")
                except BlockingIOError:
                    break
                queued += 1
                assert queued < 100_000
            sending = loop.create_task(send_fds_async(loop, a, [s.fileno()], b"after room"))
            await asyncio.sleep(0)
            assert not sending.done()
            for _ in range(queued):
                assert recv_fds(b, 1)[0] == b"filler"
                if sending.done():
                    break
                await asyncio.sleep(0)
            async with asyncio.timeout(WAIT):
                await sending
            while True:
                payload, fds = await recv_fds_async(loop, b, 1)
                if payload == b"after room":
                    break
            assert len(fds) == 1
            os.close(fds[0])

    run(main)


# ------------------------------------------------------------------ listener handoff

CHILD_RECEIVER = r"""
import json, select, socket, sys
from ferryman.net.handoff import ListenerHandoff
socks = ListenerHandoff.receive_blocking(sys.argv[1], 10.0)
print(json.dumps({n: [s.family, s.type, list(s.getsockname())] for n, s in socks.items()}), flush=True)
web = socks["web"]
while True:
    ready, _, _ = select.select([web, sys.stdin], [], [], 10.0)
    if not ready or sys.stdin in ready:
        break
    try:
        conn, _ = web.accept()
    except BlockingIOError:
        continue
    conn.setblocking(True)
    conn.settimeout(5.0)
    with conn:
        conn.sendall(b"new:" + conn.recv(64))
for s in socks.values():
    s.close()
"""


def test_listener_handoff_to_a_new_process_loses_no_connection(run: Run, tmp_path: Any) -> None:
    """Old master serves, new master (a child process) receives; a client connects in a
    loop throughout; after the old side closes its copy every connection is still served."""
    path = str(tmp_path / "handoff.sock")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        web = socket.socket()
        web.bind((LOCAL, 0))
        web.listen(128)
        web.setblocking(False)
        dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dns.bind((LOCAL, 0))
        address = web.getsockname()

        old_tasks: set[asyncio.Task] = set()

        async def old_serve(conn: socket.socket) -> None:
            with conn:
                data = await loop.sock_recv(conn, 64)
                await loop.sock_sendall(conn, b"old:" + data)

        def old_accept() -> None:  # the old master: accepts until its reader is removed
            while True:
                try:
                    conn, _ = web.accept()
                except BlockingIOError:
                    return
                conn.setblocking(False)
                task = loop.create_task(old_serve(conn))
                old_tasks.add(task)

        replies: list[bytes] = []
        old_closed = asyncio.Event()
        new_after_close = 0

        async def client_loop() -> None:
            nonlocal new_after_close
            for i in range(5000):  # bounded: stops once the new process served 5 after the switch
                with socket.socket() as client:
                    client.setblocking(False)
                    await loop.sock_connect(client, address)
                    await loop.sock_sendall(client, b"%d" % i)
                    reply = await recv_some(client)
                assert reply.endswith(b":%d" % i), f"connection {i} lost: got {reply!r}"
                replies.append(reply)
                if old_closed.is_set() and reply.startswith(b"new:"):
                    new_after_close += 1
                    if new_after_close >= 5:
                        return
            raise AssertionError("the new process never took over")

        handoff = ListenerHandoff()
        loop.add_reader(web.fileno(), old_accept)
        accepting = True
        clients = loop.create_task(client_loop())
        serving = loop.create_task(handoff.serve(path, {"web": web, "dns": dns}))
        await until(lambda: os.path.exists(path) and len(replies) >= 3, "the handoff socket and first replies")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD_RECEIVER, path, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            async with asyncio.timeout(WAIT):
                line = await child.stdout.readline()  # type: ignore[union-attr]
            described = json.loads(line)
            assert described == {
                "web": [socket.AF_INET, socket.SOCK_STREAM, list(address)],
                "dns": [socket.AF_INET, socket.SOCK_DGRAM, list(dns.getsockname())],
            }
            async with asyncio.timeout(WAIT):
                await handoff.wait_served()
            assert handoff.served == 1
            loop.remove_reader(web.fileno())  # stop accepting; connections already accepted finish
            accepting = False
            await asyncio.gather(*old_tasks)
            web.close()  # the old master's copy: the socket lives on in the child
            dns.close()
            old_closed.set()
            async with asyncio.timeout(WAIT * 2):
                await clients
            assert any(r.startswith(b"old:") for r in replies)
        finally:
            clients.cancel()
            serving.cancel()
            if accepting:
                loop.remove_reader(web.fileno())
            await asyncio.gather(clients, serving, *old_tasks, return_exceptions=True)
            web.close()
            dns.close()
            child.stdin.close()  # type: ignore[union-attr]
            code = await wait_or_kill(child)
        assert code == 0
        assert not os.path.exists(path)  # serve removed its socket path

    run(main)


async def wait_or_kill(child: asyncio.subprocess.Process) -> int:
    try:
        async with asyncio.timeout(WAIT):
            return await child.wait()
    except TimeoutError:
        child.kill()  # our own child, by its handle
        await child.wait()
        raise


def test_many_listeners_are_sent_in_chunks(run: Run, tmp_path: Any) -> None:
    path = str(tmp_path / "h.sock")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        originals = {}
        for i in range(450):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((LOCAL, 0))
            originals[f"udp-{i}" + "x" * (i % 7)] = sock
        handoff = ListenerHandoff()
        serving = loop.create_task(handoff.serve(path, originals))
        try:
            await until(lambda: os.path.exists(path), "the handoff socket")
            received = await ListenerHandoff.receive(path, WAIT)
            try:
                assert list(received) == list(originals)
                for name, sock in received.items():
                    assert sock.getsockname() == originals[name].getsockname()
                    assert sock.fileno() != originals[name].fileno()
                    assert sock.type == socket.SOCK_DGRAM and not sock.getblocking()
            finally:
                for sock in received.values():
                    sock.close()
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)
            for sock in originals.values():
                sock.close()

    run(main)


def test_blocking_serve_and_async_receive(run: Run, tmp_path: Any) -> None:
    """A master without an event loop serves; an empty listener set is a valid handoff."""
    path = str(tmp_path / "b.sock")
    handoff = ListenerHandoff()
    with tcp_listener() as web:
        errors: list[BaseException] = []

        def serve() -> None:
            try:
                handoff.serve_blocking(path, {"web": web}, WAIT)
            except Exception as exc:  # noqa: BLE001 - reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()

        async def main() -> dict[str, socket.socket]:
            await until(lambda: os.path.exists(path), "the handoff socket")
            return await ListenerHandoff.receive(path, WAIT)

        received = run(main)
        thread.join(WAIT)
        assert not errors and handoff.served == 1
        with received["web"] as sock:
            assert sock.getsockname() == web.getsockname()
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_blocking_serve_times_out_without_a_receiver(tmp_path: Any) -> None:
    with pytest.raises(TimeoutError, match="no new master took the listeners"):
        ListenerHandoff().serve_blocking(str(tmp_path / "t.sock"), {}, 0.2)
    assert not os.path.exists(tmp_path / "t.sock")


def test_receive_rejects_a_manifest_that_does_not_match_its_fds(run: Run, tmp_path: Any) -> None:
    path = str(tmp_path / "bad.sock")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server.bind(path)
        server.listen()
        server.setblocking(False)
        with server, socket.socket() as extra:
            baseline = open_fds()

            async def bad_master() -> None:
                conn, _ = await loop.sock_accept(server)
                with conn:
                    body = json.dumps({"v": 1, "names": ["a", "b"], "more": False}).encode()
                    send_fds(conn, [extra.fileno()], body)
                    await loop.sock_recv(conn, 16)

            serving = loop.create_task(bad_master())
            with pytest.raises(HandoffError, match="names 2 listeners but carries 1 fds"):
                await ListenerHandoff.receive(path, WAIT)
            await asyncio.wait_for(serving, WAIT)
            assert open_fds() == baseline

    run(main)


# ------------------------------------------------------------- least_conn dispatch


class Worker:
    """An in-process worker: a ConnectionReceiver whose handler echoes one message with a
    tag, then holds the connection or (``quick``) closes it at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, channel: socket.socket, tag: bytes, *, quick: bool, **options: Any) -> None:
        self.loop, self.tag, self.quick = loop, tag, quick
        self.held: list[socket.socket] = []
        self.tasks: set[asyncio.Task] = set()
        self.receiver = ConnectionReceiver(loop, channel, self.on_connection, **options)

    def on_connection(self, conn: socket.socket, peer: object) -> None:
        assert isinstance(peer, tuple) and peer[0] == LOCAL
        task = self.loop.create_task(self.serve(conn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def serve(self, conn: socket.socket) -> None:
        data = await self.loop.sock_recv(conn, 64)
        await self.loop.sock_sendall(conn, self.tag + b":" + data)
        if self.quick:
            conn.close()
            self.receiver.release()
        else:
            self.held.append(conn)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for conn in self.held:
            conn.close()
            self.receiver.release()
        self.held.clear()
        self.receiver.close()


async def ask(client: socket.socket, text: bytes) -> bytes:
    await asyncio.get_running_loop().sock_sendall(client, text)
    return await recv_some(client)


def test_least_conn_sends_more_to_the_worker_that_closes_quickly(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dispatcher, ends = ConnectionDispatcher.create(3)
        dispatcher.attach(loop)
        workers = [Worker(loop, end, b"w%d" % i, quick=(i == 0)) for i, end in enumerate(ends)]
        for worker in workers:
            worker.receiver.start()
        clients: list[socket.socket] = []
        try:
            with tcp_listener() as listener:
                for i in range(30):
                    client, server = await connected_pair(listener)
                    clients.append(client)
                    chosen = dispatcher.dispatch(server)
                    assert server.fileno() == -1  # the master's copy is closed
                    reply = await ask(client, b"%d" % i)
                    assert reply == b"w%d:%d" % (chosen, i)  # bytes flow through the handed-off socket
                    # settle: the dispatcher's view matches every worker's count
                    await until(lambda: dispatcher.loads == [w.receiver.active for w in workers], "reports")
            received = [w.receiver.received for w in workers]
            assert sum(received) == 30
            assert received[0] > received[1] and received[0] > received[2], received
            assert dispatcher.loads == [0, received[1], received[2]]
        finally:
            for client in clients:
                client.close()
            for worker in workers:
                worker.close()
            dispatcher.close()

    run(main)


def test_a_burst_is_spread_before_any_report(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dispatcher, ends = ConnectionDispatcher.create(3)
        dispatcher.attach(loop)
        workers = [Worker(loop, end, b"w%d" % i, quick=False) for i, end in enumerate(ends)]
        clients, servers = [], []
        try:
            with tcp_listener() as listener:
                for _ in range(9):
                    client, server = await connected_pair(listener)
                    clients.append(client)
                    servers.append(server)
            assert dispatcher.dispatch_batch(servers) == []
            assert dispatcher.loads == [3, 3, 3]  # in flight counts before any report
            for worker in workers:
                worker.receiver.start()
            replies = [await ask(client, b"hi") for client in clients]
            assert sorted(r.split(b":")[0] for r in replies) == [b"w0"] * 3 + [b"w1"] * 3 + [b"w2"] * 3
            await until(lambda: [w.receiver.received for w in workers] == [3, 3, 3], "every connection")
        finally:
            for sock in clients + servers:
                sock.close()
            for worker in workers:
                worker.close()
            dispatcher.close()

    run(main)


def fill(channel: socket.socket) -> int:
    """Queue junk messages until the channel refuses more (a worker that does not read)."""
    count = 0
    while True:
        try:
            channel.send(b"!")
        except BlockingIOError:
            return count
        count += 1
        assert count < 100_000


def test_a_full_channel_is_skipped_and_all_full_keeps_the_connection() -> None:
    dispatcher, ends = ConnectionDispatcher.create(2)
    with tcp_listener() as listener, socket.create_connection(listener.getsockname(), timeout=WAIT) as client, \
            socket.create_connection(listener.getsockname(), timeout=WAIT):
        listener.setblocking(True)
        server, _ = listener.accept()
        try:
            fill(dispatcher.channels[0])
            assert dispatcher.dispatch(server) == 1  # worker 0 would win the tie, but has no room
            assert server.fileno() == -1
            _, fds = recv_fds(ends[1], 1)
            with socket.socket(fileno=fds[0]) as handed:
                assert handed.getpeername() == client.getsockname()
            server, _ = listener.accept()
            fill(dispatcher.channels[1])
            with pytest.raises(BlockingIOError, match="every worker's connection channel is full"):
                dispatcher.dispatch(server)
            assert server.fileno() != -1  # still the caller's
        finally:
            server.close()
            for end in ends:
                end.close()
            dispatcher.close()


def test_a_replaced_worker_says_hello_and_starts_from_zero(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dispatcher, ends = ConnectionDispatcher.create(1)
        dispatcher.attach(loop)
        first = Worker(loop, ends[0], b"a", quick=False)
        first.receiver.start()
        clients = []
        try:
            with tcp_listener() as listener:
                for _ in range(3):
                    client, server = await connected_pair(listener)
                    clients.append(client)
                    assert dispatcher.dispatch_batch([server]) == []
                    await ask(client, b"x")
                    await until(lambda: dispatcher.loads == [first.receiver.active], "reports")
            assert dispatcher.loads == [3]
            # the first worker dies: its connections go with it, no release is ever reported
            first.receiver._pause()
            for conn in first.held:
                conn.close()
            first.held.clear()
            await asyncio.sleep(0.05)  # nothing is reported by a dead worker
            assert dispatcher.loads == [3]
            second = ConnectionReceiver(loop, ends[0], lambda conn, peer: conn.close())
            second.start()
            await until(lambda: dispatcher.loads == [0], "the hello")
            second.close()
        finally:
            for client in clients:
                client.close()
            first.close()
            dispatcher.close()

    run(main)


def test_a_finishing_worker_serves_what_was_sent_until_the_dispatcher_says_end(run: Run) -> None:
    """A stopping worker must not close its channel while connections are in it (the kernel
    would reset clients whose requests are on their way): it takes them until the end mark."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        dispatcher, ends = ConnectionDispatcher.create(1)
        worker = Worker(loop, ends[0], b"w", quick=True)
        worker.receiver.start()
        clients = []
        try:
            worker.receiver._pause()  # the worker is busy: connections wait in the channel
            with tcp_listener() as listener:
                for _ in range(3):
                    client, server = await connected_pair(listener)
                    clients.append(client)
                    await loop.sock_sendall(client, b"req")  # the request is already sent
                    dispatcher.dispatch(server)
            finished = worker.receiver.finish()
            worker.receiver._resume()
            await asyncio.sleep(0.05)
            assert not finished.done()  # no end mark yet: the channel stays open
            dispatcher.finish()
            async with asyncio.timeout(WAIT):
                await finished
            for client in clients:
                assert await recv_some(client) == b"w:req"
            assert worker.receiver.received == 3
        finally:
            for client in clients:
                client.close()
            worker.close()
            dispatcher.close()

    run(main)


def test_max_connections_pauses_receiving(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dispatcher, ends = ConnectionDispatcher.create(1)
        worker = Worker(loop, ends[0], b"w", quick=False, max_connections=1)
        worker.receiver.start()
        clients = []
        try:
            with tcp_listener() as listener:
                for _ in range(2):
                    client, server = await connected_pair(listener)
                    clients.append(client)
                    dispatcher.dispatch(server)
            assert await ask(clients[0], b"1") == b"w:1"
            await until(lambda: worker.receiver.active == 1, "the first connection")
            await asyncio.sleep(0.05)  # give a wrongly resumed receiver a chance to take the second
            assert worker.receiver.received == 1
            worker.held.pop().close()
            worker.receiver.release()
            assert await ask(clients[1], b"2") == b"w:2"
        finally:
            for client in clients:
                client.close()
            worker.close()
            dispatcher.close()

    run(main)


def test_balanced_acceptor_holds_a_burst_until_a_worker_has_room(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dispatcher, ends = ConnectionDispatcher.create(2)
        dispatcher.attach(loop)
        workers = [Worker(loop, end, b"w%d" % i, quick=True) for i, end in enumerate(ends)]
        queued = [fill(channel) for channel in dispatcher.channels]  # nobody has room
        listener = socket.socket()
        listener.bind((LOCAL, 0))
        listener.listen(128)
        listener.setblocking(False)
        acceptor = BalancedAcceptor(loop, listener, dispatcher)
        acceptor.start()
        clients = []
        try:
            for i in range(6):
                client = socket.socket()
                client.setblocking(False)
                await loop.sock_connect(client, listener.getsockname())
                await loop.sock_sendall(client, b"%d" % i)
                clients.append(client)
            await until(lambda: len(acceptor._held) > 0, "a held burst")
            for worker in workers:  # the workers start reading: junk first, then connections
                worker.receiver.start()
            replies = [await recv_some(client) for client in clients]
            assert [r.split(b":")[1] for r in replies] == [b"%d" % i for i in range(6)]
            assert sum(w.receiver.received for w in workers) == 6 and all(queued)
        finally:
            for client in clients:
                client.close()
            acceptor.close()
            for worker in workers:
                worker.close()
            dispatcher.close()

    run(main)


CHILD_WORKER = r"""
import asyncio, socket, sys
from ferryman.net.balance import ConnectionReceiver

async def main():
    loop = asyncio.get_running_loop()
    tag = sys.argv[2].encode()

    def handler(conn, peer):
        async def serve():
            data = await loop.sock_recv(conn, 64)
            await loop.sock_sendall(conn, tag + b":" + data)
            conn.close()
            receiver.release()
        loop.create_task(serve())

    receiver = ConnectionReceiver(loop, socket.socket(fileno=int(sys.argv[1])), handler)
    receiver.start()
    await loop.run_in_executor(None, sys.stdin.read)  # until the test closes our stdin
    receiver.close()

asyncio.run(main())
"""


def test_connections_reach_worker_processes(run: Run) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        dispatcher, ends = ConnectionDispatcher.create(2)
        dispatcher.attach(loop)
        children = []
        for i, end in enumerate(ends):
            children.append(await asyncio.create_subprocess_exec(
                sys.executable, "-c", CHILD_WORKER, str(end.fileno()), f"child{i}",
                pass_fds=[end.fileno()], stdin=subprocess.PIPE,
            ))
            end.close()  # the child holds its end now
        clients = []
        try:
            with tcp_listener() as listener:
                for i in range(6):
                    client, server = await connected_pair(listener)
                    clients.append(client)
                    dispatcher.dispatch(server)
                    reply = await ask(client, b"req%d" % i)
                    assert reply.endswith(b":req%d" % i)
            tags = {(await recv_some(c, 1) or b"") for c in clients}  # each child closed its connection
            assert tags == {b""}
            await until(lambda: dispatcher.loads == [0, 0], "close reports from the children")
        finally:
            for client in clients:
                client.close()
            dispatcher.close()
            for child in children:
                child.stdin.close()  # type: ignore[union-attr]
            codes = [await wait_or_kill(child) for child in children]
        assert codes == [0, 0]

    run(main)


def test_a_closed_worker_end_is_skipped_for_good(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher, ends = ConnectionDispatcher.create(2)
    ends[0].close()  # no process holds worker 0's end any more
    with tcp_listener() as listener, ExitStack() as stack:
        listener.setblocking(True)
        for _ in range(3):
            stack.enter_context(socket.create_connection(listener.getsockname(), timeout=WAIT))
            server, _ = listener.accept()
            assert dispatcher.dispatch(server) == 1
            assert server.fileno() == -1
    assert dispatcher.live_channels() == [dispatcher.channels[1]]
    assert dispatcher.loads == [0, 3]
    assert [r.getMessage() for r in caplog.records].count("worker 0's connection channel is closed; it gets no more connections") == 1
    for _ in range(3):
        _, fds = recv_fds(ends[1], 1)
        os.close(fds[0])
    ends[1].close()
    dispatcher.close()
