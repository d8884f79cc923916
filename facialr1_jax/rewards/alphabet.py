"""Every Unicode code point, sorted into the classes that the reward automata can tell apart.

The Python rewards (`fea.answers`) look at characters through a few lenses only, and each lens is
computed here for all 0x110000 code points with the running Python's own `unicodedata`, `str`
methods and `re` engine, so the classes agree with the oracle by construction:

  tag letter        the ASCII characters of "<think>", "</think>", "<answer>", "</answer>" as
                    themselves; `str.isspace()` characters (= `\\s` in a str pattern) as WS;
                    everything else OTHER. Used by the format reward and the answer tags, which
                    are case-sensitive.
  think letter      which character of "<think>"/"</think>" a character matches under
                    re.IGNORECASE (found by running that regex over all code points: "i" also
                    matches U+0130 and U+0131, "k" also U+212A KELVIN SIGN), else OTHER.
  upper letters     `c.upper()` (which may be several characters: "ß" -> "SS") with each
                    character kept if it is "A", "U" or an ASCII digit, else OTHER. The AU
                    mention pattern `AU[0-9]+` runs on the upper-cased think content, and
                    `str.upper()` works one code point at a time, so this is exact.
  normalised letters  `unicodedata.normalize("NFKC", c).casefold()` (possibly several
                    characters: "ﬁ" -> "fi", "㎈" -> "cal"), each kept if it is printable ASCII or
                    one of the wrapping / trailing-punctuation characters of
                    `fea.emotions.clean_label_text`, WS if whitespace, else OTHER. Folding one
                    code point at a time equals folding the whole text for every text the
                    normalised accuracy can accept; `NORMALIZATION_PROOF` below states why and
                    tests/rewards check it over all code points.
  exact letters     the characters of the exact-mode labels as themselves, WS, OTHER.

Code points with the same letters under every lens form one class; a class id is what the
automata read. U+FFFD (what invalid UTF-8 decodes to) is an ordinary member of its class.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import string
import sys
import unicodedata
from collections.abc import Iterable

import numpy as np

from facialr1_jax.fea import emotions as fea_emotions

NUM_CODE_POINTS = sys.maxunicode + 1
WS = "WS"
OTHER = "OTHER"

FORMAT_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
TAG_CHARACTERS = frozenset("".join(FORMAT_TAGS))
THINK_TAG_CHARACTERS = tuple(sorted(frozenset("<think></think>")))
AU_LETTERS = frozenset("AU0123456789")
WRAPPING_CHARACTERS = frozenset(fea_emotions._WRAPPING_CHARACTERS)
TRAILING_PUNCTUATION = frozenset(fea_emotions._TRAILING_PUNCTUATION)
PRINTABLE_ASCII = frozenset(c for c in string.printable if not c.isspace()) | {" "}
NORMALIZED_CHARACTERS = PRINTABLE_ASCII | WRAPPING_CHARACTERS | TRAILING_PUNCTUATION


def fold(char: str) -> str:
    """What `clean_label_text` makes of one character before stripping: NFKC, then casefold."""
    return unicodedata.normalize("NFKC", char).casefold()


def tag_letter(char: str) -> str:
    if char in TAG_CHARACTERS:
        return char
    return WS if char.isspace() else OTHER


def upper_letters(char: str) -> tuple[str, ...]:
    return tuple(x if x in AU_LETTERS else OTHER for x in char.upper())


def normalized_letters(char: str) -> tuple[str, ...]:
    return tuple(
        WS if x.isspace() else (x if x in NORMALIZED_CHARACTERS else OTHER) for x in fold(char)
    )


def exact_letter(char: str, exact_characters: frozenset[str]) -> str:
    if char in exact_characters:
        return char
    return WS if char.isspace() else OTHER


@functools.cache
def _all_code_points_text() -> str:
    # Lone surrogates are legal in a Python str; they never come out of a UTF-8 decode but are
    # classified anyway so that the table covers every index.
    return "".join(map(chr, range(NUM_CODE_POINTS)))


@functools.cache
def think_tag_matches() -> dict[int, str]:
    """Code point -> the think-tag character it matches under re.IGNORECASE (the oracle's
    THINK_PATTERN flags), found by running the regex over every code point."""
    text = _all_code_points_text()
    matches: dict[int, str] = {}
    for tag_char in THINK_TAG_CHARACTERS:
        for match in re.finditer(re.escape(tag_char), text, re.IGNORECASE | re.DOTALL):
            code_point = match.start()
            if code_point in matches:
                raise AssertionError(
                    f"U+{code_point:04X} matches both {matches[code_point]!r} and {tag_char!r} "
                    "case-insensitively; the think-tag automaton assumes disjoint classes"
                )
            matches[code_point] = tag_char
    return matches


@dataclasses.dataclass(frozen=True)
class CharacterClass:
    """The letters one class of code points shows each automaton."""

    tag: str
    think: str
    upper: tuple[str, ...]
    normalized: tuple[str, ...]
    exact: str


@dataclasses.dataclass(frozen=True, eq=False)
class Alphabet:
    """class_of: [0x110000] int32 code point -> class id; classes[i] the letters of class i."""

    class_of: np.ndarray
    classes: tuple[CharacterClass, ...]
    exact_characters: frozenset[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def replacement_class(self) -> int:
        return int(self.class_of[0xFFFD])

    def class_ids(self, chars: Iterable[str]) -> list[int]:
        return [int(self.class_of[ord(c)]) for c in chars]


def _character_class(char: str, think: str, exact_characters: frozenset[str]) -> CharacterClass:
    return CharacterClass(
        tag=tag_letter(char),
        think=think,
        upper=upper_letters(char),
        normalized=normalized_letters(char),
        exact=exact_letter(char, exact_characters),
    )


@functools.cache
def base_alphabet() -> Alphabet:
    """Classifies all code points, with no exact-mode label characters.

    Unassigned code points (category Cn) have no case, decomposition or whitespace property, so
    they share one class (a test checks this against the str methods); only assigned code points
    and those matched by the think-tag regex are classified one by one (about 1 s).
    """
    think_matches = think_tag_matches()
    class_ids: dict[CharacterClass, int] = {}
    unassigned = _character_class(chr(0x0378), OTHER, frozenset())  # U+0378 is Cn
    class_ids[unassigned] = 0
    class_of = np.zeros(NUM_CODE_POINTS, dtype=np.int32)
    category = unicodedata.category
    for code_point in range(NUM_CODE_POINTS):
        char = chr(code_point)
        think = think_matches.get(code_point, OTHER)
        if category(char) == "Cn" and think == OTHER:
            continue
        key = _character_class(char, think, frozenset())
        class_of[code_point] = class_ids.setdefault(key, len(class_ids))
    classes = tuple(sorted(class_ids, key=class_ids.get))
    return Alphabet(class_of=class_of, classes=classes, exact_characters=frozenset())


@functools.lru_cache(maxsize=8)
def build_alphabet(exact_characters: frozenset[str] = frozenset()) -> Alphabet:
    """The base alphabet with every exact-mode label character in a class of its own (their
    exact letter is the character itself; every other code point's is WS or OTHER already)."""
    base = base_alphabet()
    if not exact_characters:
        return base
    class_ids = {klass: i for i, klass in enumerate(base.classes)}
    class_of = base.class_of.copy()
    for char in sorted(exact_characters):
        key = dataclasses.replace(base.classes[base.class_of[ord(char)]], exact=char)
        class_of[ord(char)] = class_ids.setdefault(key, len(class_ids))
    classes = tuple(sorted(class_ids, key=class_ids.get))
    return Alphabet(class_of=class_of, classes=classes, exact_characters=exact_characters)


# ---------------------------------------------------------------------------------------------
# Why folding one code point at a time is exact for the normalised accuracy
# ---------------------------------------------------------------------------------------------
NORMALIZATION_PROOF = """
The normalised accuracy accepts a prediction p iff clean(p) is one of finitely many keys (the
cleaned labels and their synonyms). The rewards require every key to be printable ASCII, so an
accepted folded text fold(p) = NFKC(p).casefold() consists only of "target" characters: printable
ASCII, whitespace, and the wrapping / trailing-punctuation characters that clean() strips.

Claim: acceptance of p is the same whether fold is applied to the whole of p or to each code point
separately and the results concatenated. casefold() maps code points independently, so only NFKC
can differ, and it differs only through canonical reordering or composition across code points.
Both need a "blocking" code point b: one whose NFKD contains a character of non-zero combining
class or a character that is the second half of a canonical composition (including the Hangul
vowel and trailing jamo).
  Check (1): fold(b) holds a non-target character for every blocking b, so per-code-point
  folding rejects any p holding one.
  Check (2): the whole-text NFKC of such a p still holds a non-target character: b's mark
  survives (casefold() of every mark holds a non-target character), or is absorbed into a
  primary composite (casefold() of every primary composite holds one too); stripping cannot
  remove it, since no blocking or composite character is whitespace.
Without blocking code points, NFKD(p) is the concatenation of per-code-point NFKDs, reordering is
the identity and no composition crosses a code-point boundary, so the two foldings are equal.
  Check (3): every whitespace code point folds to whitespace only, so stripping p before folding
  (as `extract_answer_last` does) is the same as letting the automaton skip folded whitespace.
`normalization_counterexamples()` runs checks (1)-(3) over all code points (a test asserts it
finds none with the running Python's Unicode database).
"""


def _is_target(char: str) -> bool:
    return char in NORMALIZED_CHARACTERS or char.isspace()


def composition_secondaries() -> set[int]:
    """Code points that canonical composition can attach to a preceding character."""
    secondaries = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))  # Hangul V and T jamo
    for code_point in range(NUM_CODE_POINTS):
        decomposition = unicodedata.decomposition(chr(code_point))
        if not decomposition or decomposition.startswith("<"):
            continue
        parts = [int(part, 16) for part in decomposition.split()]
        if len(parts) == 2 and unicodedata.normalize("NFC", chr(parts[0]) + chr(parts[1])) == chr(
            code_point
        ):
            secondaries.add(parts[1])
    return secondaries


