"""Fixtures the integration tests share: the chat screen in tmux over a TLS relay."""

from tmuxterm import chat_term, tls_relay  # noqa: F401 (pytest fixtures, registered here)
