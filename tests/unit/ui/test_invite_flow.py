"""``/invite`` in the screen, sans-I/O: the rendezvous' cancel and the screen's invite states
(msgrlib/client/invite.py, msgrlib/ui/view.py). The live half, with a relay, a tmux screen
and a joining process, is tests/integration/test_invite_screen_command.py."""

from __future__ import annotations

import os

import pytest

from msgrlib import protocol
from msgrlib.client import events
from msgrlib.client.invite import InviteError, Rendezvous, Step
from msgrlib.ui.view import (
    HELP,
    INVITE_ENDED,
    INVITE_TRANSITIONS,
    ChatView,
    Command,
    InviteFlow,
    InviteState,
    parse_command,
)

# -- the rendezvous gives its nameplate back ------------------------------------------------


def waiting_inviter(number: int = 7) -> Rendezvous:
    inviter = Rendezvous(rng=lambda n: bytes([0x3C, 0x3B][:n]))
    inviter.start()
    inviter.handle(protocol.Allocated(number, 600.0))
    return inviter


def test_cancel_sends_the_relays_cancel_and_the_answer_ends_the_invite() -> None:
    inviter = waiting_inviter()
    assert inviter.can_cancel
    assert inviter.cancel() == [{"type": "cancel", "nameplate": 7}]
    assert inviter.step is Step.CANCELLING and not inviter.can_cancel
    assert inviter.cancel() == []                      # once
    assert inviter.handle(protocol.NameplateGone(8, "cancelled")) == []  # another invite's
    with pytest.raises(InviteError, match="relay freed its number") as err:
        inviter.handle(protocol.NameplateGone(7, "cancelled"))
    assert err.value.code == "cancelled" and inviter.step is Step.FAILED


def test_a_join_that_crosses_the_cancel_does_not_start_the_chat() -> None:
    inviter = waiting_inviter()
    inviter.cancel()
    with pytest.raises(InviteError, match="just as you cancelled") as err:
        inviter.handle(protocol.Joined(7, "i-bob"))
    assert err.value.code == "cancelled" and inviter.peer is None and not inviter.done


def test_the_relay_refusing_the_cancel_still_ends_it() -> None:
    inviter = waiting_inviter()
    inviter.cancel()
    with pytest.raises(InviteError) as err:
        inviter.handle(protocol.Error("no_nameplate", "you have no invite with that number"))
    assert err.value.code == "cancelled"


def test_nothing_to_cancel_before_the_number_for_a_joiner_or_once_joined() -> None:
    from msgrlib.invite import parse_code

    asking = Rendezvous(rng=os.urandom)
    asking.start()
    assert not asking.can_cancel and asking.cancel() == []
    joiner = Rendezvous(parse_code("7-crossover-clockwork"), rng=os.urandom)
    joiner.start()
    assert not joiner.can_cancel and joiner.cancel() == []
    joined = waiting_inviter()
    joined.handle(protocol.Joined(7, "i-bob"))
    assert not joined.can_cancel and joined.cancel() == []


# -- the screen's invite states ---------------------------------------------------------------

#: A walk through the table for each way an invite goes: (event, state after it).
WALKS = {
    "talks": [("invite", InviteState.ASKING), ("allocated", InviteState.WAITING),
              ("joined", InviteState.JOINED), ("session", InviteState.TALKING)],
    "joins": [("invite", InviteState.ASKING), ("joined", InviteState.JOINED),
              ("session", InviteState.TALKING)],
    "cancelled": [("invite", InviteState.ASKING), ("allocated", InviteState.WAITING),
                  ("cancel", InviteState.CANCELLING), ("cancelled", InviteState.CANCELLED)],
    "hung up": [("invite", InviteState.ASKING), ("cancel", InviteState.CANCELLED)],
    "expired": [("invite", InviteState.ASKING), ("allocated", InviteState.WAITING),
                ("expired", InviteState.EXPIRED)],
    "burned": [("invite", InviteState.ASKING), ("allocated", InviteState.WAITING),
               ("joined", InviteState.JOINED), ("burned", InviteState.BURNED)],
    "refused": [("invite", InviteState.ASKING), ("failed", InviteState.FAILED)],
}


@pytest.mark.parametrize("walk", sorted(WALKS))
def test_each_way_an_invite_goes_is_in_the_table(walk: str) -> None:
    flow = InviteFlow()
    for event, state in WALKS[walk]:
        assert flow.go(event) is state
    assert flow.ended == (flow.state in INVITE_ENDED)


def test_moves_not_in_the_table_are_refused() -> None:
    for state in InviteState:
        for event in ("invite", "allocated", "joined", "session", "cancel", "cancelled",
                      "expired", "burned", "failed"):
            flow = InviteFlow()
            flow.state = state
            if (state, event) in INVITE_TRANSITIONS:
                assert flow.can(event)
                continue
            assert not flow.can(event)
            with pytest.raises(ValueError):
                flow.go(event)
            assert flow.state is state
    # An invite already under way is not started again; an ended one can be.
    for state in InviteState:
        assert ((state, "invite") in INVITE_TRANSITIONS) == (
            state in INVITE_ENDED or state in (InviteState.NONE, InviteState.TALKING))


