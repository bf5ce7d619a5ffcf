"""Invite codes: the shipped word list, making, parsing, completing, and the CPace secret."""

from __future__ import annotations

import hashlib
import os
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from msgrlib.errors import MsgrError
from msgrlib.invite import code as ic
from msgrlib.invite.code import (
    EVEN_WORDS,
    ODD_WORDS,
    InviteCode,
    InviteCodeError,
    complete,
    invite_prs,
    make_code,
    parse_code,
)
from msgrlib.invite.pgpwords import PGP_WORDS, WORDLIST_SHA256

FUZZ = settings(max_examples=int(os.environ.get("MSGR_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


def pinned(*values: int):
    return lambda n: bytes(values[:n])


# --- the word list ----------------------------------------------------------------------------

def test_word_list_is_the_pgp_list_as_magic_wormhole_ships_it():
    assert len(PGP_WORDS) == 256
    lines = "\n".join(f"{e.lower()} {o.lower()}" for e, o in PGP_WORDS)
    assert hashlib.sha256(lines.encode()).hexdigest() == WORDLIST_SHA256
    # Spot checks against the published list (Wikipedia, "PGP word list").
    assert PGP_WORDS[0x00] == ("aardvark", "adroitness")
    assert PGP_WORDS[0x3C] == ("cobra", "crossover")
    assert PGP_WORDS[0x3B] == ("clockwork", "councilman")
    assert PGP_WORDS[0xFF] == ("Zulu", "Yucatan")


def test_words_are_distinct_lowercase_ascii_and_the_two_lists_do_not_overlap():
    assert len(set(EVEN_WORDS)) == len(set(ODD_WORDS)) == 256
    assert not set(EVEN_WORDS) & set(ODD_WORDS)
    assert all(re.fullmatch("[a-z]+", w) for w in EVEN_WORDS + ODD_WORDS)


# --- making codes -----------------------------------------------------------------------------

def test_make_code_known_answer_odd_word_first_then_even():
    code = make_code(7, pinned(0x3C, 0x3B))
    assert str(code) == "7-crossover-clockwork"
    assert code == InviteCode(7, ("crossover", "clockwork"))
    assert code.secret_bits == 16


def test_make_code_uses_one_byte_per_word_and_more_words_alternate():
    code = make_code(123456, pinned(0, 0, 0, 0xFF), words=4)
    assert code.words == ("adroitness", "aardvark", "adroitness", "zulu")


@pytest.mark.parametrize("nameplate", [0, -1, ic.MAX_NAMEPLATE + 1, True, "7"])
def test_make_code_refuses_a_bad_nameplate(nameplate):
    with pytest.raises(InviteCodeError):
        make_code(nameplate, os.urandom)


@pytest.mark.parametrize("words", [0, 1, ic.MAX_WORDS + 1])
def test_make_code_refuses_too_few_or_too_many_words(words):
    with pytest.raises(InviteCodeError):
        make_code(7, os.urandom, words=words)


def test_make_code_refuses_randomness_of_the_wrong_length():
    with pytest.raises(ValueError):
        make_code(7, lambda n: b"\x00")


def test_every_byte_round_trips_in_each_position():
    for b in range(256):
        for pair in ((b, 0), (0, b)):
            code = make_code(1, pinned(*pair))
            assert parse_code(str(code)) == code


@FUZZ
@given(st.integers(1, ic.MAX_NAMEPLATE), st.binary(min_size=2, max_size=2))
def test_made_codes_parse_back(nameplate, raw):
    code = make_code(nameplate, lambda n: raw)
    assert parse_code(str(code)) == code


# --- parsing what people type -----------------------------------------------------------------

@pytest.mark.parametrize("typed", [
    "7-crossover-clockwork",
    "  7 Crossover  CLOCKWORK ",
    "7\tcrossover\tclockwork",
    "007-crossover-clockwork",
    "7\u2014crossover\u2013clockwork",      # em and en dash from autocorrect
    "\uff17-\uff43rossover-clockwork",     # full-width digit and letter (NFKC)
    "7_crossover.clockwork",
    "7--crossover - clockwork",
])
def test_parse_normalises_case_spaces_and_dashes(typed):
    assert parse_code(typed) == InviteCode(7, ("crossover", "clockwork"))


@pytest.mark.parametrize("typed, fragment", [
    ("", "empty"),
    ("   ", "empty"),
    ("crossover-clockwork", "starts with its number"),
    ("x-crossover-clockwork", "not a number"),
    ("0-crossover-clockwork", "1..999999"),
    ("1000000-crossover-clockwork", "1..999999"),
    ("7-crossover", "this one has 1 word"),
    ("7", "this one has 0 words"),
    ("7-crossover-clockwork-cobra", "this one has 3 words"),
    ("7-crosover-clockwork", "did you mean 'crossover'"),
    ("7-crossover-clokwork", "did you mean 'clockwork'"),
    ("7-clockwork-crossover", "order you were given"),
    ("7-zzzzzz-clockwork", "not in the word list"),
    ("7-crossover-clockwork\x1b[2J", "U+001B"),
    ("7-cross\u200bover-clockwork", "U+200B"),
    ("7-crossover-clockwork\u202e", "U+202E"),
    ("\u0667-crossover-clockwork", "not a number"),   # Arabic-Indic digit: not ASCII
    ("7-" + "a" * 300, "too long"),
])
def test_parse_errors_are_one_clear_line(typed, fragment):
    with pytest.raises(InviteCodeError) as info:
        parse_code(typed)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in message)
    assert "\u202e" not in message and "\u200b" not in message


def test_parse_refuses_non_text():
    with pytest.raises(InviteCodeError):
        parse_code(b"7-crossover-clockwork")  # type: ignore[arg-type]


def test_a_word_typed_with_escapes_is_shown_escaped():
    with pytest.raises(InviteCodeError) as info:
        parse_code("7-crossover-\x07bell")
    assert "\x07" not in str(info.value)


@FUZZ
@given(st.text(max_size=80))
def test_parse_any_text_gives_a_code_or_our_error(text):
    try:
        code = parse_code(text)
    except InviteCodeError as exc:
        assert isinstance(exc, MsgrError) and str(exc)
    else:
        assert parse_code(str(code)) == code


@FUZZ
@given(st.integers(1, ic.MAX_NAMEPLATE), st.binary(min_size=2, max_size=2),
       st.lists(st.sampled_from([" ", "-", "  ", "\u2014", " - ", "_"]), min_size=3,
                max_size=3),
       st.lists(st.booleans(), min_size=64, max_size=64))
def test_parse_ignores_case_and_separator_choice(nameplate, raw, seps, upper):
    code = make_code(nameplate, lambda n: raw)
    parts = str(code).split("-")
    text = seps[0] + parts[0] + seps[1] + parts[1] + seps[2] + parts[2]
    flags = (upper + [False] * len(text))[:len(text)]
    text = "".join(c.upper() if u else c for c, u in zip(text, flags, strict=True))
    assert parse_code(text) == code


# --- tab completion ---------------------------------------------------------------------------

def test_complete_first_word_from_the_odd_list_with_a_dash_after():
    got = complete("7-cro")
    assert got == sorted(f"7-{w}-" for w in ODD_WORDS if w.startswith("cro"))
    assert "7-crossover-" in got


def test_complete_second_word_from_the_even_list_without_a_dash():
    got = complete("7-crossover-clo")
    assert got == sorted(f"7-crossover-{w}" for w in EVEN_WORDS if w.startswith("clo"))
    assert "7-crossover-clockwork" in got


def test_complete_normalises_what_was_typed():
    assert "7-crossover-clockwork" in complete("7 CROSSOVER Clo")


@pytest.mark.parametrize("prefix", ["", "7", "  12", "x-", "7-crossover-clockwork-",
                                    "7-nosuchword-cl", "7-clockwork-", "7-\x1b"])
def test_complete_offers_nothing_where_nothing_fits(prefix):
    assert complete(prefix) == []


def test_complete_after_the_number_offers_every_odd_word():
    assert len(complete("7-")) == 256 == len(complete("7 "))


@FUZZ
@given(st.text(max_size=40))
def test_complete_never_raises_and_only_extends(prefix):
    for option in complete(prefix):
        assert option.count("-") in (2, 3)
        if not option.endswith("-"):
            parse_code(option)


# --- the CPace secret -------------------------------------------------------------------------

def test_invite_prs_known_answer_and_documented_layout():
    code = InviteCode(7, ("crossover", "clockwork"))
    expected = hashlib.blake2b(
        b"".join(len(x).to_bytes(4, "big") + x
                 for x in (b"msgr/v1/invite-prs", b"7", b"crossover", b"clockwork")),
        digest_size=32).digest()
    assert invite_prs(code) == expected
    assert invite_prs(code).hex() == (
        "d18fef8d6bbb63776a3c45c76893c429b3f73bfdb4e48ea25d9890b952bffd71")


def test_invite_prs_depends_on_every_part():
    base = invite_prs(InviteCode(7, ("crossover", "clockwork")))
    assert invite_prs(InviteCode(8, ("crossover", "clockwork"))) != base
    assert invite_prs(InviteCode(7, ("crossover", "cobra"))) != base
    assert invite_prs(InviteCode(7, ("crossover", "clockwork", "crossover", "clockwork"))) != base
    # Typed differently, the same code gives the same secret.
    assert invite_prs(parse_code(" 007 CROSSOVER clockwork")) == base


def test_invite_code_rejects_words_from_the_wrong_list():
    with pytest.raises(InviteCodeError):
        InviteCode(7, ("clockwork", "crossover"))
