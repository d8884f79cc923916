"""The character-level automata of the rewards, each the exact counterpart of one oracle rule.

  format_machine    FORMAT_PATTERN.fullmatch: final_value 1 iff the text matches.
  content_machine   the accuracy comparison of one prediction: final_value = the outcome of the
                    text read so far (which labels it equals, `LabelOutcomes`).
  answer_machine    ANSWER_PATTERN.findall, left to right: when a closing "</answer>" completes a
                    match it emits 1 + the outcome of that match's content. The reward uses the
                    last emission, or the content machine run over the whole text when nothing
                    was emitted (no tag pair: the whole text is the prediction).
  think_au_machine  THINK_PATTERN.search + AU_MENTION_PATTERN.findall on the upper-cased content
                    of the first think block: emits DIGIT d / END operations that spell the AU
                    numbers; final_value 1 iff a closing think tag was found (else P = {}).

All read class ids of an `alphabet.Alphabet`; their letters come from the classes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np

from facialr1_jax.fea import answers as oracle
from facialr1_jax.fea import emotions as fea_emotions
from facialr1_jax.rewards import automata
from facialr1_jax.rewards.alphabet import (
    OTHER,
    PRINTABLE_ASCII,
    TRAILING_PUNCTUATION,
    WRAPPING_CHARACTERS,
    WS,
    Alphabet,
)

OPEN_THINK, CLOSE_THINK = "<think>", "</think>"
OPEN_ANSWER, CLOSE_ANSWER = "<answer>", "</answer>"

# Outputs of the think/AU machine.
OP_NONE, OP_END = 0, 1
OP_DIGIT0 = 2  # OP_DIGIT0 + d appends ASCII digit d to the AU number being read


_MACHINE_CACHE: dict[tuple, tuple[object, automata.Machine]] = {}


def _cached_per_alphabet(builder: Callable) -> Callable:
    """Memoises a machine builder per alphabet object (and the other, hashable, arguments).
    Alphabets are themselves cached (`alphabet.build_alphabet`), so tests and repeated
    `make_reward_fn` calls build each machine once per process."""

    @functools.wraps(builder)
    def wrapper(alphabet: Alphabet, *args):
        key = (builder.__name__, id(alphabet)) + tuple(_cache_key(a) for a in args)
        if key not in _MACHINE_CACHE:
            _MACHINE_CACHE[key] = ((alphabet, args), builder(alphabet, *args))
        return _MACHINE_CACHE[key][1]

    return wrapper


def _cache_key(argument):
    if isinstance(argument, automata.Machine):
        return id(argument)
    if isinstance(argument, LabelOutcomes):
        return (argument.labels, argument.mode)
    return argument


def _is_whitespace_letter(letter: str) -> bool:
    return letter == WS or (len(letter) == 1 and letter.isspace())


# --------------------------------------------------------------------------------- format
@_cached_per_alphabet
def format_machine(alphabet: Alphabet) -> automata.Machine:
    """`<think>.*?</think>\\s*<answer>.*?</answer>` as a full match (DOTALL). Laziness does not
    change whether a full match exists, so this is the plain regular language."""
    letters = sorted({c.tag for c in alphabet.classes})
    index = {letter: i for i, letter in enumerate(letters)}
    elements: list[tuple[str, str]] = [
        ("literal", OPEN_THINK),
        ("any", ""),
        ("literal", CLOSE_THINK),
        ("space", ""),
        ("literal", OPEN_ANSWER),
        ("any", ""),
        ("literal", CLOSE_ANSWER),
    ]
    end = (len(elements), 0)

    def closure(element: int, offset: int) -> set[tuple[int, int]]:
        if element == len(elements):
            return {end}
        kind, literal = elements[element]
        if kind == "literal":
            return closure(element + 1, 0) if offset == len(literal) else {(element, offset)}
        return {(element, 0)} | closure(element + 1, 0)

    def step(position: tuple[int, int], symbol: int) -> set[tuple[int, int]]:
        element, offset = position
        if element == len(elements):
            return set()
        kind, literal = elements[element]
        letter = letters[symbol]
        if kind == "literal":
            return closure(element, offset + 1) if letter == literal[offset] else set()
        if kind == "any" or letter == WS:
            return closure(element, 0)
        return set()

    by_letter = automata.subset_construction(
        "format", frozenset(closure(0, 0)), step, len(letters), lambda states: int(end in states)
    )
    by_letter = automata.minimize(by_letter)
    return automata.lift(by_letter, [[index[c.tag]] for c in alphabet.classes], "format")


# ------------------------------------------------------------------------- label outcomes
@dataclasses.dataclass(frozen=True, eq=False)
class LabelOutcomes:
    """What the accuracy comparison needs to know about a label vocabulary.

    labels:        the label strings (label id = index).
    mode:          "normalized" or "exact".
    targets:       the finitely many prediction strings (after the mode's cleaning) that some label
                   accepts: cleaned keys (normalized) or the labels themselves (exact).
    outcome_of_target: target index -> outcome id (>= 1); outcome 0 = accepted by no label.
    accepts:       [num_outcomes, num_labels] bool.
    empty_label:   [num_labels] bool, labels the oracle treats as missing (reward 0.5).
    """

    labels: tuple[str, ...]
    mode: str
    targets: tuple[str, ...]
    outcome_of_target: tuple[int, ...]
    accepts: np.ndarray
    empty_label: np.ndarray

    @property
    def num_outcomes(self) -> int:
        return int(self.accepts.shape[0])


def label_outcomes(labels: Sequence[str], mode: str) -> LabelOutcomes:
    """Enumerates, per label, the predictions the oracle's `accuracy_reward` accepts.

    normalized: accept(p) iff key(p) == key(label) != "", key = `oracle.normalized_label_key`,
      i.e. clean(p) is a synonym of the label's emotion, or equals the label's cleaned text when
      the label names no known emotion. Those cleaned strings must be printable ASCII (see
      alphabet.NORMALIZATION_PROOF); anything else is rejected with a clear error.
    exact: accept(p) iff p == label, where p is stripped: only labels without surrounding
      whitespace can ever match.
    """
    if mode not in oracle.ACCURACY_MODES:
        raise ValueError(f"accuracy mode {mode!r} is not one of {oracle.ACCURACY_MODES}")
    labels = tuple(labels)
    for position, label in enumerate(labels):
        if not isinstance(label, str):
            raise TypeError(f"label vocabulary entry {position} is {label!r}, not a str")
    empty = np.array([oracle.label_is_empty(label) for label in labels], dtype=bool)
    accepted_by: list[set[str]] = []
    for position, label in enumerate(labels):
        if empty[position]:
            accepted_by.append(set())
        elif mode == "exact":
            accepted_by.append({label} if label == label.strip() else set())
        else:
            key = oracle.normalized_label_key(label)
            targets = {s for s, emotion in fea_emotions.EMOTION_SYNONYMS.items() if emotion == key}
            if key and key not in fea_emotions.EMOTION_SYNONYMS:
                targets.add(key)
            for target in targets:
                if not set(target) <= PRINTABLE_ASCII:
                    raise ValueError(
                        f"label {label!r} (vocabulary entry {position}) normalises to {target!r}, "
                        "which is not printable ASCII; the jitted normalised accuracy supports "
                        "ASCII label keys only (use accuracy_mode='exact' for other labels)"
                    )
            accepted_by.append(targets)
    targets = tuple(sorted(set().union(*accepted_by))) if accepted_by else ()
    signatures: dict[tuple[bool, ...], int] = {tuple([False] * len(labels)): 0}
    outcome_of_target = []
    for target in targets:
        signature = tuple(target in accepted for accepted in accepted_by)
        outcome_of_target.append(signatures.setdefault(signature, len(signatures)))
    accepts = np.array(sorted(signatures, key=signatures.get), dtype=bool).reshape(len(signatures), len(labels))
    return LabelOutcomes(labels, mode, targets, tuple(outcome_of_target), accepts, empty)


# -------------------------------------------------------------------------------- content
@_cached_per_alphabet
def content_machine(alphabet: Alphabet, outcomes: LabelOutcomes) -> automata.Machine:
    """Reads a candidate prediction; final_value = its outcome.

    normalized: the folded text must be PREFIX* key SUFFIX* with PREFIX = whitespace or wrapping
      characters, SUFFIX = those or trailing punctuation, and each space of the key standing for
      a run of whitespace: exactly the strings `clean_label_text` maps onto the key.
    exact: whitespace* label whitespace* (the `.strip()` of `extract_answer_last`).
    """
    normalized = outcomes.mode == "normalized"
    letter_sequences = [c.normalized if normalized else (c.exact,) for c in alphabet.classes]
    letters = sorted({letter for sequence in letter_sequences for letter in sequence} | {WS, OTHER})
    index = {letter: i for i, letter in enumerate(letters)}
    targets = outcomes.targets

    def is_prefix(letter: str) -> bool:
        return _is_whitespace_letter(letter) or (normalized and letter in WRAPPING_CHARACTERS)

    def is_suffix(letter: str) -> bool:
        return is_prefix(letter) or (normalized and letter in TRAILING_PUNCTUATION)

    def matches(letter: str, target_char: str) -> bool:
        if normalized and target_char == " ":
            return _is_whitespace_letter(letter)
        return letter == target_char

    def step(state, symbol: int) -> set:
        letter = letters[symbol]
        kind = state[0]
        result = set()
        if kind == "prefix":
            if is_prefix(letter):
                result.add(("prefix",))
            for i, target in enumerate(targets):
                if matches(letter, target[0]):
                    result.add(("target", i, 1))
        elif kind == "target":
            _, i, consumed = state
            target = targets[i]
            if consumed < len(target) and matches(letter, target[consumed]):
                result.add(("target", i, consumed + 1))
            if normalized and target[consumed - 1] == " " and _is_whitespace_letter(letter):
                result.add(state)  # more whitespace inside a multi-word key
            if consumed == len(target) and is_suffix(letter):
                result.add(("suffix", i))
        elif kind == "suffix" and is_suffix(letter):
            result.add(state)
        return result

    def final_value(states: frozenset) -> int:
        accepted = {
            outcomes.outcome_of_target[s[1]]
            for s in states
            if s[0] == "suffix" or (s[0] == "target" and s[2] == len(targets[s[1]]))
        }
        if len(accepted) > 1:
            raise AssertionError(f"one prediction accepted with outcomes {sorted(accepted)}")
        return accepted.pop() if accepted else 0

    by_letter = automata.subset_construction(
        f"content_{outcomes.mode}", frozenset({("prefix",)}), step, len(letters), final_value
    )
    by_letter = automata.minimize(by_letter)
    return automata.lift(
        by_letter, [[index[x] for x in sequence] for sequence in letter_sequences], by_letter.name
    )


# --------------------------------------------------------------------------------- answer
@_cached_per_alphabet
def answer_machine(alphabet: Alphabet, content: automata.Machine) -> automata.Machine:
    """`ANSWER_PATTERN.findall`: outside a match it looks for "<answer>"; inside, it feeds the
    content machine and looks for the first "</answer>". The outcome emitted at the close is the
    content machine's value just before the close tag's "<" (latched when "<" is read, because
    the tag's characters also reach the content machine until the tag is known to be complete).
    After a match the search restarts right after it, as findall does."""
    open_pattern, close_pattern = tuple(OPEN_ANSWER), tuple(CLOSE_ANSWER)

    def step(state, class_id: int):
        letter = alphabet.classes[class_id].tag
        if state[0] == "out":
            matched = automata.kmp_step(open_pattern, state[1], letter)
            if matched == len(open_pattern):
                return ("in", 0, content.start, 0), 0
            return ("out", matched), 0
        _, matched, content_state, latch = state
        if letter == close_pattern[0]:
            latch = int(content.final_value[content_state])
        matched = automata.kmp_step(close_pattern, matched, letter)
        if matched == len(close_pattern):
            return ("out", 0), 1 + latch
        next_content = int(content.next_state[content_state, class_id])
        return ("in", matched, next_content, latch if matched else 0), 0

    machine = automata.explore("answer", ("out", 0), step, alphabet.num_classes, lambda s: 0)
    return automata.minimize(machine)


# ------------------------------------------------------------------------------ think / AU
def _au_letter_step(au_state: str, letter: str) -> tuple[str, list[int]]:
    """`AU[0-9]+` found left to right without overlap, digit run taken whole."""
    if au_state == "digits":
        if letter.isdigit():
            return "digits", [OP_DIGIT0 + int(letter)]
        rest, ops = _au_letter_step("none", letter)
        return rest, [OP_END] + ops
    if au_state == "AU" and letter.isdigit():
        return "digits", [OP_DIGIT0 + int(letter)]
    if letter == "A":
        return "A", []
    if au_state == "A" and letter == "U":
        return "AU", []
    return "none", []


@_cached_per_alphabet
def think_au_machine(alphabet: Alphabet) -> automata.Machine:
    """First `<think>(.*?)</think>` (case-insensitive tags) and the AU mentions of its upper-cased
    content. States: before the first open tag; inside (AU-pattern progress x close-tag
    progress); done. Outputs: OP_DIGIT0 + d / OP_END (one per character at most); a mention is
    the digits between its first DIGIT and its END. final_value 1 iff the block was closed."""
    open_pattern, close_pattern = tuple(OPEN_THINK), tuple(CLOSE_THINK)

    def step(state, class_id: int):
        klass = alphabet.classes[class_id]
        if state[0] == "done":
            return state, OP_NONE
        if state[0] == "before":
            matched = automata.kmp_step(open_pattern, state[1], klass.think)
            if matched == len(open_pattern):
                return ("inside", "none", 0), OP_NONE
            return ("before", matched), OP_NONE
        _, au_state, matched = state
        ops: list[int] = []
        for letter in klass.upper:
            au_state, letter_ops = _au_letter_step(au_state, letter)
            ops += letter_ops
        if len(ops) > 1:
            raise AssertionError(f"class {klass} produces several AU operations {ops} in one character")
        matched = automata.kmp_step(close_pattern, matched, klass.think)
        if matched == len(close_pattern):
            return ("done",), ops[0] if ops else OP_NONE
        return ("inside", au_state, matched), ops[0] if ops else OP_NONE

    machine = automata.explore(
        "think_au", ("before", 0), step, alphabet.num_classes, lambda s: int(s[0] == "done")
    )
    return automata.minimize(machine)

