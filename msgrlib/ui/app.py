"""The chat screen's glue: one asyncio loop around the view and the terminal.

:class:`App` runs the :class:`~msgrlib.client.connection.ChatClient`, a reader
on the stdin fd that drains curses ``get_wch()`` (through the
:class:`~msgrlib.ui.view.PasteDecoder`, so a paste is one message), a ticker
for countdowns and expiry, and signal handlers (Ctrl-C, SIGTERM, SIGHUP end the
chat cleanly; SIGWINCH redraws).

A message disappears from the screen when its TTL ends (a received one at the
relay's expiry time, one of yours at its TTL from when you sent it); the chat
runs on the alternate screen, so nothing is left in the scrollback at exit.

The screen holds one conversation (one client) at a time. ``/invite`` replaces an
idle one with an invite's client on the same relay (``ChatClient.for_invite``);
``view.InviteFlow`` (one table, ``INVITE_TRANSITIONS``) follows that invite and
tells the activity line what it waits for. An invite that ends before a chat
(cancelled, expired, burned, refused) leaves the screen open with no client.

Importing this module raises :class:`ImportError` where :mod:`curses` is
missing; ``msgr.py`` then falls back to line mode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import locale
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from msgrlib.client.connection import ChatClient
from msgrlib.client.events import (
    Notice,
    Received,
    SessionStarted,
    TransferEvent,
    Undelivered,
)
from msgrlib.client.invite import InviteError, InviteReady, PeerJoined
from msgrlib.errors import MsgrError
from msgrlib.ui import linemode
from msgrlib.ui.options import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    STATIC_WARNING,
    TTL_MAX,
    TTL_MIN,
    ChatOptions,
    address,
    derive_key,
    make_client,
)
from msgrlib.ui.terminal import Painter, Terminal
from msgrlib.ui.view import (
    ERROR,
    ESC_PAUSE,
    HELP,
    STATUS_LABEL,
    WARN,
    ChatView,
    InviteState,
    PasteDecoder,
    handle_key,
    parse_command,
)

#: Seconds to wait for the client to say goodbye to the relay at exit.
CLOSE_TIMEOUT = 2.0


# -- the glue --------------------------------------------------------------------------

class App:
    """Run one chat on a started :class:`Terminal`; see the module docstring."""

    def __init__(self, options: ChatOptions, terminal: Terminal, *,
                 unicode: bool, colours: bool,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.options = options
        self.terminal = terminal
        self.now = wallclock
        self.view = ChatView(me=options.user or "you", peer=options.peer or "peer",
                             address=address(options.host, options.port),
                             tls=options.tls is not None, ttl=options.ttl,
                             static=options.static, unicode=unicode)
        self.painter = Painter(terminal.stdscr, colours=colours)
        self.client: ChatClient | None = None
        self.pending: list[str] = []      # typed before the client existed
        self._told_full = False           # the input line is full: said once
        self.exit_code = EXIT_OK
        self.quit_warned = False
        self._quit: asyncio.Event | None = None
        self._draw_scheduled = False
        self._full_redraw = False
        self.paste = PasteDecoder()
        #: Transfers shown on screen, by id; the offer waiting for /accept or /decline.
        self._transfers: dict[str, _Shown] = {}
        self._offered: tuple[str, Any] | None = None
        #: The current conversation's client task and its event reader (``/invite``
        #: replaces them); ``_changed`` wakes the main loop when it does.
        self._running: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._replaced = False   # /invite replaced the first conversation
        self._esc_timer: asyncio.TimerHandle | None = None

    # -- main ---------------------------------------------------------------------------

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self._quit = asyncio.Event()
        loop.set_exception_handler(self._on_loop_error)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal)
        loop.add_signal_handler(signal.SIGWINCH, self._on_resize)
        loop.add_reader(self.terminal.fd, self._on_keys)
        ticker = loop.create_task(self._ticker())
        try:
            return await self._chat()
        finally:
            ticker.cancel()
            if self._esc_timer is not None:
                self._esc_timer.cancel()
            loop.remove_reader(self.terminal.fd)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH):
                loop.remove_signal_handler(sig)

    async def _chat(self) -> int:
        import kdf

        assert self._quit is not None
        loop = asyncio.get_running_loop()
        now = self.now()
        if self.options.static:
            self.view.info(STATIC_WARNING, WARN, now=now)
        for warning in self.options.warnings:
            self.view.info(warning, WARN, now=now)
        quitting = loop.create_task(self._quit.wait())
        self._changed = asyncio.Event()
        if self.options.invite:
            self.view.invite.go("invite", joining=self.options.invite_code is not None)
            client = self._invite_client(self.options.invite_code)
        else:
            params = self.options.kdf_params or kdf.DEFAULT_PARAMS
            self.view.progress = (f"deriving the key from the passcode (Argon2id, "
                                  f"{params.memory_kib // 1024} MiB)")
            self.draw()
            deriving = loop.create_task(asyncio.to_thread(derive_key, self.options, None))
            await asyncio.wait({deriving, quitting}, return_when=asyncio.FIRST_COMPLETED)
            if not deriving.done():
                return self.exit_code   # the thread ends on its own within a second
            key = deriving.result()
            self.view.progress = ""
            client = self.client = make_client(self.options, key)
        client.core.ttl = self.view.ttl
        if not self.options.static and client.core.transfers is None:
            from msgrlib.transfer import Transfers
            client.core.transfers = Transfers()   # /send, /accept, /decline
        self._start(client)
        for text in self.pending:
            self._send(text)
        self.pending.clear()
        self.draw()
        try:
            while True:
                running = self._running
                changed = loop.create_task(self._changed.wait())
                try:
                    await asyncio.wait({quitting, changed} | ({running} if running else set()),
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                self._changed.clear()
                if quitting.done():
                    break
                if running is None or running is not self._running or not running.done():
                    continue   # /invite replaced the conversation, or ended it
                if not self._ended_in_place(running):
                    running.result()   # the reason it stopped: an error for msgr.py to print
                    return EXIT_ERROR
            client = self.client   # type: ignore[assignment]
            if client is None:     # an invite ended: no conversation to close
                return self.exit_code
            running = self._running
            assert running is not None
            client.core.cancel_transfers("the other side left the chat")
            client.poke()
            if self.exit_code == EXIT_OK:
                # /quit: the receipts owed for lines just shown may still wait
                # (paced under the relay's rates); leaving before them would have
                # the peer report a message we showed as not delivered.
                end = loop.time() + CLOSE_TIMEOUT
                while (not client.core.quiet() and client.core.connected
                       and not running.done() and loop.time() < end):
                    await asyncio.sleep(0.05)
            client.close()
            try:
                await asyncio.wait_for(running, CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, MsgrError):
                pass
            return self.exit_code
        finally:
            # However the chat ends (a relay's permanent refusal, an error), a transfer
            # still running is cancelled: a receiver's partial file never stays on disk.
            quitting.cancel()
            if self.client is not None:
                self.client.core.cancel_transfers("the other side left the chat")
            if self._reader is not None:
                self._reader.cancel()
            if self._running is not None and not self._running.done():
                assert self.client is not None
                self.client.close()
                self._running.cancel()

    # -- the conversation's client (one at a time; /invite replaces it) --------------------

    def _invite_client(self, code: Any) -> ChatClient:
        """A client for an invite (``code`` None: make one) on the screen's relay."""
        from msgrlib.transfer import Transfers

        return ChatClient.for_invite(code, host=self.options.host, port=self.options.port,
                                     tls=self.options.tls, transfers=Transfers(),
                                     ttl=self.view.ttl)

    def _start(self, client: ChatClient) -> None:
        loop = asyncio.get_running_loop()
        self.client = client
        self._running = loop.create_task(client.run())
        self._reader = loop.create_task(self._events(client))
        if self._changed is not None:
            self._changed.set()

    def _retire(self) -> None:
        """Let the current client go (it says bye in the background): the screen has no
        conversation until :meth:`_start` gives it another."""
        client, running, reader = self.client, self._running, self._reader
        self.client = self._running = self._reader = None
        self._offered = None
        self._transfers.clear()
        if client is None or running is None:
            return
        self._let_go(client, "the conversation was closed before it was confirmed")
        client.core.cancel_transfers("the conversation was closed")
        client.close()

        async def wait_out() -> None:
            await asyncio.wait({running}, timeout=CLOSE_TIMEOUT)
            if not running.done():
                running.cancel()
                await asyncio.wait({running})
            if not running.cancelled():
                running.exception()   # retrieved: it ended as it was told to
            if reader is not None:
                reader.cancel()

        task = asyncio.get_running_loop().create_task(wait_out())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        if self._changed is not None:
            self._changed.set()

    def _ended_in_place(self, running: asyncio.Task[None]) -> bool:
        """The current client stopped by itself. An invite that could not go on (expired,
        cancelled, refused, lost before the other side came) leaves the screen open with
        no conversation, saying why; True then. False: the chat is over (the caller
        raises the error for msgr.py)."""
        flow = self.view.invite
        error = None if running.cancelled() else running.exception()
        if isinstance(error, InviteError):
            event = {"cancelled": "cancelled", "expired": "expired"}.get(error.code, "failed")
        elif isinstance(error, MsgrError) and self._replaced:
            event = "failed"   # /invite's own connection: the screen stays
        else:
            return False
        if not flow.can(event):
            return False
        flow.go(event, reason=str(error))
        assert self.client is not None
        self._let_go(self.client, "the invite ended before it was confirmed")
        self.client = self._running = None
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        self.view.connection, self.view.detail = "idle", ""
        self.view.peer_online = None
        self.view.info(str(error), WARN if event == "cancelled" else ERROR, now=self.now())
        self.draw()
        return True

    def _let_go(self, client: ChatClient, reason: str) -> None:
        """A conversation leaves the screen: what you sent in it and is not confirmed is
        shown as not delivered now (never left hanging, never lost silently)."""
        client.core.give_up(reason)
        unmet = client.rendezvous is not None and not client.rendezvous.done
        for event in client.core.take_events():
            if unmet and isinstance(event, Undelivered):
                # (the core would blame the relay: an invite's core is offline until joined)
                event = dataclasses.replace(event, reason="nobody joined the invite before "
                                            "it ended")
            self.view.apply(event, now=self.now())

    async def _events(self, client: ChatClient) -> None:
        async for event in client.events():
            if client is not self.client:
                return   # replaced by /invite: its news no longer belongs on screen
            flow, now = self.view.invite, self.now()
            if isinstance(event, TransferEvent):
                self._on_transfer(event)
            elif isinstance(event, InviteReady):
                # The relay handed out the code, so it is connected: what is awaited
                # now is the other side (the client says "connected" once they come).
                self.view.connection = "connected"
                if flow.can("allocated"):
                    flow.go("allocated", code=event.code, expires_at=now + event.ttl)
                self.view.info(f"your invite code is  {event.code}  - on the other side run "
                               "msgr chat --join and type it (relay "
                               f"{self.view.address}; it works once, for {event.ttl:g} s; "
                               "/cancel gives it up)", WARN, now=now)
            elif isinstance(event, Received) and client.core.invite:
                # The peer's routing name is random: the screen calls them "peer".
                self.view.apply(dataclasses.replace(event, sender=self.view.peer), now=now)
            elif isinstance(event, PeerJoined):
                if flow.can("joined"):
                    flow.go("joined")
                self.view.info("the other side is here; starting the secure session",
                               now=now)
            else:
                if isinstance(event, SessionStarted) and flow.can("session"):
                    flow.go("session")
                elif (isinstance(event, Notice) and event.code == "invite_burned"
                      and flow.can("burned")):
                    flow.go("burned", reason=event.text)
                self.view.apply(event, now=now)
            self.draw()

    async def _ticker(self) -> None:
        """Redraw for countdowns and the spinner; wake exactly when a message expires."""
        while True:
            delay = 0.1 if self.view.busy else 0.5 if self.view.lines else 1.0
            expiry = self.view.next_expiry()
            if expiry is not None:
                delay = min(delay, max(0.01, expiry - self.now()))
            await asyncio.sleep(delay)
            self.view.ticks += 1
            self.draw()

    # -- drawing ------------------------------------------------------------------------

    def draw(self) -> None:
        """Redraw soon (several requests in one loop iteration draw once)."""
        if not self._draw_scheduled:
            self._draw_scheduled = True
            asyncio.get_running_loop().call_soon(self._draw_now)

    def _draw_now(self) -> None:
        self._draw_scheduled = False
        if self.terminal.stdscr is None:
            return
        self._sync()
        now = self.now()
        self.view.expire(now)
        height, width = self.terminal.stdscr.getmaxyx()
        self.painter.paint(self.view.render(width, height, now), full=self._full_redraw)
        self._full_redraw = False

    def _sync(self) -> None:
        """Copy what the status bar shows from the client."""
        if self.client is None:
            return
        core, view = self.client.core, self.view
        view.peer_online = core.peer_online
        view.can_reconnect = True   # the client exists: Ctrl-R works
        view.verified = core.verified
        view.ttl = core.ttl
        # The relay's frame limit, checked as the user types (not only at Enter).
        max_bytes = getattr(core, "max_text_bytes", None)
        if isinstance(max_bytes, int):
            view.input.max_bytes = max_bytes
        if self.client.fingerprint:
            view.fingerprint = self.client.fingerprint
        if core.session is not None:
            view.session_id = core.session.sid
            view.safety_number = core.safety_number

    # -- input --------------------------------------------------------------------------

    def _on_keys(self) -> None:
        self._sync()   # the relay's limits, for the input line
        keys = [item for key in self.terminal.read_keys() for item in self.paste.feed(key)]
        if self._esc_timer is not None:
            self._esc_timer.cancel()
            self._esc_timer = None
        if self.paste.pending == "\x1b":   # Esc alone, or a paste marker's start
            self._esc_timer = asyncio.get_running_loop().call_later(ESC_PAUSE, self._on_esc)
        for key in keys:
            action = handle_key(self.view, key)
            if action is None:
                continue
            what, text = action
            if what == "submit":
                self._submit(text)
            elif what == "send":
                # The line holds a paste: a message as it is, never a command.
                self._told_full = False
                if text.strip():
                    self._send_or_hold(text)
            elif what == "reconnect":
                self._reconnect()
            elif what == "quit":
                self._request_quit()
            elif what in ("redraw", "resize"):
                if what == "resize":
                    self.terminal.resize()
                self._full_redraw = True
            elif what == "full" and not self._told_full:
                self._told_full = True  # once per message (a paste may be many keys)
                self.view.info(f"{text}: the rest was not added", WARN, now=self.now())
        self.draw()

    def _on_esc(self) -> None:
        """Esc (nothing followed it): gives up an invite waiting for the other side."""
        self._esc_timer = None
        if self.paste.lone_escape() and self.view.invite.state in (
                InviteState.ASKING, InviteState.WAITING, InviteState.CANCELLING):
            self._cancel(self.now())
            self.draw()

    def _submit(self, line: str) -> None:
        self._told_full = False
        command = parse_command(line)
        if command is None:
            return
        now = self.now()
        view, client = self.view, self.client
        name, arg = command.name, command.arg
        if name != "quit":
            self.quit_warned = False
        if name == "send":
            self._send_or_hold(arg)
        elif name == "quit":
            self._request_quit()
        elif name == "help":
            view.info("\n".join(HELP), now=now, multiline=True)

        elif name == "unknown":
            view.info(f"unknown command /{arg}: nothing was sent", ERROR, now=now)
            view.info("\n".join(HELP), now=now, multiline=True)
        elif name == "error":
            view.info(arg + ": nothing was sent", ERROR, now=now)
        elif name == "ttl":
            if arg:
                view.ttl = int(arg)
                if client is not None:
                    client.core.ttl = view.ttl
                    client.poke()
                view.info(f"messages you send from now on last {arg} s", now=now)
            else:
                view.info(f"messages you send last {view.ttl} s; /ttl SECONDS "
                          f"({TTL_MIN}-{TTL_MAX}) changes it", now=now)
        elif name == "status":
            self._sync()
            pending = len(client.core.unsettled()) if client is not None else 0
            mode = ("static: one key from the passcode" if self.options.static
                    else "ratchet: a fresh handshake per session, forward secrecy")
            view.info("\n".join(view.status_lines(mode=mode, pending=pending)), now=now,
                      multiline=True,
                      hang=STATUS_LABEL)
        elif name == "clear":
            view.clear()
        elif name == "verify":
            self._verify(arg, now)
        elif name == "file":
            asyncio.get_running_loop().create_task(self._send_file(arg))
        elif name in ("accept", "decline"):
            self._answer(name == "accept")
        elif name == "invite":
            self._invite(now)
        elif name == "cancel":
            self._cancel(now)

    # -- /invite and /cancel: a conversation by invite code, in place of an idle one ------

    def _busy(self) -> str:
        """Why the current conversation must not be replaced ("" when it is idle)."""
        client = self.client
        if client is None:
            return ""
        core = client.core
        if self.view.invite.state is InviteState.BURNED:
            return ""   # a burned invite's conversation can never start
        pending = len(core.unsettled())
        if pending:
            return f"{pending} message(s) you sent are not confirmed yet"
        if self._transfers or self._offered is not None:
            return "a file transfer is under way"
        if core.peer_online:
            return f"{self.view.peer} is online in this chat"
        return ""

    def _invite(self, now: float) -> None:
        view, flow = self.view, self.view.invite
        if self.options.static:
            view.info("an invite needs a handshake, which --static chats do not make: run "
                      "msgr chat --invite in another terminal", WARN, now=now)
            return
        if self._changed is None or (self.client is None and not flow.ended):
            view.info("/invite works once the chat has started", WARN, now=now)
            return
        if flow.active:
            view.info("an invite is under way already"
                      + (f" (code {flow.code})" if flow.code else "")
                      + ": /cancel gives it up", WARN, now=now)
            return
        busy = self._busy()
        if busy:
            view.info(f"/invite replaces this conversation, and it is in use ({busy}): "
                      "finish it and /quit, or run msgr chat --invite in another terminal",
                      WARN, now=now)
            return
        if self.client is not None:
            view.info(f"left the chat with {view.peer} for the invite", now=now)
        self._retire()
        self._replaced = True
        flow.go("invite")
        view.new_conversation(me="you", peer="peer")
        view.info(f"asking {view.address} for an invite code: a new conversation, under a "
                  "random name, with whoever types it", now=now)
        client = self._invite_client(None)
        client.core.ttl = view.ttl
        self._start(client)

    def _cancel(self, now: float) -> None:
        view, flow, client = self.view, self.view.invite, self.client
        if flow.state is InviteState.WAITING and client is not None \
                and client.cancel_invite():
            flow.go("cancel")
            view.info(f"cancelling the invite {flow.code}: asking the relay to free its "
                      "number", now=now)
        elif flow.state in (InviteState.ASKING, InviteState.WAITING):
            # No number yet (or the connection is away): hanging up frees whatever the
            # relay gave this connection.
            flow.go("cancel" if flow.state is InviteState.ASKING else "cancelled",
                    reason="the invite was cancelled")
            self._retire()
            view.connection, view.detail = "idle", ""
            view.info("invite cancelled: the connection was closed, which frees its number "
                      "at the relay", WARN, now=now)
        elif flow.state is InviteState.CANCELLING:
            # Asked once and the relay has not answered (a hostile or stuck one would
            # leave the screen waiting for good): hanging up frees the number too.
            flow.go("cancelled", reason="the invite was cancelled")
            self._retire()
            view.connection, view.detail = "idle", ""
            view.info("invite cancelled: the relay had not answered, so the connection was "
                      "closed, which frees its number at the relay", WARN, now=now)
        else:
            view.info("nothing to cancel: /cancel gives up an invite still waiting for the "
                      "other side", WARN, now=now)

    # -- files (/send PATH, /accept, /decline: msgrlib.transfer through the session) ------

    async def _send_file(self, path: str) -> None:
        from msgrlib.transfer import TransferError, files
        from msgrlib.transfer.messages import chunk_size_for_relay, new_transfer_id

        view, client = self.view, self.client
        if self.options.static or client is None or client.core.session is None:
            view.info("no secure session yet: files go through it (--static has none)",
                      WARN, now=self.now())
            return
        path = os.path.expanduser(path)
        prepare = files.prepare_directory if os.path.isdir(path) else files.prepare_file
        # As msgr send: the largest chunk this relay's frames (and mailbox) carry, from
        # its welcome; a fixed 64 KiB-frame chunk was refused by a relay with smaller frames.
        chunk = chunk_size_for_relay(client.limits)
        try:   # hashing a big file takes a while: not on the loop
            prepared = await asyncio.to_thread(prepare, path, new_transfer_id(os.urandom),
                                               chunk=chunk)
            client.core.send_transfer(prepared.offer, prepared.source)
        except (OSError, TransferError) as err:
            view.info(f"cannot send {path}: {getattr(err, 'strerror', None) or err}", ERROR,
                      now=self.now())
            return
        self._transfers[prepared.offer.t] = _Shown(prepared.offer, self.now(), prepared)
        client.poke()
        view.info(f"offering {prepared.offer.name} ({_size(prepared.offer.size)}) to "
                  f"{view.peer}; waiting for an answer", now=self.now())
        self.draw()

    def _on_transfer(self, news: TransferEvent) -> None:
        from msgrlib.transfer import Offered
        from msgrlib.transfer.machine import Completed, Declined, Failed, Progress

        view, now, event = self.view, self.now(), news.event
        shown = self._transfers.get(news.transfer_id)
        if isinstance(event, Offered):
            offer = event.receiver.offer
            what = ("a secret" if offer.kind == "secret" else
                    f"a {offer.kind} '{offer.name}' ({_size(offer.size)}, {offer.mime})")
            if event.receiver.problem or self._offered is not None:
                reason = event.receiver.problem or "another offer is waiting for an answer"
                event.receiver.decline(reason)
                self._answered(news.transfer_id)
                view.info(f"{view.peer} offered {what}: refused, {reason}", WARN, now=now)
                return
            self._offered = (news.transfer_id, event.receiver)
            self._transfers[news.transfer_id] = _Shown(offer, now, None)
            where = "" if offer.kind == "secret" else f" into {os.getcwd()}"
            view.info(f"{view.peer} offers {what}: /accept saves it{where}, /decline "
                      "refuses it", WARN, now=now)
        elif shown is None:
            return
        elif isinstance(event, Progress):
            view.progress = f"{shown.offer.name or 'secret'}: {_size(event.done_bytes)} of " \
                            f"{_size(event.total_bytes)}"
        elif isinstance(event, Completed):
            view.progress = ""
            sink = shown.sink
            if shown.prepared is not None:
                view.info(f"{view.peer} received {shown.offer.name or 'the secret'}", now=now)
            elif shown.offer.kind == "secret" and sink is not None:
                # The secret is content the person accepted (a key file, several lines):
                # its rows are kept, indented under this line, like a message's.
                view.info(f"secret from {view.peer}: "
                          f"{sink.take().decode('utf-8', 'replace')}", now=now,
                          multiline=True)
            elif sink is not None:
                view.info(f"received {sink.path} ({_size(shown.offer.size)}); its SHA-256 "
                          "matched", now=now)
            self._finished(news.transfer_id)
        elif isinstance(event, (Declined, Failed)):
            view.progress = ""
            view.info(f"{shown.offer.name or 'the secret'}: {event.reason} (nothing partial "
                      "was kept)", WARN, now=now)
            self._finished(news.transfer_id)

    def _answer(self, yes: bool) -> None:
        from msgrlib.transfer import TransferError
        from msgrlib.transfer.files import DirectorySink, FileSink, MemorySink
        from msgrlib.transfer.messages import fit_window, mailbox_bytes_of

        view, now = self.view, self.now()
        if self._offered is None or self.client is None:
            view.info("nothing is offered to you now", WARN, now=now)
            return
        tid, receiver = self._offered
        self._offered = None
        if receiver.is_finished():
            view.info("that offer is over already", WARN, now=now)
            return
        offer = receiver.offer
        sink: Any = None
        if yes:
            try:
                if offer.kind == "secret":
                    sink = MemorySink(max_size=offer.size)
                elif offer.kind == "directory":
                    sink = DirectorySink(os.getcwd(), offer.name, size=offer.size)
                else:
                    sink = FileSink(os.getcwd(), offer.name, size=offer.size)
            except TransferError as err:
                view.info(f"{err}: declined", WARN, now=now)
        if sink is None:
            receiver.decline("the receiver declined")
        else:
            self._transfers[tid] = _Shown(offer, now, None, sink)
            limits = self.client.limits
            messages = limits.get("mailbox_messages") if isinstance(limits, dict) else None
            window = fit_window(offer.chunk, mailbox_bytes=mailbox_bytes_of(limits),
                                mailbox_messages=messages if type(messages) is int else 1000)
            receiver.accept(sink, time.monotonic(), window=window)
            view.info(f"accepted {offer.name or 'the secret'}", now=now)
        self._answered(tid)

    def _answered(self, tid: str) -> None:
        assert self.client is not None
        self.client.core.transfer_answered(tid)
        self.client.poke()

    def _finished(self, tid: str) -> None:
        shown = self._transfers.pop(tid, None)
        close = getattr(getattr(shown, "prepared", None), "source", None)
        if close is not None and hasattr(close, "close"):
            close.close()

    def _send_or_hold(self, text: str) -> None:
        if self.view.invite.ended:   # (a burned invite's client is still connected)
            self.view.input.restore(text)
            self.view.info("no conversation now: nothing was sent (/invite starts one)",
                           ERROR, now=self.now())
        elif self.client is None:
            self.pending.append(text)   # typed before the key was ready
        else:
            self._send(text)

    def _send(self, text: str) -> None:
        assert self.client is not None
        try:
            n = self.client.send(text)
        except MsgrError as err:
            # Never lose what was typed: it goes back to the input line.
            self.view.input.restore(text)
            self.view.info(f"{err}: nothing was sent; the text is back in the input line",
                           ERROR, now=self.now())
            return
        self.view.add_own(n, text, now=self.now(), ttl=self.client.core.ttl)

    def _reconnect(self) -> None:
        """Ctrl-R: try the relay now instead of waiting for the next retry."""
        if self.client is None:
            return   # still deriving the key: not connecting yet
        if self.client.reconnect_now():
            self.view.info("reconnecting now (Ctrl-R)", now=self.now())
        else:
            self.view.info("Ctrl-R reconnects while the relay is away; the client is not "
                           "waiting to reconnect now", now=self.now())

    def _verify(self, arg: str, now: float) -> None:
        self._sync()
        view = self.view
        if self.options.static:
            view.info("--static mode has no session and no safety number to compare",
                      WARN, now=now)
        elif view.session_id is None or view.safety_number is None:
            view.info(f"no secure session yet: it starts when {view.peer} is online; "
                      "then /verify shows the safety number", WARN, now=now)
        elif arg == "ok":
            assert self.client is not None
            self.client.core.mark_verified()
            view.verified = True
            view.info("session marked verified (until the session changes)", now=now)
        else:
            view.info(f"safety number: {view.safety_number}\n"
                      f"compare it with {view.peer}'s screen over another channel (in "
                      "person, or a call where you know the voice). If it is the same, type "
                      "/verify ok. If not, someone may be in the middle: stop, and check the "
                      "passcode and the relay.", now=now, multiline=True)

    def _request_quit(self) -> None:
        """/quit or Ctrl-D: leave, but ask once if messages are still unconfirmed."""
        client = self.client
        pending = len(client.core.unsettled()) if client is not None else len(self.pending)
        if pending and not self.quit_warned:
            self.quit_warned = True
            self.view.info(f"{pending} message(s) not confirmed yet: /quit again (or "
                           "Ctrl-C) to leave anyway", WARN, now=self.now())
            return
        self.exit_code = EXIT_OK
        assert self._quit is not None
        self._quit.set()

    def _on_signal(self) -> None:
        self.exit_code = EXIT_INTERRUPTED
        assert self._quit is not None
        self._quit.set()

    def _on_resize(self) -> None:
        self.terminal.resize()
        self._full_redraw = True
        self.draw()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Tracebacks on stderr would scribble over the screen; show one line instead.
        error = context.get("exception")
        self.view.info(f"internal error: {context.get('message')}"
                       + (f": {error!r}" if error else ""), ERROR, now=self.now())
        self.draw()


