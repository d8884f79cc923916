"""Reward terms, their registry and the reward configuration.

Each term maps a `TermInputs` (the scan result plus the batch) to a [B] float32 array. `REWARDS`
names them; the total is the clamped weighted sum over the terms with a non-zero weight
(docs/METHOD.md 6.4: configurable weights, clamped to [-10, 10] by default as in the reference
code). The three method rewards reproduce `fea.answers` exactly; `length` and
`repetition` are optional shaping terms, off by default, with pure-Python references below.

Configuration keys (`configs/grpo.py`, `c.rewards`; unknown keys are an error):
  format_weight, accuracy_weight, au_weight, length_weight, repetition_weight   floats
  accuracy_mode        "normalized" | "exact"
  au_mode              "2f1-1" | "f1"
  clamp                c > 0 -> [-c, c]; a (low, high) pair; None or 0 -> no clamp
  length_target        tokens allowed before the length term counts (-1 per extra token)
  repetition_ngram     n of the repetition term (default 3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from facialr1_jax.fea import answers as oracle
from facialr1_jax.rewards import scan


@dataclasses.dataclass(frozen=True)
class RewardSettings:
    weights: Mapping[str, float]
    accuracy_mode: str = "normalized"
    au_mode: str = "2f1-1"
    clamp: tuple[float, float] | None = oracle.DEFAULT_CLAMP
    length_target: int = 0
    repetition_ngram: int = 3


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LabelArrays:
    accepts: jax.Array  # [num_outcomes, num_labels] bool
    empty_label: jax.Array  # [num_labels] bool


@dataclasses.dataclass(frozen=True)
class TermInputs:
    result: scan.Analysis
    ids: jax.Array  # [B, T]
    mask: jax.Array  # [B, T] bool
    label_ids: jax.Array  # [B] int32, -1 = no label
    au_multi_hot: jax.Array  # [B, cap] bool
    labels: LabelArrays
    settings: RewardSettings


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    name: str
    compute: Callable[[TermInputs], jax.Array]
    description: str


def format_term(inputs: TermInputs) -> jax.Array:
    return inputs.result.format_match.astype(jnp.float32)


def accuracy_term(inputs: TermInputs) -> jax.Array:
    """1/0 by the label-outcome table; 0.5 for label id -1 or an empty label; NaN for a label id
    outside the vocabulary (so a bad id cannot pass silently into the advantages)."""
    accepts, empty = inputs.labels.accepts, inputs.labels.empty_label
    num_labels = accepts.shape[1]
    label = inputs.label_ids.astype(jnp.int32)
    in_range = (label >= 0) & (label < num_labels)
    safe = jnp.clip(label, 0, num_labels - 1)
    correct = accepts[inputs.result.outcome, safe].astype(jnp.float32)
    value = jnp.where(empty[safe], oracle.NO_LABEL_ACCURACY, correct)
    value = jnp.where(in_range, value, jnp.nan)
    return jnp.where(label == -1, oracle.NO_LABEL_ACCURACY, value).astype(jnp.float32)


def au_term(inputs: TermInputs) -> jax.Array:
    """T = {} -> 0; P = {} -> -1 ("2f1-1") or 0 ("f1"); else F1 = 2|P&T| / (|P| + |T|) (equal to
    2pr/(p+r)), reported as 2F1-1 or F1."""
    result = inputs.result
    predicted, overlap, truth = result.au_predicted, result.au_matched, result.au_truth
    f1 = 2.0 * overlap.astype(jnp.float32) / jnp.maximum(predicted + truth, 1).astype(jnp.float32)
    f1 = jnp.where(predicted > 0, f1, 0.0)
    value = 2.0 * f1 - 1.0 if inputs.settings.au_mode == "2f1-1" else f1
    return jnp.where(truth > 0, value, 0.0).astype(jnp.float32)


def completion_lengths(mask: jax.Array) -> jax.Array:
    return jnp.sum(mask.astype(jnp.int32), axis=1)


def length_term(inputs: TermInputs) -> jax.Array:
    """-(tokens beyond length_target): -max(0, L - target), L = kept completion tokens."""
    excess = completion_lengths(inputs.mask) - inputs.settings.length_target
    return -jnp.maximum(excess, 0).astype(jnp.float32)


def repetition_term(inputs: TermInputs) -> jax.Array:
    return repetition_penalty(inputs.ids, inputs.mask, inputs.settings.repetition_ngram)


def repetition_penalty(ids: jax.Array, mask: jax.Array, n: int) -> jax.Array:
    """-(share of repeated n-grams) among the kept tokens in order: -(1 - distinct / total), in
    [-1, 0]; 0 when fewer than n tokens are kept. Exact: n-grams are sorted as id tuples."""
    batch, length = ids.shape
    keep = mask.astype(bool)
    # Move kept tokens to the front, keeping their order.
    order = jnp.argsort(~keep, axis=1, stable=True)
    compact = jnp.take_along_axis(ids.astype(jnp.int32), order, axis=1)
    count = jnp.sum(keep, axis=1)
    windows = max(length - n + 1, 1)
    starts = jnp.arange(windows)
    grams = [
        jnp.take_along_axis(compact, jnp.minimum(starts + k, length - 1)[None, :].repeat(batch, 0), axis=1)
        for k in range(n)
    ]
    total = jnp.maximum(count - n + 1, 0)
    invalid = (starts[None, :] >= total[:, None]).astype(jnp.int32)
    ordered = jax.lax.sort((invalid, *grams), dimension=1, num_keys=n + 1)
    valid = ordered[0] == 0
    sorted_grams = jnp.stack(ordered[1:], axis=-1)
    new = jnp.concatenate(
        [jnp.ones((batch, 1), bool), jnp.any(sorted_grams[:, 1:] != sorted_grams[:, :-1], axis=-1)], axis=1
    )
    distinct = jnp.sum(valid & new, axis=1)
    share = 1.0 - distinct.astype(jnp.float32) / jnp.maximum(total, 1).astype(jnp.float32)
    return jnp.where(total > 0, -share, 0.0).astype(jnp.float32)


REWARDS: dict[str, RewardTerm] = {
    "format": RewardTerm("format", format_term, "1 iff the whole completion is <think>..</think> <answer>..</answer>"),
    "accuracy": RewardTerm("accuracy", accuracy_term, "last <answer> content equals the label (0.5 without label)"),
    "au": RewardTerm("au", au_term, "F1 of the AUs named in the first <think> (2F1-1 or F1)"),
    "length": RewardTerm("length", length_term, "-1 per completion token beyond length_target"),
    "repetition": RewardTerm("repetition", repetition_term, "-(share of repeated token n-grams)"),
}
# Terms reported even with weight 0 (the method's rewards, logged every step).
ALWAYS_REPORTED = ("format", "accuracy", "au")

DEFAULT_WEIGHTS = {"format": 1.0, "accuracy": 1.0, "au": 1.0, "length": 0.0, "repetition": 0.0}
_OTHER_KEYS = ("accuracy_mode", "au_mode", "clamp", "length_target", "repetition_ngram")


def register_reward(term: RewardTerm) -> None:
    """Adds a term (weight key "<name>_weight" in the config)."""
    if term.name in REWARDS:
        raise ValueError(f"reward term {term.name!r} is already registered")
    REWARDS[term.name] = term


def settings_from_config(config: Mapping | None = None, **overrides) -> RewardSettings:
    """RewardSettings from a `c.rewards`-style mapping (ConfigDict or dict), validated."""
    values = dict(config.items()) if config is not None else {}
    values.update(overrides)
    weight_keys = {f"{name}_weight": name for name in REWARDS}
    unknown = sorted(set(values) - set(weight_keys) - set(_OTHER_KEYS))
    if unknown:
        raise ValueError(
            f"unknown reward config key(s) {unknown}; known: {sorted(weight_keys) + list(_OTHER_KEYS)}"
        )
    weights = {name: float(values.get(key, DEFAULT_WEIGHTS.get(name, 0.0))) for key, name in weight_keys.items()}
    accuracy_mode = values.get("accuracy_mode", "normalized")
    if accuracy_mode not in oracle.ACCURACY_MODES:
        raise ValueError(f"rewards.accuracy_mode {accuracy_mode!r} is not one of {oracle.ACCURACY_MODES}")
    au_mode = values.get("au_mode", "2f1-1")
    if au_mode not in oracle.AU_MODES:
        raise ValueError(f"rewards.au_mode {au_mode!r} is not one of {oracle.AU_MODES}")
    clamp = _parse_clamp(values.get("clamp", oracle.DEFAULT_CLAMP))
    length_target = int(values.get("length_target", 0))
    if length_target < 0:
        raise ValueError(f"rewards.length_target must be >= 0, got {length_target}")
    ngram = int(values.get("repetition_ngram", 3))
    if ngram < 1:
        raise ValueError(f"rewards.repetition_ngram must be >= 1, got {ngram}")
    return RewardSettings(weights, accuracy_mode, au_mode, clamp, length_target, ngram)


def _parse_clamp(clamp) -> tuple[float, float] | None:
    if clamp is None:
        return None
    if isinstance(clamp, (int, float)):
        if clamp < 0:
            raise ValueError(f"rewards.clamp must be >= 0 (0 = off), got {clamp}")
        return None if clamp == 0 else (-float(clamp), float(clamp))
    low, high = (float(x) for x in clamp)
    if low > high:
        raise ValueError(f"rewards.clamp lower bound {low} exceeds upper bound {high}")
    return (low, high)


def active_terms(settings: RewardSettings) -> list[str]:
    return [name for name in REWARDS if name in ALWAYS_REPORTED or settings.weights.get(name, 0.0) != 0.0]


def compute_terms(inputs: TermInputs) -> dict[str, jax.Array]:
    settings = inputs.settings
    values = {name: REWARDS[name].compute(inputs) for name in active_terms(settings)}
    total = sum(settings.weights.get(name, 0.0) * value for name, value in values.items())
    total = jnp.asarray(total, jnp.float32)
    if settings.clamp is not None:
        total = jnp.clip(total, settings.clamp[0], settings.clamp[1])
    result = inputs.result
    return {
        **values,
        "total": total,
        "au_predicted": result.au_predicted,
        "au_matched": result.au_matched,
        "au_truth": result.au_truth,
    }


# ------------------------------------------------------------------ Python references (tests)
def length_reference(num_tokens: int, target: int) -> float:
    return -float(max(0, num_tokens - target))


def repetition_reference(tokens: Sequence[int], n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return -(1.0 - len(set(grams)) / len(grams))
