"""Which worker this process is, and the state it shares with the others.

Set once per process by the gateway (``attach``) right after the fork; read by code that
behaves per worker (source-port affinity) or shares counts across workers (rate limits).
The shared state itself is created in the master, before forking, so that every worker
inherits the same mapping.
"""

from __future__ import annotations

from ..limits.shared_rate import RateBoard


class ProcessContext:
    """This process: ``worker`` of ``workers`` (0 of 1 without workers)."""

    __slots__ = ("worker", "workers", "rate_board")

    def __init__(self) -> None:
        self.worker = 0
        self.workers = 1
        self.rate_board: RateBoard | None = None  # shared rate counters (only with workers)

    @property
    def affinity(self) -> tuple[int, int] | None:
        """(worker, workers) when there are several workers, for source-port affinity."""
        return (self.worker, self.workers) if self.workers > 1 else None


CURRENT = ProcessContext()


def attach(worker: int, workers: int, rate_board: RateBoard | None) -> None:
    CURRENT.worker, CURRENT.workers, CURRENT.rate_board = worker, workers, rate_board