class _Shown:
    """One transfer on screen: its offer, and the sender's source or the receiver's sink."""

    def __init__(self, offer: Any, since: float, prepared: Any, sink: Any = None) -> None:
        self.offer = offer
        self.since = since
        self.prepared = prepared
        self.sink = sink


def _size(n: int) -> str:
    from msgrlib.transfer.progress import format_bytes

    return format_bytes(n)


def _utf8(stdscr: Any) -> bool:
    """Whether curses can draw non-ASCII text. Not locale.getpreferredencoding():
    Python's UTF-8 mode says "utf-8" in the C locale, where curses cannot."""
    try:
        import codecs
        return codecs.lookup(stdscr.encoding).name == "utf-8"
    except (AttributeError, LookupError):
        return False


def run(options: ChatOptions) -> int:
    """The full-screen chat; returns the exit code (0 after /quit, 130 after
    Ctrl-C or a signal). Errors (:class:`MsgrError`) propagate after the
    terminal is restored, for ``msgr.py`` to print as one line.

    Falls back to the line interface when stdin or stdout is not a terminal.
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return linemode.run_lines(options, interactive=sys.stdin.isatty())
    try:
        locale.setlocale(locale.LC_ALL, "")   # so curses draws UTF-8
    except locale.Error:
        pass   # an unknown locale in the environment: ASCII only (see _utf8)
    os.environ.setdefault("ESCDELAY", "25")   # Esc sequences: do not wait a whole second
    colours = not os.environ.get("NO_COLOR")
    terminal = Terminal()
    terminal.start()
    try:
        app = App(options, terminal, unicode=_utf8(terminal.stdscr), colours=colours)
        return asyncio.run(app.main())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        terminal.stop()
