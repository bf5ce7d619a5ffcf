"""Invite codes ``NUMBER-word-word``: made, read back from what a person typed, completed.

A code is a nameplate (a short number the relay allocates and routes by) and words from the PGP
word list (:mod:`msgrlib.invite.pgpwords`). As in magic-wormhole, the first word comes from the
"odd" list, the second from the "even" list, and so on alternately: each word carries one byte,
so two words carry 16 bits, and a word typed in the wrong place is caught instead of silently
meaning another byte.

Everything here is pure: randomness comes in as a parameter (``randbytes(n) -> bytes``, e.g.
``os.urandom``), and nothing is printed or logged. Errors::

    MsgrError
    └── InviteCodeError        the text is not a valid code (message says what and where)

The secret a code gives CPace is :func:`invite_prs` (see its docstring and docs/transfer.md).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from msgrlib.errors import LocalError
from msgrlib.invite.pgpwords import PGP_WORDS
from msgrlib.util.safetext import escape

#: Two words = 16 bits: one online guess in 65,536 per nameplate, and the relay burns a
#: nameplate after one failed key confirmation. More words are allowed for the paranoid.
DEFAULT_WORDS = 2
MIN_WORDS = 2
MAX_WORDS = 8
#: Nameplates are what the relay hands out: 1..MAX_NAMEPLATE keeps codes short to read aloud.
MAX_NAMEPLATE = 999_999
#: Longer input is refused before any other work: a code is about 30 characters.
MAX_CODE_LENGTH = 200

#: The label that domain-separates an invite's CPace secret from every other msgr derivation.
PRS_LABEL = b"msgr/v1/invite-prs"

EVEN_WORDS: tuple[str, ...] = tuple(even.lower() for even, _ in PGP_WORDS)
ODD_WORDS: tuple[str, ...] = tuple(odd.lower() for _, odd in PGP_WORDS)
_EVEN_INDEX = {w: i for i, w in enumerate(EVEN_WORDS)}
_ODD_INDEX = {w: i for i, w in enumerate(ODD_WORDS)}

# Separators a person or an autocorrecting phone may produce between the parts: spaces, any
# dash punctuation (hyphen, en dash, em dash, minus sign...), underscores and dots.
_SEPARATOR = re.compile(r"[\s_.\-\u2010-\u2015\u2212]+")


class InviteCodeError(LocalError):
    """The text is not a valid invite code; the message says which part is wrong."""

    code = "bad_invite_code"


def words_for_position(position: int) -> tuple[str, ...]:
    """The word list used at word ``position`` (0-based): odd words first, then even, ..."""
    return ODD_WORDS if position % 2 == 0 else EVEN_WORDS


def _index_for_position(position: int) -> dict[str, int]:
    return _ODD_INDEX if position % 2 == 0 else _EVEN_INDEX


@dataclass(frozen=True)
class InviteCode:
    """A parsed code: ``nameplate`` routes, ``words`` (lower case) are the secret."""

    nameplate: int
    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if type(self.nameplate) is not int or not 1 <= self.nameplate <= MAX_NAMEPLATE:
            raise InviteCodeError(f"the number must be 1..{MAX_NAMEPLATE}")
        if not MIN_WORDS <= len(self.words) <= MAX_WORDS:
            raise InviteCodeError(f"a code has {MIN_WORDS}..{MAX_WORDS} words")
        for position, word in enumerate(self.words):
            if word not in _index_for_position(position):
                raise InviteCodeError(f"word {position + 1} is not a word of the list there")

    def __str__(self) -> str:
        return "-".join((str(self.nameplate), *self.words))

    @property
    def secret_bits(self) -> int:
        """Bits of the code that an attacker must guess (8 per word)."""
        return 8 * len(self.words)


def make_code(nameplate: int, randbytes: Callable[[int], bytes], *,
              words: int = DEFAULT_WORDS) -> InviteCode:
    """A new code for ``nameplate`` with ``words`` words, one byte of ``randbytes`` each.

    ``randbytes`` must return exactly the number of bytes asked for (``os.urandom`` does; tests
    pass a pinned one). Raises :class:`InviteCodeError` for a nameplate or word count out of
    range, ``ValueError`` if ``randbytes`` returns the wrong length.
    """
    if type(words) is not int or not MIN_WORDS <= words <= MAX_WORDS:
        raise InviteCodeError(f"a code has {MIN_WORDS}..{MAX_WORDS} words")
    raw = randbytes(words)
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != words:
        raise ValueError(f"randbytes({words}) must return {words} bytes")
    chosen = tuple(words_for_position(i)[b] for i, b in enumerate(raw))
    return InviteCode(nameplate, chosen)


def _normalise(text: str) -> str:
    """NFKC (full-width letters and digits become ASCII), lower case."""
    return unicodedata.normalize("NFKC", text).lower()


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise InviteCodeError("an invite code must be text")
    if len(text) > MAX_CODE_LENGTH:
        raise InviteCodeError(f"that is too long for an invite code ({len(text)} characters, "
                              f"at most {MAX_CODE_LENGTH})")
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn") and not ch.isspace():
            raise InviteCodeError(f"an invite code cannot contain the character U+{ord(ch):04X}")
    return _normalise(text)


def _word_error(word: str, position: int) -> InviteCodeError:
    shown = escape(word)[:40]
    other = _index_for_position(position + 1)
    if word in other:
        return InviteCodeError(
            f"{shown!r} cannot be word {position + 1} of a code; are the words in the "
            "order you were given?")
    close = difflib.get_close_matches(word, words_for_position(position), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return InviteCodeError(f"{shown!r} is not in the word list{hint}")


def parse_code(text: str, *, words: int = DEFAULT_WORDS) -> InviteCode:
    """Read a code as typed: ``"7-crossover-clockwork"``, ``" 7 Crossover  CLOCKWORK "``,
    ``"7—crossover—clockwork"`` (em dashes from autocorrect) all give the same code.

    Rules: the number comes first, in ASCII digits after NFKC normalisation (so full-width
    digits are fine), no sign, 1..``MAX_NAMEPLATE``; then exactly ``words`` words, each from
    the list for its position, case-insensitive. Separators are any run of spaces, dashes,
    underscores or dots. Raises :class:`InviteCodeError` with a one-line reason (a misspelt
    word gets a "did you mean" hint); the message shows typed text escaped, never raw.
    """
    if type(words) is not int or not MIN_WORDS <= words <= MAX_WORDS:
        raise InviteCodeError(f"a code has {MIN_WORDS}..{MAX_WORDS} words")
    norm = _check_text(text).strip()
    parts = [p for p in _SEPARATOR.split(norm) if p]
    if not parts:
        raise InviteCodeError("the invite code is empty")
    number, rest = parts[0], parts[1:]
    if not re.fullmatch(r"[0-9]{1,7}", number):
        raise InviteCodeError(
            f"an invite code starts with its number, like 7-{ODD_WORDS[0x3C]}-"
            f"{EVEN_WORDS[0x3B]}; {escape(number)[:40]!r} is not a number")
    nameplate = int(number)
    if not 1 <= nameplate <= MAX_NAMEPLATE:
        raise InviteCodeError(f"the number must be 1..{MAX_NAMEPLATE}")
    if len(rest) != words:
        raise InviteCodeError(f"an invite code has a number and {words} words; "
                              f"this one has {len(rest)} word{'s' if len(rest) != 1 else ''}")
    for position, word in enumerate(rest):
        if word not in _index_for_position(position):
            raise _word_error(word, position)
    return InviteCode(nameplate, tuple(rest))


def complete(prefix: str, *, words: int = DEFAULT_WORDS) -> list[str]:
    """Tab completion at a code prompt: every way to finish the word being typed.

    ``prefix`` is the text typed so far. Returns sorted full strings, each the normalised
    prefix with its last word completed, plus ``-`` when more words follow:
    ``complete("7-cro") == ["7-crossover-", "7-crusade-"]`` (whatever the list holds).
    Nothing while the number is still being typed, nothing past the last word, nothing for
    text that cannot become a code. Never raises for any ``str``.
    """
    try:
        norm = _check_text(prefix).lstrip()
    except InviteCodeError:
        return []
    # A trailing separator means the word before it is finished.
    ends_open = bool(norm) and _SEPARATOR.fullmatch(norm[-1]) is not None
    parts = [p for p in _SEPARATOR.split(norm) if p]
    if not parts or not re.fullmatch(r"[0-9]{1,7}", parts[0]):
        return []
    if len(parts) == 1 and not ends_open:
        return []  # still typing the number
    done, partial = (parts[1:], "") if ends_open else (parts[1:-1], parts[-1])
    position = len(done)
    if position >= words:
        return []
    for i, word in enumerate(done):
        if word not in _index_for_position(i):
            return []
    head = "-".join((parts[0], *done)) + "-"
    tail = "-" if position + 1 < words else ""
    return sorted(head + w + tail for w in words_for_position(position) if w.startswith(partial))


def invite_prs(code: InviteCode) -> bytes:
    """The 32-byte secret an invite gives CPace as its PRS (password-related string).

    ``BLAKE2b(digest_size=32, data = lp(b"msgr/v1/invite-prs") || lp(ASCII decimal nameplate)
    || lp(word_1) || ... || lp(word_n))``, words in lower case ASCII, ``lp`` a 4-byte
    big-endian length then the bytes (as everywhere in msgr). It replaces the Argon2id
    ``passcode_key`` of a named pair: CPace never lets anyone test guesses offline, so
    stretching 16 bits would only cost each handshake 64 MiB and a fraction of a second; the
    relay limits online guesses by burning the nameplate. The label keeps this secret apart
    from every other msgr derivation, and the nameplate in it means the same words under
    another number give an unrelated secret.
    """
    h = hashlib.blake2b(digest_size=32)
    for item in (PRS_LABEL, str(code.nameplate).encode("ascii"),
                 *(w.encode("ascii") for w in code.words)):
        h.update(len(item).to_bytes(4, "big") + item)
    return h.digest()


__all__ = [
    "DEFAULT_WORDS", "EVEN_WORDS", "MAX_CODE_LENGTH", "MAX_NAMEPLATE", "MAX_WORDS", "MIN_WORDS",
    "ODD_WORDS", "PRS_LABEL", "InviteCode", "InviteCodeError", "complete", "invite_prs",
    "make_code", "parse_code", "words_for_position",
]
