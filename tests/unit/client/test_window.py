"""The receive window (msgrlib/client/window.py): each message shown once,
late ones marked, expired ones refused, memory bounded by the TTL."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from msgrlib.client.window import MAX_TTL, RECEIVE_MARGIN, ReceiveWindow, Verdict

NOW = 1.7e9


def show(window: ReceiveWindow, run: str, n: int, *, ts: float = NOW, ttl: int = 30,
         now: float = NOW) -> Verdict:
    verdict = window.check(run, n, ts, ts + ttl, now)
    if verdict in (Verdict.NEW, Verdict.LATE):
        window.record(run, n, ts)
    return verdict


def test_in_order_then_copies_are_seen():
    w = ReceiveWindow()
    assert [show(w, "e", n) for n in (1, 2, 3)] == [Verdict.NEW] * 3
    assert [show(w, "e", n) for n in (3, 1, 2)] == [Verdict.SEEN] * 3


def test_a_gap_filled_later_is_late_then_seen():
    w = ReceiveWindow()
    assert show(w, "e", 1) is Verdict.NEW
    assert show(w, "e", 5) is Verdict.NEW
    assert [show(w, "e", n) for n in (3, 2, 4)] == [Verdict.LATE] * 3
    assert [show(w, "e", n) for n in (2, 3, 4, 5)] == [Verdict.SEEN] * 4


def test_a_run_first_seen_in_the_middle_still_shows_its_earlier_messages_once():
    w = ReceiveWindow()
    assert show(w, "e", 7) is Verdict.NEW
    assert show(w, "e", 2) is Verdict.LATE
    assert show(w, "e", 2) is Verdict.SEEN


def test_many_thousands_of_copies_are_all_seen():
    """The old window remembered 4,096 names: a relay resending more got
    every one shown again."""
    w = ReceiveWindow()
    for n in range(1, 10_001):
        assert show(w, "e", n) is Verdict.NEW
    assert all(show(w, "e", n) is Verdict.SEEN for n in range(1, 10_001))


def test_past_its_deadline_is_refused_with_the_stated_margin():
    w = ReceiveWindow()
    assert show(w, "e", 1, ttl=10, now=NOW + 10 - RECEIVE_MARGIN) is Verdict.NEW
    assert show(w, "e", 2, ttl=10, now=NOW + 10 - RECEIVE_MARGIN + 0.01) is Verdict.EXPIRED
    assert show(w, "e", 3, ttl=MAX_TTL + 1) is Verdict.FUTURE
    assert show(w, "e", 4, ts=NOW + 1000) is Verdict.FUTURE


def test_too_many_gaps_refuse_what_cannot_be_ruled_out():
    w = ReceiveWindow(max_gaps=3)
    for n in (2, 4, 6, 8, 10):  # gaps 1, 3, 5, 7, 9: the two lowest are dropped
        show(w, "e", n)
    assert show(w, "e", 1) is Verdict.UNKNOWN
    assert show(w, "e", 3) is Verdict.UNKNOWN
    assert show(w, "e", 5) is Verdict.LATE


def test_a_run_is_forgotten_once_nothing_of_it_can_be_shown():
    w = ReceiveWindow()
    show(w, "e", 1)
    later = NOW + MAX_TTL + RECEIVE_MARGIN + 1
    assert w.check("other", 1, later, later + 30, later) is Verdict.NEW
    assert w.runs() == 0  # "e" expired: its messages are all past their deadlines
    assert show(w, "e", 1, now=later) is Verdict.EXPIRED


@settings(max_examples=200, deadline=None)
@given(order=st.lists(st.integers(min_value=1, max_value=60), max_size=200))
def test_any_order_and_any_copies_show_each_number_once(order):
    w = ReceiveWindow(max_gaps=8)
    shown: list[int] = []
    for n in order:
        verdict = show(w, "e", n)
        if verdict in (Verdict.NEW, Verdict.LATE):
            assert n not in shown
            assert (verdict is Verdict.LATE) == any(m > n for m in shown)
            shown.append(n)
        else:
            assert verdict in (Verdict.SEEN, Verdict.UNKNOWN)
            assert verdict is Verdict.UNKNOWN or n in shown


def test_a_late_message_dated_after_the_mark_keeps_its_run_until_its_own_deadline():
    """The run was forgotten MAX_TTL after the newest time among messages
    that raised the mark; a late one dated after them (the sender's clock
    stepped back between the two) could still be within its deadline then,
    and its resend was shown a second time."""
    w = ReceiveWindow()
    assert show(w, "e", 2, ts=NOW - 50, ttl=60, now=NOW) is Verdict.NEW
    assert show(w, "e", 1, ts=NOW, ttl=60, now=NOW) is Verdict.LATE  # dated later
    later = NOW + 30  # past (NOW - 50) + MAX_TTL, before message 1's deadline
    assert show(w, "e", 1, ts=NOW, ttl=60, now=later) is Verdict.SEEN
