"""Unicode classes and the character-level automata, checked against the oracle without JAX.

The automata read class ids; running them over the classes of a text must give exactly what the
oracle's regular expressions give on that text. These tests run thousands of corpus texts
through the NumPy tables (`Machine.run`), so a mismatch points at an automaton rather than at the
token lifting or the scan.
"""

from __future__ import annotations

import random
import re
import sys
import unicodedata

import numpy as np
import pytest

from facialr1_jax.fea import answers as oracle
from facialr1_jax.fea.emotions import EMOTIONS, normalize_emotion
from facialr1_jax.rewards import alphabet as alphabet_lib
from facialr1_jax.rewards import automata, machines


@pytest.fixture(scope="module")
def alphabet():
    return alphabet_lib.build_alphabet()


def test_whitespace_letters_are_exactly_the_regex_and_oracle_whitespace(alphabet):
    text = alphabet_lib._all_code_points_text()
    regex_spaces = {m.start() for m in re.finditer(r"\s", text)}
    class_spaces = {cp for cp in range(sys.maxunicode + 1) if alphabet.classes[alphabet.class_of[cp]].tag == "WS"}
    assert class_spaces == regex_spaces == {ord(c) for c in oracle.WHITESPACE_CHARACTERS}


def test_think_tag_letters_follow_re_ignorecase():
    matches = alphabet_lib.think_tag_matches()
    by_letter = {}
    for code_point, letter in matches.items():
        by_letter.setdefault(letter, set()).add(code_point)
    assert by_letter["i"] == {ord("i"), ord("I"), 0x130, 0x131}
    assert by_letter["k"] == {ord("k"), ord("K"), 0x212A}
    assert by_letter["<"] == {ord("<")} and by_letter["/"] == {ord("/")}
    for letter in "thn":
        assert by_letter[letter] == {ord(letter), ord(letter.upper())}


def test_unassigned_code_points_share_the_default_class(alphabet):
    """The alphabet skips category Cn; they must behave like U+0378 under every lens."""
    reference = alphabet_lib._character_class(chr(0x0378), "OTHER", frozenset())
    for code_point in range(0, sys.maxunicode + 1, 7):
        char = chr(code_point)
        if unicodedata.category(char) == "Cn":
            assert alphabet.class_of[code_point] == 0
            assert alphabet_lib._character_class(char, "OTHER", frozenset()) == reference


def test_per_code_point_folding_is_exact_for_the_normalized_accuracy():
    """Checks (1)-(3) of alphabet.NORMALIZATION_PROOF over all code points."""
    assert alphabet_lib.normalization_counterexamples() == []


def test_classes_are_few_and_merge_equal_letters(alphabet):
    """Code points with the same letters share a class: a few hundred classes, not one each."""
    assert 100 < alphabet.num_classes < 2000
    assert len(set(alphabet.classes)) == alphabet.num_classes
    assert alphabet.class_of[0x0436] == alphabet.class_of[0x03BB]  # Cyrillic zhe, Greek lambda: OTHER everywhere


def test_exact_characters_get_their_own_classes(alphabet):
    refined = alphabet_lib.build_alphabet(frozenset("Fear!"))
    for char in "Fear!":
        klass = refined.classes[refined.class_of[ord(char)]]
        assert klass.exact == char
        assert klass.tag == alphabet.classes[alphabet.class_of[ord(char)]].tag
    untouched = [cp for cp in range(200) if chr(cp) not in "Fear!"]
    assert [refined.classes[refined.class_of[cp]] for cp in untouched] == [
        alphabet.classes[alphabet.class_of[cp]] for cp in untouched
    ]


# ------------------------------------------------------------------------ automata toolkit
def test_minimize_preserves_outputs_on_random_machines():
    rng = np.random.default_rng(0)
    for _ in range(20):
        states, classes = int(rng.integers(2, 30)), int(rng.integers(1, 5))
        machine = automata.Machine(
            "random",
            rng.integers(0, states, (states, classes)).astype(np.int32),
            rng.integers(0, 3, (states, classes)).astype(np.int32),
            rng.integers(0, 2, states).astype(np.int32),
        )
        small = automata.minimize(machine)
        assert small.num_states <= machine.num_states
        for _ in range(30):
            word = rng.integers(0, classes, int(rng.integers(0, 12))).tolist()
            state, outputs = machine.run(word)
            small_state, small_outputs = small.run(word)
            assert outputs == small_outputs
            assert machine.final_value[state] == small.final_value[small_state]


