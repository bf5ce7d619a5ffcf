"""Invite codes (issue 16): ``NUMBER-word-word`` from the PGP word list, and the CPace secret
they give. Sans-I/O; the relay's nameplates and the CLI prompt are wired elsewhere."""

from msgrlib.invite.code import (
    DEFAULT_WORDS,
    MAX_NAMEPLATE,
    InviteCode,
    InviteCodeError,
    complete,
    invite_prs,
    make_code,
    parse_code,
)

__all__ = ["DEFAULT_WORDS", "MAX_NAMEPLATE", "InviteCode", "InviteCodeError", "complete",
           "invite_prs", "make_code", "parse_code"]