def blocking_code_points(secondaries: set[int] | None = None) -> list[int]:
    """Code points whose NFKD holds a combining mark or the second half of a composition."""
    secondaries = composition_secondaries() if secondaries is None else secondaries
    blocking = []
    for code_point in range(NUM_CODE_POINTS):
        decomposed = unicodedata.normalize("NFKD", chr(code_point))
        if any(unicodedata.combining(x) or ord(x) in secondaries for x in decomposed):
            blocking.append(code_point)
    return blocking


def primary_composites() -> list[int]:
    """Code points that canonical composition can produce (Hangul syllables included)."""
    composites = list(range(0xAC00, 0xD7A4))
    for code_point in range(NUM_CODE_POINTS):
        decomposition = unicodedata.decomposition(chr(code_point))
        if not decomposition or decomposition.startswith("<"):
            continue
        parts = [int(part, 16) for part in decomposition.split()]
        if len(parts) == 2 and unicodedata.normalize("NFC", "".join(map(chr, parts))) == chr(code_point):
            composites.append(code_point)
    return composites


def normalization_counterexamples() -> list[str]:
    """Violations of checks (1)-(3) of NORMALIZATION_PROOF (empty when the proof holds)."""
    problems = []
    secondaries = composition_secondaries()
    for code_point in range(NUM_CODE_POINTS):
        char = chr(code_point)
        if (unicodedata.combining(char) or code_point in secondaries) and all(
            _is_target(x) for x in char.casefold()
        ):
            problems.append(f"mark U+{code_point:04X} casefolds to target characters only")
    for code_point in blocking_code_points(secondaries):
        if all(_is_target(x) for x in fold(chr(code_point))):
            problems.append(f"blocking U+{code_point:04X} folds to target characters only")
        if chr(code_point).isspace():
            problems.append(f"blocking U+{code_point:04X} is whitespace")
    for code_point in primary_composites():
        folded = chr(code_point).casefold()
        if all(_is_target(x) for x in folded) or chr(code_point).isspace():
            problems.append(f"composite U+{code_point:04X} casefolds to target characters only")
    for code_point in range(NUM_CODE_POINTS):
        char = chr(code_point)
        if char.isspace() and not all(x.isspace() for x in fold(char)):
            problems.append(f"whitespace U+{code_point:04X} folds to non-whitespace")
    return problems
