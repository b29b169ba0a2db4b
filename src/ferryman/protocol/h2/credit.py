"""Flow-control credit of one received stream: HTTP/2's backpressure.

A peer may send only as much DATA as we granted. Credit for received bytes is returned
(WINDOW_UPDATE) only once the other side of the proxy accepted them: handed to a transport
that is not paused. While something holds the stream paused (the other side's transport is
full, the response head is not out yet ...), received bytes are only counted; the credit
goes back when the last holder resumes. So a slow reader on one side stops the sender on
the other after at most one window, and nothing is buffered beyond that.
"""

from __future__ import annotations

__all__ = ["Credit"]


class Credit:
    """Held credit of one stream. ``received`` / ``resume`` return the bytes to acknowledge now."""

    __slots__ = ("held", "holders")

    def __init__(self) -> None:
        self.held = 0  # flow-controlled bytes received but not acknowledged
        self.holders: set[object] | None = None  # who keeps the stream paused (None: nobody)

    @property
    def paused(self) -> bool:
        return bool(self.holders)

    def received(self, size: int) -> int:
        """``size`` bytes were handed on: acknowledge them now unless paused."""
        if self.holders:
            self.held += size
            return 0
        return size

    def pause(self, holder: object) -> None:
        if self.holders is None:
            self.holders = {holder}
        else:
            self.holders.add(holder)

    def resume(self, holder: object) -> int:
        """``holder`` no longer holds the stream; returns the credit now due (when nobody does)."""
        holders = self.holders
        if holders:
            holders.discard(holder)
            if holders:
                return 0
        held, self.held = self.held, 0
        return held

    def release(self) -> int:
        """The stream is over: whatever was held is due (the connection window counts it)."""
        self.holders = None
        held, self.held = self.held, 0
        return held
