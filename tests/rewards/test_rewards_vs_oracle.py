"""The jitted rewards equal the Python oracle (`fea.answers`) on >= 10,000 completions.

Every completion is scored twice: by `make_reward_fn(...)` on its token ids, and by
`fea.answers.total_reward` on the text the tokenizer decodes from the same ids (special tokens
skipped). Format and accuracy must be identical; the AU reward's set sizes |P| and |P & T| must be
identical and the float values equal to float32 precision (the oracle computes in float64).
Shapes are fixed per test, so each reward function compiles once.
"""

from __future__ import annotations

import numpy as np
import pytest

from facialr1_jax.rewards import make_reward_fn

WIDTH = 128


def _encode(tokenizer, triples):
    id_lists = [tokenizer.encode(text, add_special_tokens=False)[:WIDTH] for text, _, _ in triples]
    return id_lists, [label for _, label, _ in triples], [aus for _, _, aus in triples]


@pytest.mark.parametrize("accuracy_mode, count", [("normalized", 10_000), ("exact", 4_000)])
def test_completions_match_the_oracle(
    bundled_tokenizer, bundled_reward_fns, corpus, oracle_check, accuracy_mode, count
):
    """10,000 completions in the default mode, 4,000 more in the reference code's exact mode."""
    triples = corpus(seed={"normalized": 10, "exact": 11}[accuracy_mode]).triples(count)
    reward_fn = bundled_reward_fns(accuracy_mode)
    id_lists, labels, aus = _encode(bundled_tokenizer, triples)
    problems = oracle_check(reward_fn, bundled_tokenizer, id_lists, labels, aus)
    assert not problems, f"{len(problems)} mismatches, first ones:\n" + "\n".join(problems[:5])


def test_trained_tokenizer_f1_mode_and_raw_token_ids(trained_tokenizer, corpus, oracle_check):
    """A second tokenizer (digit runs kept whole, so "120" is one token; an added token outside
    the byte alphabet) with the paper's F1 form, on encoded texts and on random id sequences:
    invalid UTF-8 split across tokens, special tokens anywhere, masked gaps."""
    reward_fn = make_reward_fn(trained_tokenizer, corpus.LABELS, au_mode="f1")
    triples = corpus(seed=12).triples(1500)
    id_lists, labels, aus = _encode(trained_tokenizer, triples)

    rng = np.random.default_rng(13)
    vocab = len(trained_tokenizer)
    # Bias towards the ids of tags, digits and multi-byte pieces so random sequences hit them.
    pieces = "<think></think><answer></answer>AU1 2 AU01 é 日本 😀 \u212a \u00a0"
    interesting = sorted(set(trained_tokenizer.encode(pieces)))
    random_lists, random_masks = [], []
    for _ in range(1000):
        length = int(rng.integers(0, WIDTH + 1))
        pool = rng.integers(-2, vocab + 3, size=length)
        picks = rng.choice(interesting, size=length)
        sequence = np.where(rng.random(length) < 0.5, picks, pool).tolist()
        random_lists.append(sequence)
        random_masks.append(np.pad(rng.random(length) < 0.9, (0, WIDTH - length)))
    all_ids = id_lists + random_lists
    all_labels = labels + [corpus(seed=14).label() for _ in random_lists]
    all_aus = aus + [corpus(seed=15).truth() for _ in random_lists]
    masks = [np.arange(WIDTH) < len(s) for s in id_lists] + random_masks
    problems = oracle_check(reward_fn, trained_tokenizer, all_ids, all_labels, all_aus, masks)
    assert not problems, f"{len(problems)} mismatches, first ones:\n" + "\n".join(problems[:5])
