"""msgrlib: everything behind ``msgr.py``, in one package whose folders show the design.

Protocol logic is sans-I/O (frames in, frames and events out); sockets, TLS and
the terminal live in thin layers around it. ARCHITECTURE.md is the map:

* :mod:`msgrlib.protocol`, :mod:`msgrlib.ratelimit`, :mod:`msgrlib.limits`,
  :mod:`msgrlib.errors`: what both sides of the wire share;
* :mod:`msgrlib.relay`: the relay (``rules`` sans-I/O, ``server`` asyncio);
* :mod:`msgrlib.client`: the chat client (``core`` sans-I/O, ``connection`` asyncio);
* :mod:`msgrlib.crypto`: CPace, the handshake, the double ratchet, the static box;
* :mod:`msgrlib.tls`: certificates, SSL contexts, pinning and known_hosts;
* :mod:`msgrlib.ui`: line mode and the curses chat screen;
* :mod:`msgrlib.invite`, :mod:`msgrlib.transfer`: invite codes and file transfer;
* :mod:`msgrlib.util`: names, safe text, log lines, addresses, exit codes.

The public API is re-exported by ``msgr`` itself: ``msgr.start_relay``,
``msgr.open_chat``, ``msgr.RelayConfig``...
"""
