"""Flow-control credit of one stream (ferryman.protocol.h2.credit)."""

from __future__ import annotations

from ferryman.protocol.h2.credit import Credit


def test_credit_is_returned_at_once_unless_someone_holds_the_stream() -> None:
    credit = Credit()
    assert credit.received(100) == 100 and not credit.paused
    credit.pause("upstream-full")
    credit.pause("head-pending")
    assert credit.received(300) == 0 and credit.received(50) == 0 and credit.paused
    assert credit.resume("upstream-full") == 0  # still held by the other
    assert credit.resume("head-pending") == 350  # the last holder lets it all go
    assert credit.received(10) == 10
    assert credit.resume("never-held") == 0


def test_release_hands_back_what_was_held() -> None:
    credit = Credit()
    credit.pause("x")
    credit.received(70)
    assert credit.release() == 70 and not credit.paused and credit.release() == 0
