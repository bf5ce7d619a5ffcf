"""The chat client: ``core`` (sans-I/O: one chat's decisions) with its parts ``events``,
``outbox``, ``window``, ``static_mode``, ``ratchet_mode``; ``session`` (sans-I/O: the
relay session, hello to bye); ``connection`` (asyncio: connect, TLS checks, reconnect);
``identity`` (the key that owns a name at a relay). Nothing here imports the relay."""
