"""Facial Action Units: names, and parsing of the codes that source label files use.

Two vocabularies live here:
  * `PROMPT_AUS`: the 30 AUs whose definitions the instruction prompt lists (docs/METHOD.md 2.3, in
    that order, with the names used there);
  * `FACS_AU_NAMES`: every FACS code a source annotation may carry (the main action units 1-46 and
    the head / eye position units 51-64), so the parser can tell a real but unprompted AU (AU8,
    AU21, AU38, AU45 ...) from junk.

Canonical AU names are "AU" + the decimal number without leading zeros ("AU1", "AU12"). The parser
below maps source codes onto that form. The reward (`answers.reward_aus`) does NOT go through this
parser: it compares the strings the model wrote, so a generated "AU01" is not "AU1" there
(docs/METHOD.md 6.3), while a source label "AU01" is AU1 here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# The 30 AUs the prompt defines, in prompt order (docs/METHOD.md 2.3).
PROMPT_AUS: dict[str, str] = {
    "AU1": "inner brow raiser",
    "AU2": "outer brow raiser",
    "AU4": "brow lowerer",
    "AU5": "upper lid raiser",
    "AU6": "cheek raiser",
    "AU7": "lid tightener",
    "AU9": "nose wrinkler",
    "AU10": "upper lip raiser",
    "AU11": "nasolabial furrow deepener",
    "AU12": "lip corner puller",
    "AU13": "cheek puffer",
    "AU14": "dimpler",
    "AU15": "lip corner depressor",
    "AU16": "lower lip depressor",
    "AU17": "chin raiser",
    "AU18": "lip pucker",
    "AU19": "tongue show",
    "AU20": "lip stretcher",
    "AU22": "lip funneler",
    "AU23": "lip tightener",
    "AU24": "lip pressor",
    "AU25": "lips parted",
    "AU26": "jaw drop",
    "AU27": "mouth stretch",
    "AU28": "lip suck",
    "AU29": "jaw thrust",
    "AU30": "jaw sideways",
    "AU31": "jaw clencher",
    "AU32": "lip bite",
    "AU43": "eyes closed",
}

# FACS 2002 codes outside the prompt's 30 (names as in the FACS manual's code list).
_UNPROMPTED_FACS_AUS: dict[str, str] = {
    "AU8": "lips toward each other",
    "AU21": "neck tightener",
    "AU33": "cheek blow",
    "AU34": "cheek puff",
    "AU35": "cheek suck",
    "AU36": "tongue bulge",
    "AU37": "lip wipe",
    "AU38": "nostril dilator",
    "AU39": "nostril compressor",
    "AU41": "lid droop",
    "AU42": "slit",
    "AU44": "squint",
    "AU45": "blink",
    "AU46": "wink",
    "AU51": "head turn left",
    "AU52": "head turn right",
    "AU53": "head up",
    "AU54": "head down",
    "AU55": "head tilt left",
    "AU56": "head tilt right",
    "AU57": "head forward",
    "AU58": "head back",
    "AU61": "eyes turn left",
    "AU62": "eyes turn right",
    "AU63": "eyes up",
    "AU64": "eyes down",
}


def au_number(au: str | int) -> int:
    """The number of one AU code ("AU12" -> 12, "L12" -> 12, "12C" -> 12, 12 -> 12)."""
    codes = parse_au_codes(au)
    if len(codes) != 1:
        raise AUCodeError(f"expected exactly one AU code, got {au!r}", token=str(au), value=au)
    return int(codes[0][2:])


def au_name(number: int) -> str:
    """The canonical name of AU `number` ("AU12")."""
    return f"AU{number}"


def sort_aus(aus: Iterable[str]) -> tuple[str, ...]:
    """Canonical AU names, unique, in numeric order (AU2 before AU10)."""
    return tuple(sorted(set(aus), key=lambda name: int(name[2:])))


FACS_AU_NAMES: dict[str, str] = {
    name: (PROMPT_AUS | _UNPROMPTED_FACS_AUS)[name]
    for name in sort_aus(PROMPT_AUS.keys() | _UNPROMPTED_FACS_AUS.keys())
}
FACS_AU_NUMBERS: frozenset[int] = frozenset(int(name[2:]) for name in FACS_AU_NAMES)


class AUCodeError(ValueError):
    """A source AU code that cannot be mapped to a FACS action unit.

    `token` is the offending piece, `value` the whole input it came from.
    """

    def __init__(self, message: str, *, token: str, value: object):
        self.token = token
        self.value = value
        super().__init__(message)


# One source code: optional side/location prefix (L left, R right, U unilateral, T top, B bottom),
# optional "AU" or "AD" (action descriptor) marker, the number, optional FACS intensity A-E.
_SOURCE_CODE = re.compile(
    r"(?P<side>[LRUTB])?(?P<kind>AU|AD)?(?P<number>[0-9]+)(?P<intensity>[A-E])?",
    re.IGNORECASE,
)
# Separators between codes in one string: "1+2+5", "AU1, AU2", "AU1 AU2", "1;2".
_SEPARATORS = re.compile(r"[+,;\s]+")
# "AU 12" is one code written with a space; join it before splitting on whitespace.
_SPACED_MARKER = re.compile(r"\b(A[UD])\s+(?=[0-9])", re.IGNORECASE)
# Spellings of "no AUs" in source files.
_EMPTY_SPELLINGS = frozenset({"", "null", "none", "nan", "n/a", "-"})


def _parse_token(token: str, value: object) -> int:
    match = _SOURCE_CODE.fullmatch(token)
    if match is None:
        raise AUCodeError(
            f"AU code {token!r} in {value!r} is not a FACS code "
            "(expected forms like AU12, 12, L12, R14, 12C, AD19)",
            token=token,
            value=value,
        )
    number = int(match["number"])
    if number not in FACS_AU_NUMBERS:
        raise AUCodeError(
            f"AU code {token!r} in {value!r}: {number} is not a FACS action unit number",
            token=token,
            value=value,
        )
    return number


def _collect_numbers(value: object, whole: object, numbers: set[int]) -> None:
    if value is None:
        return
    if isinstance(value, bool):
        # bool is an int subclass; True/False as an AU list is a data error, not AU1/AU0.
        raise AUCodeError(
            f"AU code {value!r} in {whole!r} is a boolean", token=str(value), value=whole
        )
    if isinstance(value, int):
        numbers.add(_parse_token(str(value), whole))
        return
    if isinstance(value, str):
        text = value.strip()
        if text.casefold() in _EMPTY_SPELLINGS:
            return
        text = _SPACED_MARKER.sub(r"\1", text)
        for token in _SEPARATORS.split(text):
            if token:
                numbers.add(_parse_token(token, whole))
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _collect_numbers(item, whole, numbers)
        return
    raise AUCodeError(
        f"AU codes must be a string, an integer or a list of them; got {type(value).__name__} "
        f"{value!r}",
        token=repr(value),
        value=whole,
    )


def parse_au_codes(value: object) -> tuple[str, ...]:
    """Source AU codes -> canonical names, unique, in numeric order.

    Accepts a string of codes joined by "+", ",", ";" or whitespace, an int, or a (nested) list
    of those. Side prefixes (L/R/U/T/B), intensity suffixes (A-E), leading zeros and the action
    descriptor marker AD are dropped: "9+AD19+24" -> ("AU9", "AU19", "AU24"),
    "R12A+R14A" -> ("AU12", "AU14"), "1+2+5+26+26" -> ("AU1", "AU2", "AU5", "AU26").
    None, "", "null", "none", "nan" and [] mean no AUs. Anything else raises AUCodeError naming
    the offending token and the whole input.
    """
    numbers: set[int] = set()
    _collect_numbers(value, value, numbers)
    return tuple(au_name(number) for number in sorted(numbers))
