"""End-to-end crypto, sans-I/O: ``cpace`` (the CFRG CPace PAKE), ``handshake`` (msgr's
four-message handshake on CPace, a transition table), ``ratchet`` (the double ratchet),
``staticbox`` (the ``--static`` passcode box). Key derivation is ``kdf.py``."""
