"""Hand-picked corner cases, each named, scored by the jitted rewards and the oracle.

They pin down the paths the random corpus reaches rarely: many distinct non-canonical AU
mentions (sorting fallback), mentions of 10+ and 27+ digits (exact rescan), mentions split by a
masked token, multi-byte characters split across tokens, case-insensitive think tags through
KELVIN SIGN and dotless i, and empty or fully masked completions.
"""

from __future__ import annotations

import numpy as np
import pytest

from facialr1_jax.fea import answers as oracle

CASES = {
    "many_non_canonical": (
        "<think>AU01 AU001 AU0001 AU00001 AU000001 AU01 AU120 AU121 AU120 AU4</think><answer>fear</answer>"
    ),
    "ten_digits": "<think>AU1234567890 AU1234567890 AU12345678901 AU1</think><answer>fear</answer>",
    "thirty_digits": "<think>AU" + "1" * 30 + " AU" + "1" * 30 + " AU" + "1" * 29 + "2 AU12</think>",
    "kelvin_and_dotless_i": "<thin\u212a>AU4 au12</th\u0131nk><answer>anger</answer>",
    "long_s_is_not_s": "<think>AU1</think><answer>\u017fad</answer>",
    "a_with_half_ring": "<think>\u1e9aU1 AU2</think><answer>sad</answer>",
    "unicode_in_numbers": "<think>AU\u0661\u0662 AU\uff11 AU3\u00e9</think><answer>sad</answer>",
    "nested_think": "<think>AU1<think>AU2</think>AU3</think><answer>neutral</answer>",
    "unclosed_think": "<think>AU1 AU2 AU4",
    "whitespace_only_answer": "<think>AU1</think><answer>\u2003\n</answer>",
    "answer_in_other_case": "<think>AU1</think><answer>SURPRISED!</answer>",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_named_case_matches_the_oracle(bundled_tokenizer, bundled_reward_fns, oracle_check, name):
    text = CASES[name]
    ids = bundled_tokenizer.encode(text, add_special_tokens=False)
    aus = [["AU1", "AU4", "AU12"]]
    problems = oracle_check(bundled_reward_fns("normalized"), bundled_tokenizer, [ids], ["fear"], aus)
    assert not problems, problems[0]


def test_a_masked_token_inside_a_mention_joins_its_digits(bundled_tokenizer, bundled_reward_fns, oracle_check):
    """Masked tokens contribute nothing, so "AU1" <masked> "2" reads as AU12."""
    encode = lambda s: bundled_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    ids = encode("<think>AU1") + encode("x") + encode("2</think>")
    mask = np.ones(128, bool)
    mask[len(encode("<think>AU1"))] = False
    problems = oracle_check(bundled_reward_fns("normalized"), bundled_tokenizer, [ids], ["fear"], [["AU12"]], [mask])
    assert not problems, problems[0]
    assert oracle.reward_aus("<think>AU12</think>") == {"AU12"}


def test_characters_split_across_tokens(bundled_tokenizer, bundled_reward_fns, oracle_check):
    """Multi-byte characters cut into single-byte tokens (as a sampler may produce them), and
    cut in the wrong places (invalid UTF-8), around tags and digits."""
    byte_tokens = {}
    for token_id in range(len(bundled_tokenizer)):
        data = bundled_reward_fns("normalized").byte_table.bytes_of(token_id)
        if len(data) == 1:
            byte_tokens.setdefault(data[0], token_id)
    encode = lambda s: bundled_tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    as_bytes = lambda s: [byte_tokens[b] for b in s.encode("utf-8")]  # noqa: E731
    sequences = [
        encode("<think>AU1") + as_bytes("\u00e9") + encode("2</think><answer>fear") + as_bytes("\u2003")
        + encode("</answer>"),
        as_bytes("<thin\u212a>") + encode("AU4</think><answer>")
        + as_bytes("\U0001d41f\U0001d41e\U0001d41a\U0001d42b") + encode("</answer>"),
        encode("<think>AU1") + as_bytes("\u00e9")[:1] + encode("2</think>") + as_bytes("\u2003")[1:],
        as_bytes("\u2028")[:2] + encode("<think>AU1</think>") + as_bytes("\u00a0")[:1],
    ]
    problems = oracle_check(
        bundled_reward_fns("normalized"), bundled_tokenizer, sequences, ["fear"] * 4, [["AU1"], ["AU4"], [], ["AU1"]]
    )
    assert not problems, "\n".join(problems)


def test_fully_masked_rows_score_like_empty_text(bundled_tokenizer, bundled_reward_fns, oracle_check):
    ids = bundled_tokenizer.encode("<think>AU1</think><answer>fear</answer>", add_special_tokens=False)
    problems = oracle_check(
        bundled_reward_fns("normalized"), bundled_tokenizer, [ids], ["fear"], [["AU1"]], [np.zeros(128, bool)]
    )
    assert not problems, problems[0]
