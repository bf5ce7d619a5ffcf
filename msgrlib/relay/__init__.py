"""The relay: ``rules`` (sans-I/O: names, limits, routing), ``config`` (every limit with
its reason), ``store`` (the TTL heap), ``server`` (asyncio: sockets, timers, batched
writes), ``tlsconn`` (TLS over memory BIOs), ``engine`` (several relays on Redis/Valkey)."""