@pytest.mark.parametrize("pattern", ["</answer>", "abab", "aaa", "<think>", "aabaa"])
def test_kmp_step_is_the_longest_prefix_that_is_a_suffix(pattern):
    for matched in range(len(pattern)):
        for letter in sorted(set(pattern)) + ["x"]:
            seen = pattern[:matched] + letter
            expected = max(k for k in range(len(seen) + 1) if seen.endswith(pattern[:k]))
            assert automata.kmp_step(tuple(pattern), matched, letter) == expected


# -------------------------------------------------------------- machines against the oracle
def _au_mentions_from_run(machine, class_ids):
    state, outputs = machine.run(class_ids)
    mentions, digits = set(), ""
    for op in outputs:
        if op >= machines.OP_DIGIT0:
            digits += str(op - machines.OP_DIGIT0)
        else:
            mentions.add("AU" + digits)
            digits = ""
    return (mentions if machine.final_value[state] else frozenset()), state


@pytest.mark.parametrize("mode", ["normalized", "exact"])
def test_character_machines_agree_with_the_oracle(corpus, mode):
    labels = corpus.LABELS
    outcomes = machines.label_outcomes(labels, mode)
    exact_characters = frozenset("".join(labels)) if mode == "exact" else frozenset()
    alphabet = alphabet_lib.build_alphabet(exact_characters)
    format_machine = machines.format_machine(alphabet)
    content = machines.content_machine(alphabet, outcomes)
    answer = machines.answer_machine(alphabet, content)
    think = machines.think_au_machine(alphabet)
    generator = corpus(seed=21)
    for _ in range(3000):
        text = generator.text()
        class_ids = alphabet.class_ids(text)
        state, _ = format_machine.run(class_ids)
        assert format_machine.final_value[state] == oracle.format_reward(text), text

        _, emitted = answer.run(class_ids)
        if emitted:
            outcome = emitted[-1] - 1
        else:
            state, _ = content.run(class_ids)
            outcome = content.final_value[state]
        for label_id, label in enumerate(labels):
            expected = oracle.accuracy_reward(text, label, mode)
            if expected != 0.5:
                assert outcomes.accepts[outcome, label_id] == (expected == 1.0), (text, label)

        mentions, _ = _au_mentions_from_run(think, class_ids)
        assert mentions == oracle.reward_aus(text), text


def test_label_outcomes_follow_the_oracle_rules():
    normalized = machines.label_outcomes(("happiness", "Happy", "xyz", "", " fear"), "normalized")
    assert normalized.empty_label.tolist() == [False, False, False, True, False]
    happy = {t for t, o in zip(normalized.targets, normalized.outcome_of_target) if normalized.accepts[o, 0]}
    assert happy == {s for s in ("happy", "happiness", "joy", "joyful") if normalize_emotion(s) == "happiness"}
    # "Happy" normalises to happiness too, so both labels accept the same predictions.
    assert all(normalized.accepts[o, 0] == normalized.accepts[o, 1] for o in range(normalized.num_outcomes))
    assert "xyz" in normalized.targets and "fear" in normalized.targets
    exact = machines.label_outcomes(("happiness", " fear", "Fear!"), "exact")
    assert exact.targets == ("Fear!", "happiness")  # " fear" can never equal a stripped prediction
    with pytest.raises(ValueError, match="not printable ASCII"):
        machines.label_outcomes(("émotion",), "normalized")
    with pytest.raises(ValueError, match="accuracy mode 'loose'"):
        machines.label_outcomes(EMOTIONS, "loose")
    with pytest.raises(TypeError, match="entry 1 is 3"):
        machines.label_outcomes(("anger", 3), "exact")
