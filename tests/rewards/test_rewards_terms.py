"""Reward terms, registry, configuration and the public API around the jitted function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import grpo as grpo_config
from facialr1_jax.fea import answers as oracle
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.rewards import (
    REWARDS,
    RewardTerm,
    encode_ground_truth,
    make_reward_fn,
    register_reward,
    score_texts,
    settings_from_config,
)
from facialr1_jax.rewards import scan, terms


# ---------------------------------------------------------------------------- configuration
def test_settings_from_the_grpo_config():
    settings = settings_from_config(grpo_config.get_config("qwen2_5_vl_7b").rewards)
    assert settings.weights == {"format": 1.0, "accuracy": 1.0, "au": 1.0, "length": 0.0, "repetition": 0.0}
    # The demo weighs the AU term double (configs/grpo.py).
    assert settings_from_config(grpo_config.get_config().rewards).weights["au"] == 2.0
    assert (settings.accuracy_mode, settings.au_mode) == ("normalized", "2f1-1")
    assert settings.clamp == (-10.0, 10.0)
    assert terms.active_terms(settings) == ["format", "accuracy", "au"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"formatt_weight": 1.0}, "unknown reward config key"),
        ({"accuracy_mode": "fuzzy"}, "accuracy_mode 'fuzzy'"),
        ({"au_mode": "f2"}, "au_mode 'f2'"),
        ({"clamp": -1.0}, "clamp must be >= 0"),
        ({"clamp": (3.0, -3.0)}, "lower bound 3.0 exceeds upper bound -3.0"),
        ({"length_target": -5}, "length_target must be >= 0"),
        ({"repetition_ngram": 0}, "repetition_ngram must be >= 1"),
    ],
)
def test_bad_settings_are_rejected_with_their_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        settings_from_config(None, **overrides)


def test_clamp_forms():
    assert settings_from_config(None, clamp=2.5).clamp == (-2.5, 2.5)
    assert settings_from_config(None, clamp=0).clamp is None
    assert settings_from_config(None, clamp=None).clamp is None
    assert settings_from_config(None, clamp=(-1, 3)).clamp == (-1.0, 3.0)


def _analysis(batch, **fields):
    defaults = dict(
        format_match=jnp.zeros(batch, bool),
        answer_found=jnp.zeros(batch, bool),
        outcome=jnp.zeros(batch, jnp.int32),
        think_closed=jnp.zeros(batch, bool),
        au_predicted=jnp.zeros(batch, jnp.int32),
        au_matched=jnp.zeros(batch, jnp.int32),
        au_truth=jnp.zeros(batch, jnp.int32),
    )
    defaults.update({k: jnp.asarray(v) for k, v in fields.items()})
    return scan.Analysis(**defaults)


def _inputs(analysis, settings, label_ids, accepts, empty, ids=None, mask=None):
    batch = label_ids.shape[0]
    ids = jnp.zeros((batch, 4), jnp.int32) if ids is None else ids
    mask = jnp.ones((batch, 4), bool) if mask is None else mask
    return terms.TermInputs(
        result=analysis,
        ids=ids,
        mask=mask,
        label_ids=jnp.asarray(label_ids),
        au_multi_hot=jnp.zeros((batch, 100), bool),
        labels=terms.LabelArrays(jnp.asarray(accepts), jnp.asarray(empty)),
        settings=settings,
    )


def test_accuracy_term_labels_missing_empty_and_out_of_range():
    accepts = np.array([[False, False], [True, False]])  # outcome 1 = label 0 correct
    empty = np.array([False, True])
    analysis = _analysis(4, outcome=[1, 1, 0, 1])
    values = terms.accuracy_term(_inputs(analysis, settings_from_config(), np.array([0, -1, 1, 7]), accepts, empty))
    assert values[0] == 1.0 and values[1] == oracle.NO_LABEL_ACCURACY and values[2] == oracle.NO_LABEL_ACCURACY
    assert np.isnan(values[3])  # an id outside the vocabulary must not pass silently


@pytest.mark.parametrize("mode", ["2f1-1", "f1"])
def test_au_term_matches_the_oracle_formula_on_set_sizes(mode):
    cases = [(p, m, t) for t in range(0, 4) for p in range(0, 5) for m in range(0, min(p, t) + 1)]
    predicted, matched, truth = (np.array(c) for c in zip(*cases))
    analysis = _analysis(len(cases), au_predicted=predicted, au_matched=matched, au_truth=truth)
    settings = settings_from_config(None, au_mode=mode)
    values = np.asarray(terms.au_term(_inputs(analysis, settings, np.zeros(len(cases), np.int32), [[False]], [False])))
    for value, (p, m, t) in zip(values, cases):
        # Build sets with exactly these sizes and ask the oracle.
        truth_set = [f"AU{i}" for i in range(t)]
        predicted_set = truth_set[:m] + [f"AU{50 + i}" for i in range(p - m)]
        text = "<think>" + " ".join(predicted_set) + "</think>"
        assert value == pytest.approx(oracle.au_reward(text, truth_set, mode), abs=1e-6)


def test_total_is_the_clamped_weighted_sum_of_reported_terms():
    analysis = _analysis(
        2, format_match=[True, False], outcome=[1, 0], au_truth=[1, 1], au_predicted=[1, 0], au_matched=[1, 0]
    )
    accepts, empty = np.array([[False], [True]]), np.array([False])
    weights = dict(format_weight=4.0, accuracy_weight=4.0, au_weight=4.0)
    out = terms.compute_terms(
        _inputs(analysis, settings_from_config(None, **weights), np.array([0, 0]), accepts, empty)
    )
    np.testing.assert_allclose(out["total"], [10.0, -4.0])  # 12 clamped to 10; 0 + 0 - 4
    out = terms.compute_terms(
        _inputs(analysis, settings_from_config(None, clamp=None, **weights), np.array([0, 0]), accepts, empty)
    )
    np.testing.assert_allclose(out["total"], [12.0, -4.0])
    assert set(out) == {"format", "accuracy", "au", "total", "au_predicted", "au_matched", "au_truth"}


def test_length_and_repetition_terms_match_their_references():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 6, (64, 24)).astype(np.int32)
    mask = rng.random((64, 24)) < 0.8  # holes included: the kept tokens are taken in order
    mask[:4] = False
    settings = settings_from_config(
        None, length_weight=-0.5, length_target=10, repetition_weight=1.0, repetition_ngram=3
    )
    labels = np.zeros(64, np.int32)
    inputs = _inputs(_analysis(64), settings, labels, [[False]], [False], jnp.asarray(ids), jnp.asarray(mask))
    lengths = np.asarray(terms.length_term(inputs))
    repetition = np.asarray(terms.repetition_term(inputs))
    for row in range(64):
        kept = ids[row][mask[row]].tolist()
        assert lengths[row] == terms.length_reference(len(kept), 10)
        assert repetition[row] == pytest.approx(terms.repetition_reference(kept, 3), abs=1e-6)
    out = terms.compute_terms(inputs)
    assert {"length", "repetition"} <= set(out)
    # format, accuracy and au are 0 here, so the total is the two optional terms, clamped.
    np.testing.assert_allclose(out["total"], np.clip(-0.5 * lengths + repetition, -10, 10), atol=1e-5)


def test_registry_holds_the_terms_and_accepts_new_ones(monkeypatch):
    assert list(REWARDS) == ["format", "accuracy", "au", "length", "repetition"]
    with pytest.raises(ValueError, match="already registered"):
        register_reward(RewardTerm("format", terms.format_term, "again"))
    monkeypatch.setitem(REWARDS, "bonus", RewardTerm("bonus", lambda i: jnp.ones(i.label_ids.shape), "constant"))
    settings = settings_from_config(None, bonus_weight=2.0, clamp=None)
    out = terms.compute_terms(_inputs(_analysis(3), settings, np.full(3, -1), [[False]], [False]))
    np.testing.assert_allclose(out["bonus"], 1.0)
    np.testing.assert_allclose(out["total"], 2.0 + 0.5 + 0.0)  # bonus + missing-label accuracy


# ------------------------------------------------------------------------------ public API
def test_encode_ground_truth_accepts_canonical_aus_only():
    multi_hot = encode_ground_truth([["AU1", "au12", "AU12"], [], None])
    assert multi_hot.shape == (3, 100)
    assert multi_hot[0].nonzero()[0].tolist() == [1, 12] and not multi_hot[1:].any()
    for bad in ["AU01", "L12", "AU100", "12", "AU"]:
        with pytest.raises(ValueError, match=f"row 1: ground-truth AU '{bad}'"):
            encode_ground_truth([["AU1"], [bad]])
    with pytest.raises(TypeError, match="got the string 'AU1'"):
        encode_ground_truth(["AU1"])


def test_reward_fn_api_shapes_no_recompilation_and_use_inside_jit(trained_tokenizer):
    reward_fn = make_reward_fn(trained_tokenizer, EMOTIONS, repetition_weight=0.5)
    texts = ["<think>brows (AU4) and AU01</think>\n<answer>Anger.</answer>", "fear", "<think>AU12</think>"]
    id_lists = [trained_tokenizer.encode(t, add_special_tokens=False) for t in texts]
    ids = np.zeros((4, 64), np.int32)
    mask = np.zeros((4, 64), bool)
    for row, sequence in enumerate(id_lists):
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = True
    labels = np.array([EMOTIONS.index("anger"), EMOTIONS.index("fear"), -1, -1], np.int32)
    truth = encode_ground_truth([["AU4"], [], ["AU12", "AU1"], None])
    out = reward_fn(ids, mask, labels, truth)
    assert set(out) == {"format", "accuracy", "au", "repetition", "total", "au_predicted", "au_matched", "au_truth"}
    assert all(v.shape == (4,) for v in out.values())
    for row, text in enumerate(texts):
        expected = oracle.total_reward(text, reward_fn.labels[labels[row]] if labels[row] >= 0 else None,
                                       [f"AU{n}" for n in truth[row].nonzero()[0]])
        for name in ("format", "accuracy", "au"):
            assert float(out[name][row]) == pytest.approx(expected[name], abs=1e-6)
    reward_fn(ids + 0, mask, labels, truth)
    assert reward_fn._jitted._cache_size() == 1  # same shapes: no second compile

    # `apply` traces inside a larger function taking the tables as an argument (shape check only:
    # `reward_fn` itself runs `jax.jit(apply)`).
    inside = jax.eval_shape(
        lambda tables, *args: reward_fn.apply(tables, *args)["total"] * 2, reward_fn.tables, ids, mask, labels, truth
    )
    assert inside.shape == (4,) and inside.dtype == jnp.float32

    with pytest.raises(ValueError, match=r"mask shape \(4, 63\) differs"):
        reward_fn(ids, mask[:, :63], labels, truth)
    with pytest.raises(ValueError, match=r"label_ids must be \[4\]"):
        reward_fn(ids, mask, labels[:3], truth)
    with pytest.raises(ValueError, match=r"au_multi_hot must be \[4, cap\]"):
        reward_fn(ids, mask, labels, truth[:2])
    with pytest.raises(ValueError, match="not in the reward's label vocabulary"):
        reward_fn.label_id("bored")
    assert reward_fn.label_id(None) == reward_fn.label_id("  ") == -1


def test_score_texts_with_the_bundled_tokenizer():
    texts = [
        "<think>The brows are lowered (AU4), lips pressed (au24).</think>\n<answer>Angry!</answer>",
        "<think>cheeks raised (AU6) (AU12) (AU120)</think><answer>happiness</answer>",
        "no tags at all, just happy",
        "",
        "<think>AU6</think><answer>anger</answer><|im_end|>",  # the special-token string is text here
    ]
    labels = ["anger", "Happiness", "happiness", None, "anger"]
    aus = [["AU4", "AU24"], ["AU6", "AU12"], ["AU6"], [], ["AU6"]]
    for accuracy_mode, au_mode in [("normalized", "2f1-1"), ("exact", "f1")]:
        out = score_texts(texts, labels, aus, accuracy_mode=accuracy_mode, au_mode=au_mode)
        assert set(out) == {"format", "accuracy", "au", "total"}
        for row, text in enumerate(texts):
            expected = oracle.total_reward(text, labels[row], aus[row], accuracy_mode=accuracy_mode, au_mode=au_mode)
            for name in out:
                assert float(out[name][row]) == pytest.approx(expected[name], abs=1e-6), (name, text)
    with pytest.raises(ValueError, match="2 texts, 1 labels and 2 AU lists"):
        score_texts(texts[:2], labels[:1], aus[:2])
