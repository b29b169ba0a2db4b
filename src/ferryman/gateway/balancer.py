"""The balancing process of ``least_conn`` listeners (one more process beside the workers)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

from ..net.balance import BalancedAcceptor
from ..server import install_uvloop

if TYPE_CHECKING:
    from .app import Gateway

log = logging.getLogger(__name__)


def balance_main(gateway: Gateway) -> None:
    """Accept on every least_conn listener and pass each connection to the worker with the
    fewest, until SIGTERM. Forked (and restarted if it dies) by the master."""
    install_uvloop()
    asyncio.run(_balance(gateway))


async def _balance(gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # listener changes need a restart
    acceptors = []
    for name, (dispatcher, ends) in gateway.channels.items():
        for end in ends:
            end.close()  # the master keeps the workers' ends
        dispatcher.attach(loop)
        acceptor = BalancedAcceptor(loop, gateway.sockets[name], dispatcher)
        acceptor.start()
        acceptors.append(acceptor)
    for name, sock in gateway.sockets.items():
        if name not in gateway.channels:
            sock.close()
    for group in gateway.groups.values():
        for sock in group:
            sock.close()
    if gateway.demo_sock is not None:
        gateway.demo_sock.close()
    log.info("balancer %d: passing connections of %s to the least busy worker", os.getpid(), ", ".join(gateway.channels))
    await stop.wait()
    for acceptor in acceptors:
        acceptor.close()
    for dispatcher, _ in gateway.channels.values():
        dispatcher.finish()  # the workers may close their channels now
