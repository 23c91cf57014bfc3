"""Reference codes: their alphabet, their check character and how they are read."""

from __future__ import annotations

import random
from uuid import UUID, uuid4

import pytest

from services.common.errors import InvalidArgument
from services.ledger.domain.refcodes import (
    ALPHABET,
    PAYLOAD_LENGTH,
    check_character,
    checks_out,
    claim_key,
    code_for,
    parse_code,
)


def _samples(count: int) -> list[str]:
    rng = random.Random(12)
    payloads = [
        "00000",
        "ZZZZZ",
        "0000Z",
        *("".join(rng.choice(ALPHABET) for _ in range(PAYLOAD_LENGTH)) for _ in range(count)),
    ]
    return [p + check_character(p) for p in payloads]


def test_the_alphabet_has_32_characters_none_of_them_ambiguous() -> None:
    assert len(ALPHABET) == len(set(ALPHABET)) == 32
    assert not set(ALPHABET) & set("ILOU")


@pytest.mark.parametrize("digits", _samples(300))
def test_every_single_substitution_is_caught(digits: str) -> None:
    assert checks_out(digits)
    for n, original in enumerate(digits):
        for other in ALPHABET:
            if other != original:
                assert not checks_out(digits[:n] + other + digits[n + 1 :]), (digits, n, other)


@pytest.mark.parametrize("digits", _samples(300))
def test_every_adjacent_transposition_is_caught(digits: str) -> None:
    for n in range(len(digits) - 1):
        if digits[n] != digits[n + 1]:
            swapped = digits[:n] + digits[n + 1] + digits[n] + digits[n + 2 :]
            assert not checks_out(swapped), (digits, n)


def test_the_check_catches_all_substitutions_and_swaps_of_every_two_character_code() -> None:
    # Exhaustive where it is cheap: every pair of characters followed by its check.
    for a in ALPHABET:
        for b in ALPHABET:
            digits = a + b + check_character(a + b)
            assert checks_out(digits)
            if a != b:
                assert not checks_out(b + a + digits[2])
            for other in ALPHABET:
                if other != digits[2]:
                    assert not checks_out(a + b + other)


def test_a_code_is_a_function_of_the_incident_id() -> None:
    incident = UUID("0a8f3c2e-5b1d-4e7a-9c3f-123456789abc")
    code = code_for("MKM", incident)
    assert code == code_for("MKM", incident)
    assert code.startswith("MKM-")
    assert len(code) == len("MKM-XXXX-XX")
    assert parse_code(code, "MKM") == code


def test_a_draw_after_the_first_gives_the_same_incident_other_valid_codes() -> None:
    # A report naming people keeps its id (its data is sealed for it) when it draws again.
    incident = UUID("0a8f3c2e-5b1d-4e7a-9c3f-123456789abc")
    codes = [code_for("MKM", incident, draw) for draw in range(50)]
    assert codes[0] == code_for("MKM", incident)
    assert codes[1] == code_for("MKM", incident, 1), "a function of id and draw"
    assert len(set(codes)) == 50, "each draw another code"
    assert all(parse_code(code, "MKM") == code for code in codes)


def test_the_documented_examples_are_codes() -> None:
    for example in ("MKM-7QK3-9V", "MKM-8R2M-4P"):
        assert parse_code(example, "MKM") == example


def test_codes_are_read_leniently() -> None:
    code = code_for("MKM", uuid4())
    sloppy = code.lower().replace("-", " ")
    assert parse_code(sloppy, "MKM") == code
    zero_one = code_for("MKM", UUID(int=(1 << 20) | 1))  # payload 10001
    assert parse_code(zero_one.replace("0", "o").replace("1", "l"), "MKM") == zero_one
    assert parse_code(zero_one.replace("1", "I"), "MKM") == zero_one
    # Copied from a document or typed on a phone: an en dash, a minus sign, spaces around.
    assert parse_code(code.replace("-", "\u2013"), "MKM") == code
    assert parse_code(code.replace("-", " \u2212 "), "MKM") == code


def test_a_code_read_out_without_its_prefix_is_the_code() -> None:
    code = code_for("MKM", uuid4())
    bare = code.removeprefix("MKM-")
    assert parse_code(bare, "MKM") == code
    assert parse_code(bare.replace("-", " ").lower(), "MKM") == code
    assert parse_code(bare.replace("-", ""), "MKM") == code
    last = bare[-1]
    with pytest.raises(InvalidArgument) as caught:  # still checked
        parse_code(bare[:-1] + ALPHABET[(ALPHABET.index(last) + 1) % 32], "MKM")
    assert caught.value.reason == "REFERENCE_MISTYPED"


def test_a_mistyped_code_is_refused_as_mistyped() -> None:
    code = code_for("MKM", uuid4())
    last = code[-1]
    wrong = code[:-1] + ALPHABET[(ALPHABET.index(last) + 1) % 32]
    with pytest.raises(InvalidArgument) as caught:
        parse_code(wrong, "MKM")
    assert caught.value.reason == "REFERENCE_MISTYPED"
    assert "mistyped" in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "XYZ-0000-00",
        "MKM-000-00",
        "MKM-0000-000",
        "MKM-00U0-00",
        "MKM-00*0-00",
        "0000-0",
        "0000-000",
    ],
)
def test_what_is_not_a_code_of_this_ledger_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_code(text, "MKM")
    assert caught.value.reason == "INVALID_FIELD"


def test_each_code_has_its_own_claim() -> None:
    codes = {code_for("MKM", uuid4()) for _ in range(200)}
    assert len({claim_key(c) for c in codes}) == len(codes)
