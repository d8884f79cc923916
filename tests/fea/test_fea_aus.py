"""AU vocabularies and the source AU-code parser."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from facialr1_jax.fea.aus import (
    FACS_AU_NAMES,
    FACS_AU_NUMBERS,
    PROMPT_AUS,
    AUCodeError,
    au_number,
    parse_au_codes,
    sort_aus,
)

# The prompt's 30 AUs in prompt order (docs/METHOD.md 2.3).
PROMPT_AU_ORDER = [
    1,
    2,
    4,
    5,
    6,
    7,
    9,
    10,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    22,
    23,
    24,
    25,
    26,
    27,
    28,
    29,
    30,
    31,
    32,
    43,
]


def test_prompt_aus_are_the_30_of_the_method_in_order():
    assert list(PROMPT_AUS) == [f"AU{n}" for n in PROMPT_AU_ORDER]
    assert PROMPT_AUS["AU1"] == "inner brow raiser"
    assert PROMPT_AUS["AU11"] == "nasolabial furrow deepener"
    assert PROMPT_AUS["AU25"] == "lips parted"
    assert PROMPT_AUS["AU43"] == "eyes closed"
    assert all(name and name == name.lower() for name in PROMPT_AUS.values())


def test_facs_names_cover_the_prompt_aus_and_the_unprompted_codes():
    assert set(PROMPT_AUS) < set(FACS_AU_NAMES)
    for au in ["AU8", "AU21", "AU38", "AU39", "AU41", "AU42", "AU44", "AU45", "AU46"]:
        assert au in FACS_AU_NAMES and au not in PROMPT_AUS
    assert "AU3" not in FACS_AU_NAMES and "AU40" not in FACS_AU_NAMES and "AU0" not in FACS_AU_NAMES
    numbers = [int(au[2:]) for au in FACS_AU_NAMES]
    assert numbers == sorted(numbers)
    assert set(numbers) == FACS_AU_NUMBERS
    for au, name in PROMPT_AUS.items():
        assert FACS_AU_NAMES[au] == name


@pytest.mark.parametrize(
    "value, expected",
    [
        ("9+AD19+24", ("AU9", "AU19", "AU24")),
        ("1+2+5+26+26", ("AU1", "AU2", "AU5", "AU26")),
        ("L12", ("AU12",)),
        ("R14", ("AU14",)),
        ("T24", ("AU24",)),
        ("B4", ("AU4",)),
        ("12C", ("AU12",)),
        ("12c", ("AU12",)),
        ("R12A+R14A", ("AU12", "AU14")),
        ("1+2+4+5+L20", ("AU1", "AU2", "AU4", "AU5", "AU20")),
        ("AU12", ("AU12",)),
        ("au12", ("AU12",)),
        ("12", ("AU12",)),
        ("AU01", ("AU1",)),  # source codes: leading zeros dropped (unlike the reward)
        ("AU 12, AU4", ("AU4", "AU12")),
        ("AU1,AU2; AU4  AU6", ("AU1", "AU2", "AU4", "AU6")),
        ("5B+26", ("AU5", "AU26")),
        (["AU1", "AU2"], ("AU1", "AU2")),
        (["1+2", ["L12", 25]], ("AU1", "AU2", "AU12", "AU25")),
        (("AU26", "AU10", "AU2"), ("AU2", "AU10", "AU26")),  # numeric, not string, order
        (12, ("AU12",)),
        (None, ()),
        ("", ()),
        ("  ", ()),
        ("null", ()),
        ("None", ()),
        ("NaN", ()),
        ([], ()),
        ([None, "null"], ()),
        ("AU45", ("AU45",)),  # real FACS code outside the 30
    ],
)
def test_parse_au_codes(value, expected):
    assert parse_au_codes(value) == expected


@pytest.mark.parametrize(
    "value, token",
    [
        ("foo", "foo"),
        ("1+x", "x"),
        ("12F", "12F"),  # intensity letters stop at E
        ("A12", "A12"),
        ("AU", "AU"),
        ("AU3", "AU3"),  # no AU3 in FACS
        ("0", "0"),
        ("99", "99"),
        ("AU12.5", "AU12.5"),
        (["AU1", "brow"], "brow"),
        ("AU١٢", "AU١٢"),  # Arabic-Indic digits are not AU numbers
    ],
)
def test_junk_codes_raise_naming_token_and_input(value, token):
    with pytest.raises(AUCodeError) as caught:
        parse_au_codes(value)
    assert caught.value.token == token
    assert caught.value.value == value
    message = str(caught.value)
    assert repr(token) in message and repr(value) in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("value", [True, 1.0, {"AU1": 1}, b"AU1"])
def test_wrong_types_raise(value):
    with pytest.raises(AUCodeError):
        parse_au_codes(value)


def test_au_number():
    assert au_number("AU12") == 12
    assert au_number("L12") == 12
    assert au_number("AD19") == 19
    assert au_number(4) == 4
    with pytest.raises(AUCodeError):
        au_number("1+2")
    with pytest.raises(AUCodeError):
        au_number("")


def test_sort_aus_is_numeric_and_unique():
    assert sort_aus(["AU10", "AU2", "AU2", "AU1"]) == ("AU1", "AU2", "AU10")


_NUMBERS = st.sampled_from(sorted(FACS_AU_NUMBERS))
_SIDES = st.sampled_from(["", "L", "R", "T", "B", "U", "l", "r"])
_MARKERS = st.sampled_from(["", "AU", "au", "Au", "AD"])
_INTENSITIES = st.sampled_from(["", "A", "B", "C", "D", "E", "c"])


@st.composite
def _source_code(draw):
    number = draw(_NUMBERS)
    zeros = "0" * draw(st.integers(0, 2))
    return number, draw(_SIDES) + draw(_MARKERS) + zeros + str(number) + draw(_INTENSITIES)


@given(
    st.lists(_source_code(), max_size=8),
    st.sampled_from(["+", ",", " ", ", ", ";", " + "]),
    st.booleans(),
)
def test_any_decorated_combination_parses_to_its_numbers(codes, separator, as_list):
    tokens = [token for _, token in codes]
    value = tokens if as_list else separator.join(tokens)
    expected_numbers = sorted({number for number, _ in codes})
    assert parse_au_codes(value) == tuple(f"AU{n}" for n in expected_numbers)
