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


def test_arbitrary_token_bytes_and_utf8_damage(corpus, oracle_check):
    """A synthetic vocabulary of raw byte strings (every single byte, runs of continuation bytes,
    truncated and overlong sequences, surrogate and out-of-range leads, tags and AU pieces), and
    random id sequences over it: the scan's UTF-8 bookkeeping across tokens must reproduce the
    replacement-character decode exactly."""
    import random

    from facialr1_jax.rewards import TokenByteTable, make_reward_fn

    rng = random.Random(5)
    pieces = [b"<think>", b"</think>", b"<answer>", b"</answer>", b"AU", b"au", b"1", b"12", b"0",
              b"fear", b"happy", b" ", b"\n", "\u00a0".encode(), "\u2003".encode(), "\u212a".encode(),
              "\u0131".encode(), "\U0001d41f".encode(), "\u00e9".encode()]
    tokens = [bytes([b]) for b in range(256)] + pieces
    interesting = [0x80, 0x9F, 0xA0, 0xBF, 0xC0, 0xC2, 0xDF, 0xE0, 0xE2, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF]
    while len(tokens) < 600:
        size = rng.randint(1, 7)
        choices = interesting + [0x80 + rng.randrange(64), rng.randrange(128)]
        tokens.append(bytes(rng.choice(choices) for _ in range(size)))
    special = [False] * len(tokens)
    tokens.append(b"")  # a special token: decodes to nothing
    special.append(True)
    table = TokenByteTable.from_token_bytes(tokens, special)
    reward_fn = make_reward_fn(table, corpus.LABELS)

    sequences = [[rng.randrange(len(tokens) + 2) for _ in range(rng.randint(0, 128))] for _ in range(1500)]
    generator = corpus(seed=6)
    labels = [generator.label() for _ in sequences]
    aus = [generator.truth() for _ in sequences]
    # The reference text is the table's own decode (equal to real tokenizers' decode: see
    # test_rewards_bytes), scored by the oracle.
    problems = oracle_check(reward_fn, table, sequences, labels, aus)
    assert not problems, "\n".join(problems[:3])


def test_byte_damage_where_it_changes_the_rewards(corpus, oracle_check):
    """Byte-by-byte whitespace (valid, overlong, surrogate, truncated, over-long runs, split by an
    empty special token) placed where it decides a reward: between the think and answer blocks
    (format), after the answer word (accuracy) and inside an AU number (AU set). Only an exact
    UTF-8 replacement rule gets all of them right."""
    import itertools

    from facialr1_jax.rewards import TokenByteTable, make_reward_fn

    pieces = [b"<think>", b"</think>", b"<answer>", b"</answer>", b"AU1", b"2", b"x", b"fear"]
    # Multi-byte tokens that complete a character and go on with stray or ordinary bytes.
    pieces += [b"\x80\x83", b"\x80\x83\x83", b"\x83\x83", b"\x80\x83 ", b"\x9a\x80\x80", b"\xa0 \xe2",
               b"\x80\x80\x80\x80", b"\xe2\x80"]
    tokens = [bytes([b]) for b in range(256)] + pieces + [b""]
    special = [False] * (len(tokens) - 1) + [True]
    token_id = {data: i for i, data in enumerate(tokens[:-1])}
    empty = len(tokens) - 1
    table = TokenByteTable.from_token_bytes(tokens, special)
    reward_fn = make_reward_fn(table, corpus.LABELS)

    # Gaps, each a list of tokens: whitespace byte by byte (valid, overlong, surrogate, beyond
    # U+10FFFF, truncated, with extra continuation bytes), and multi-byte tokens finishing it.
    byte_by_byte = [
        b"", b" ", b"\xe2\x80\x83", b"\xc2\xa0", b"\xe3\x80\x80", b"\xe1\x9a\x80", b"\xe2\x80\xa8",
        b"\xe0\x80\xa0", b"\xf0\x80\x80\xa0", b"\xc0\xa0", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
        b"\xe2\x80", b"\xc2", b"\xe2\x80\x83\x83", b"\x83", b"\xe2\x80\x83\xe2", b"\xf0\x9f\x98\x80",
    ]
    gaps = [[bytes([b]) for b in data] for data in byte_by_byte]
    gaps += [[b"\xe2", b"\x80\x83"], [b"\xe2", b"\x80\x83\x83"], [b"\xe2\x80", b"\x83\x83"], [b"\xe2", b"\x80\x83 "],
             [b"\xe1", b"\x9a\x80\x80"], [b"\xc2", b"\xa0 \xe2"], [b"\xc2", b"\xa0 \xe2", b"\x80\x83"],
             [b"\xf0", b"\x80\x80\x80\x80"], [b"\x80\x83"]]

    def gap_ids(gap: list[bytes], split_at: int | None) -> list[int]:
        ids = [token_id[data] for data in gap]
        if split_at is not None and ids:
            ids.insert(split_at % (len(ids) + 1), empty)
        return ids

    sequences = []
    for gap, split_at in itertools.product(gaps, [None, 1, 2]):
        between = gap_ids(gap, split_at)
        think = [token_id[b"<think>"], token_id[b"x"], token_id[b"</think>"]]
        answer, close = [token_id[b"<answer>"]], [token_id[b"</answer>"]]
        sequences.append(think + between + answer + [token_id[b"fear"]] + close)  # format
        sequences.append(think + answer + [token_id[b"fear"]] + between + close)  # accuracy
        sequences.append([token_id[b"<think>"], token_id[b"AU1"]] + between + [token_id[b"2"], token_id[b"</think>"]])
    labels = ["fear"] * len(sequences)
    aus = [["AU12"]] * len(sequences)
    problems = oracle_check(reward_fn, table, sequences, labels, aus)
    assert not problems, "\n".join(problems[:3])
