"""Property test: on arbitrary text (any Unicode, mixed with tag and AU fragments), the jitted
rewards equal the oracle. Each example is a batch, scored with the shared compiled function."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from facialr1_jax.fea.emotions import EMOTIONS

FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "<THINK>", "</thin\u212a>", "AU", "au", "AU12",
             "AU01", "AU120", "12", "0", "\u00a0", "\u2028", "\n", " ", "fear", "Happy.", "\u017fad", "\ufffd"]

piece = st.one_of(st.text(max_size=12), st.sampled_from(FRAGMENTS), st.sampled_from(EMOTIONS))
completion = st.lists(piece, max_size=10).map("".join)
row = st.tuples(
    completion,
    st.one_of(st.none(), st.sampled_from(EMOTIONS + ("Fear!", "xyz"))),
    st.lists(st.sampled_from(["AU1", "AU4", "AU12", "AU0", "AU99"]), max_size=4),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(row, min_size=1, max_size=48))
def test_arbitrary_text_matches_the_oracle(bundled_tokenizer, bundled_reward_fns, oracle_check, rows):
    reward_fn = bundled_reward_fns("normalized")
    id_lists = [bundled_tokenizer.encode(text, add_special_tokens=False)[:128] for text, _, _ in rows]
    labels = [label for _, label, _ in rows]
    aus = [truth for _, _, truth in rows]
    problems = oracle_check(reward_fn, bundled_tokenizer, id_lists, labels, aus)
    assert not problems, "\n".join(problems[:3])
