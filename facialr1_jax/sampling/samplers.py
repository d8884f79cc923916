"""Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus) sampling.

Everything here is pure jnp on a (rows, vocab) block of logits and runs inside the jitted prefill and
decode step. The filters follow the semantics of `transformers`' logits warpers, applied in the same
order (temperature, then top-k, then top-p):

* top-k keeps every token whose scaled logit is >= the k-th largest (ties at the threshold survive);
* top-p keeps the smallest set of most likely tokens whose probability mass reaches `top_p` (the most
  likely token always survives; ties at the threshold survive).

Two log-probabilities come out for every chosen token:

* `sampled`: log-prob under the distribution actually sampled from: suppressed ids removed, logits /
  temperature, top-k / top-p filtered, renormalised. For greedy decoding (a point mass) it is reported
  as `policy`.
* `policy`: log_softmax(logits / temperature) over the whole vocabulary (temperature 1 when greedy),
  nothing suppressed or filtered: the number a training forward recomputes from the same logits
  (`model.token_log_probs` at temperature 1), so it is what a GRPO importance ratio needs. The two
  differ only by the renormalisation over what suppression and top-k / top-p removed.

Suppressed tokens (the engine suppresses the image / video placeholders by default) can never be
chosen; they are removed before everything else.

Randomness: one key per row (the caller derives it with `fold_in`), so a row's draw never depends on
which other rows share the batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen. Hashable: it is a static argument of the compiled programs.

    temperature: 0 means greedy; otherwise logits are divided by it before sampling.
    top_k: keep the k most likely tokens (0 = off). top_p: nucleus mass in (0, 1] (1 = off).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p!r}")
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def create(cls, temperature: float = 1.0, top_k: int | None = 0, top_p: float | None = 1.0,
               greedy: bool = False) -> "SamplingConfig":
        """From the loose knobs of `generate` (greedy=True overrides the temperature; None = off)."""
        return cls(temperature=0.0 if greedy else temperature, top_k=0 if top_k is None else int(top_k),
                   top_p=1.0 if top_p is None else top_p)


def filter_logits(logits: jax.Array, config: SamplingConfig) -> jax.Array:
    """float32 logits of the sampling distribution: scaled by 1 / temperature, tokens outside top-k and
    top-p set to -inf. Not for greedy configs (temperature 0)."""
    if config.greedy:
        raise ValueError("filter_logits is for sampling; greedy decoding takes the argmax of the raw logits")
    scaled = logits.astype(jnp.float32) / config.temperature
    vocab = scaled.shape[-1]
    use_top_k = 0 < config.top_k < vocab
    if not use_top_k and config.top_p >= 1.0:
        return scaled
    # Both filters only need the largest logits in descending order: top-k's k of them, top-p all of
    # them (or the k that top-k left).
    ranked, _ = jax.lax.top_k(scaled, config.top_k if use_top_k else vocab)
    threshold = ranked[..., -1:]
    if config.top_p < 1.0:
        probs = jax.nn.softmax(ranked, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = jnp.sum(mass_before < config.top_p, axis=-1, keepdims=True)  # >= 1: the first is always kept
        threshold = jnp.take_along_axis(ranked, kept - 1, axis=-1)
    return jnp.where(scaled < threshold, -jnp.inf, scaled)


def _picked(log_probs: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]


def suppress_tokens(logits: jax.Array, token_ids: jax.Array | None) -> jax.Array:
    """float32 logits with the ids in `token_ids` (int32 (K,), -1 entries ignored) set to -inf."""
    logits = logits.astype(jnp.float32)
    if token_ids is None or token_ids.shape[0] == 0:
        return logits
    vocab_ids = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    banned = jnp.any(vocab_ids[None, :] == token_ids[:, None], axis=0)
    return jnp.where(banned, -jnp.inf, logits)


def choose_tokens(logits: jax.Array, row_keys: jax.Array, config: SamplingConfig,
                  suppressed: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(tokens (R,) int32, sampled log-probs (R,), policy log-probs (R,)) from logits (R, vocab).

    row_keys (R,) are PRNG keys (typed or raw uint32[2]), one per row; unused when greedy.
    suppressed: int32 ids never to choose (-1 entries ignored).
    """
    scale = 1.0 if config.greedy else config.temperature
    policy = jax.nn.log_softmax(logits.astype(jnp.float32) / scale, axis=-1)
    allowed = suppress_tokens(logits, suppressed)
    if config.greedy:
        tokens = jnp.argmax(allowed, axis=-1).astype(jnp.int32)
        chosen = _picked(policy, tokens)
        return tokens, chosen, chosen
    filtered = filter_logits(allowed, config)
    tokens = jax.vmap(jax.random.categorical)(row_keys, filtered).astype(jnp.int32)
    sampled = _picked(jax.nn.log_softmax(filtered, axis=-1), tokens)
    return tokens, sampled, _picked(policy, tokens)


def row_keys(rng: jax.Array, num_rows: int) -> jax.Array:
    """One key per output row: fold_in(rng, row). Row r of a fanned-out batch and row r of the same
    prompts repeated therefore draw from the same stream."""
    return jax.vmap(lambda row: jax.random.fold_in(rng, row))(jnp.arange(num_rows, dtype=jnp.uint32))


def step_keys(keys: jax.Array, step: jax.Array | int) -> jax.Array:
    """The keys of generated token `step` for every row: fold_in(row key, step)."""
    return jax.vmap(lambda key: jax.random.fold_in(key, step))(keys)