def test_the_activity_line_counts_down_and_says_how_to_go_on() -> None:
    flow = InviteFlow()
    flow.go("invite")
    assert flow.active and "asking the relay" in flow.activity(0.0)
    flow.go("allocated", code="7-crossover-clockwork", expires_at=100.0)
    said = flow.activity(40.2)
    assert "7-crossover-clockwork" in said and "expires in 60 s" in said and "/cancel" in said
    assert "expires in 0 s" in flow.activity(130.0)
    flow.go("cancel")
    assert "cancelling" in flow.activity(41.0)
    flow.go("cancelled")
    assert not flow.active and flow.ended
    assert "/invite starts a new one" in flow.activity(42.0)
    flow.go("invite")            # a new invite forgets the old code
    assert flow.code == "" and flow.expires_at is None and flow.reason == ""
    joiner = InviteFlow()
    joiner.go("invite", joining=True)
    assert "joining the invite" in joiner.activity(0.0)


@pytest.mark.parametrize("ttl", [1e300, -5.0, 0.0])
def test_a_relays_odd_ttl_still_gives_a_short_countdown(ttl: float) -> None:
    flow = InviteFlow()
    flow.go("invite")
    flow.go("allocated", code="7-crossover-clockwork", expires_at=1000.0 + ttl)
    said = flow.activity(1000.0)
    assert len(said) < 120 and ("expires in 0 s" in said or ttl > 0)


def test_a_reason_from_the_relay_or_peer_is_kept_escaped() -> None:
    flow = InviteFlow()
    flow.go("invite")
    flow.go("failed", reason="relay: \x1b[2Jgone")
    assert "\x1b" not in flow.reason and "gone" in flow.reason


def test_the_screen_shows_the_invite_in_its_activity_row() -> None:
    view = ChatView(me="you", peer="peer", address="127.0.0.1:1", tls=True, ttl=30)
    view.connection = "connected"
    assert view.invite.state is InviteState.NONE and not view.busy
    view.invite.go("invite")
    view.invite.go("allocated", code="7-crossover-clockwork", expires_at=1010.0)
    assert view.busy   # the countdown redraws
    row = "".join(text for text, _ in view.activity_row(200, 1000.0))
    assert "type the code 7-crossover-clockwork; it expires in 10 s" in row
    view.invite.go("expired")
    row = "".join(text for text, _ in view.activity_row(200, 1000.0))
    assert "invite expired unused" in row and "/invite" in row


def test_a_new_conversation_forgets_the_old_peer_and_session() -> None:
    view = ChatView(me="alice", peer="bob", address="127.0.0.1:1", tls=True, ttl=30)
    view.session_id, view.safety_number, view.verified, view.peer_online = "s", "1 2", True, True
    view.info("kept", now=0.0)
    view.add_own(1, "to bob", now=0.0, ttl=30)
    view.apply(events.Undelivered(1, "the conversation was closed"), now=1.0)
    view.new_conversation(me="you", peer="peer")
    assert (view.me, view.peer, view.session_id, view.safety_number, view.verified,
            view.peer_online) == ("you", "peer", None, None, False, None)
    assert len(view.lines) == 2   # what was shown stays until it expires
    # The new conversation's message 1 is another message: bob's line stays failed.
    view.add_own(1, "to whoever joined", now=2.0, ttl=30)
    view.apply(events.Delivered(1), now=3.0)
    assert [(line.text, line.state) for line in view.lines if line.kind == "out"] == [
        ("to bob", "failed"), ("to whoever joined", "delivered")]


def test_invite_and_cancel_are_commands_in_help() -> None:
    assert parse_command("/invite") == Command("invite")
    assert parse_command("/cancel") == Command("cancel")
    assert parse_command("/invite bob").name == "error"
    assert parse_command("//invite") == Command("send", "/invite")
    assert any(line.lstrip().startswith("/invite") for line in HELP)
    assert any("/cancel" in line for line in HELP)


def test_esc_alone_is_told_apart_from_a_paste_marker() -> None:
    from msgrlib.ui.view import Paste, PasteDecoder

    decoder = PasteDecoder()
    assert decoder.feed("\x1b") == [] and decoder.pending == "\x1b"
    assert decoder.lone_escape() and decoder.pending == ""
    assert not decoder.lone_escape()
    # A paste marker split across two reads: after its first byte the glue waits; after
    # the second, nothing is a lone Esc, and the paste still arrives whole.
    decoder.feed("\x1b")
    assert decoder.feed("[20") == [] and not decoder.lone_escape()
    assert decoder.feed("0~hi\x1b[201~") == [Paste("hi")]
    # Alt-x (ESC then x at once) is no Esc: the x is typed.
    assert decoder.feed("\x1bx") == ["\x1b", "x"] and not decoder.lone_escape()
