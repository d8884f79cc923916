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
    if 0 < config.top_k < vocab:
        # The barrier keeps XLA from rewriting a top-k whose values are only sliced into a full sort
        # of the vocabulary (hundreds of milliseconds per step on CPU).
        ranked = jax.lax.optimization_barrier(jax.lax.top_k(scaled, config.top_k)[0])  # descending
        scaled = jnp.where(scaled < ranked[..., -1:], -jnp.inf, scaled)
        if config.top_p < 1.0:
            # The nucleus lies inside the k survivors, which are already sorted.
            probs = jnp.exp(ranked - jax.nn.logsumexp(scaled, axis=-1, keepdims=True))
            mass_before = jnp.cumsum(probs, axis=-1) - probs
            kept = jnp.sum(mass_before < config.top_p, axis=-1, keepdims=True)  # >= 1: the first always stays
            scaled = jnp.where(scaled < jnp.take_along_axis(ranked, kept - 1, axis=-1), -jnp.inf, scaled)
    elif config.top_p < 1.0:
        probs = jax.nn.softmax(scaled, axis=-1)
        scaled = jnp.where(probs < nucleus_threshold(probs, config.top_p), -jnp.inf, scaled)
    return scaled


def nucleus_threshold(probs: jax.Array, top_p: float) -> jax.Array:
    """(R, 1): the smallest probability the top-p nucleus keeps, found without sorting the vocabulary.

    Sorted descending, token i is kept when the mass of the tokens before it is < top_p. With
    A(v) = the mass of tokens whose probability is > v, the kept tokens are exactly those with
    probability >= tau, tau = the smallest v with A(v) < top_p (A only changes at probability values, so
    tau is one of them). A is monotone, and so is the order of non-negative float32 bit patterns, so a
    bisection over the 31 bits finds tau exactly in 31 masked sums -- a full vocabulary sort costs
    hundreds of milliseconds per step on CPU.
    """
    probs = probs.astype(jnp.float32)

    def mass_above(bits):
        level = jax.lax.bitcast_convert_type(bits, jnp.float32)[:, None]
        return jnp.sum(jnp.where(probs > level, probs, 0.0), axis=-1)

    def bisect(_, bounds):
        low, high = bounds  # invariant: mass_above(low) >= top_p > mass_above(high)
        middle = low + (high - low) // 2
        inside = mass_above(middle) < top_p
        return jnp.where(inside, low, middle), jnp.where(inside, middle, high)

    rows = probs.shape[0]
    low = jnp.zeros((rows,), jnp.int32)
    high = jax.lax.bitcast_convert_type(jnp.max(probs, axis=-1), jnp.int32)  # mass above the max is 0
    _, high = jax.lax.fori_loop(0, 31, bisect, (low, high))
    return jax.lax.bitcast_convert_type(high, jnp.float32)[:, None]


def _block_size(vocab: int) -> int:
    """Blocks of about sqrt(vocab) entries (a power of two) for the two-level searches below."""
    return 1 << max(0, (max(vocab, 1).bit_length() + 1) // 2)


def _first_max_index(values: jax.Array) -> jax.Array:
    """argmax over the last axis (first index of the maximum) as max + min, which XLA vectorises
    (its variadic argmax reduction is an order of magnitude slower on CPU)."""
    top = jnp.max(values, axis=-1, keepdims=True)
    index = jnp.arange(values.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(values == top, index, values.shape[-1]), axis=-1)


def _blocked(values: jax.Array, fill: float) -> tuple[jax.Array, int]:
    rows, vocab = values.shape
    block = _block_size(vocab)
    padded = -(-vocab // block) * block
    values = jnp.pad(values, ((0, 0), (0, padded - vocab)), constant_values=fill)
    return values.reshape(rows, padded // block, block), block


def _gather_block(blocks: jax.Array, index: jax.Array) -> jax.Array:
    return jnp.take_along_axis(blocks, index[:, None, None], axis=1)[:, 0]


def greedy_tokens(logits: jax.Array) -> jax.Array:
    """(R,) int32 argmax of each row (the first maximal index, as jnp.argmax), in two levels: the first
    block holding the row maximum, then the first maximum inside it."""
    blocks, block = _blocked(logits, -jnp.inf)
    first_block = _first_max_index(jnp.max(blocks, axis=-1))
    return (first_block * block + _first_max_index(_gather_block(blocks, first_block))).astype(jnp.int32)


def _last_positive_index(weights: jax.Array) -> jax.Array:
    index = jnp.arange(weights.shape[-1], dtype=jnp.int32)
    return jnp.max(jnp.where(weights > 0, index, 0), axis=-1)


def sample_tokens(logits: jax.Array, row_keys: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(tokens (R,) int32, their log-probs (R,)): draws from softmax(logits) rows (-inf = never), one
    uniform number per row.

    Inverse-CDF sampling in two levels (block masses, then the chosen block), so the vocabulary is read
    a few times per step instead of drawing a Gumbel variate per token (one random number per row
    instead of per vocabulary entry: ~20x cheaper on CPU, same distribution). A zero-weight token is
    never returned, even when rounding puts the target at the very end of the cumulative sum.
    """
    tokens, log_probs, _ = _sample_with_normaliser(logits, row_uniforms(row_keys))
    return tokens, log_probs


def row_uniforms(row_keys: jax.Array) -> jax.Array:
    """(R,) float32: the uniform number in [0, 1) each row's key draws (what a sampler step consumes)."""
    return jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(row_keys)


def _sample_with_normaliser(logits: jax.Array, uniform: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`sample_tokens` from given uniforms (R,), plus logsumexp(logits) (R,) from the sums the draw makes.

    The exp weights are never stored for the whole vocabulary: the block masses reduce exp(logits - max)
    on the fly and the chosen block's weights are recomputed (one block per row), which saves writing
    and re-reading a (rows, vocab) array every step.
    """
    top = jnp.max(logits, axis=-1, keepdims=True)
    blocks, block = _blocked(logits, -jnp.inf)
    block_mass = jnp.sum(jnp.exp(blocks - top[:, :, None]), axis=-1)  # (R, num_blocks)
    block_cdf = jnp.cumsum(block_mass, axis=-1)
    target = uniform * block_cdf[:, -1]
    # The chosen entry is the first whose cumulative weight exceeds the target.
    chosen_block = jnp.minimum(jnp.sum(block_cdf <= target[:, None], axis=-1), _last_positive_index(block_mass))
    inside = jnp.exp(_gather_block(blocks, chosen_block) - top)  # (R, block)
    before = jnp.take_along_axis(block_cdf, chosen_block[:, None], axis=1)[:, 0] - jnp.sum(inside, axis=-1)
    inner_cdf = before[:, None] + jnp.cumsum(inside, axis=-1)
    inner = jnp.minimum(jnp.sum(inner_cdf <= target[:, None], axis=-1), _last_positive_index(inside))
    tokens = (chosen_block * block + inner).astype(jnp.int32)
    normaliser = top[:, 0] + jnp.log(block_cdf[:, -1])
    # log softmax at the token from the sums already made (no second pass over the vocabulary).
    return tokens, _picked(logits, tokens) - normaliser, normaliser


def _picked(log_probs: jax.Array, tokens: jax.Array) -> jax.Array:
    return jnp.take_along_axis(log_probs, tokens[:, None], axis=-1)[:, 0]


def _split_suppressed(logits: jax.Array, token_ids: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
    """(logits with the ids in `token_ids` set to -inf, the logits those ids had (R, K), -inf for -1 entries;
    None when nothing is suppressed).

    A gather and a scatter of K columns rather than a mask compared against every vocabulary id (XLA still
    copies the logits once for the scatter, as the suppressed values are read first).
    """
    if token_ids is None or token_ids.shape[0] == 0:
        return logits, None
    # -1 entries point past the vocabulary: dropped by the scatter, filled with -inf by the gather.
    columns = jnp.where(token_ids >= 0, token_ids, logits.shape[-1])
    removed = logits.at[:, columns].get(mode="fill", fill_value=-jnp.inf)
    return logits.at[:, columns].set(-jnp.inf, mode="drop"), removed


def suppress_tokens(logits: jax.Array, token_ids: jax.Array | None) -> jax.Array:
    """float32 logits with the ids in `token_ids` (int32 (K,), -1 entries ignored) set to -inf."""
    return _split_suppressed(logits.astype(jnp.float32), token_ids)[0]


def choose_tokens(logits: jax.Array, row_keys: jax.Array | None, config: SamplingConfig,
                  suppressed: jax.Array | None = None, *, uniforms: jax.Array | None = None
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(tokens (R,) int32, sampled log-probs (R,), policy log-probs (R,)) from logits (R, vocab).

    row_keys (R,) are PRNG keys (typed or raw uint32[2]), one per row; unused when greedy. uniforms: the
    (R,) numbers those keys draw (`row_uniforms`), when the caller has them already (the rollout engine
    draws every step's at once, `step_uniforms`); then row_keys is not used.
    suppressed: int32 ids never to choose (-1 entries ignored).
    """
    logits = logits.astype(jnp.float32)
    allowed, removed = _split_suppressed(logits, suppressed)
    if config.greedy:
        tokens = greedy_tokens(allowed)
        policy = _picked(allowed, tokens) - jax.nn.logsumexp(logits, axis=-1)
        return tokens, policy, policy
    if uniforms is None:
        uniforms = row_uniforms(row_keys)
    scale = config.temperature
    vocab = logits.shape[-1]
    if (config.top_k == 0 or config.top_k >= vocab) and config.top_p == 1.0:
        # Nothing filtered: the sampled distribution is the policy's with the suppressed ids taken out,
        # so the policy's normaliser is the draw's plus the suppressed ids' mass (added in log space:
        # exact whatever their size).
        tokens, sampled, allowed_normaliser = _sample_with_normaliser(allowed / scale, uniforms)
        normaliser = allowed_normaliser if removed is None else jnp.logaddexp(
            allowed_normaliser, jax.nn.logsumexp(removed / scale, axis=-1))
    else:
        tokens, sampled, _ = _sample_with_normaliser(filter_logits(allowed, config), uniforms)
        normaliser = jax.nn.logsumexp(logits / scale, axis=-1)
    # A chosen token is never suppressed, so its logit is read from `allowed`.
    return tokens, sampled, _picked(allowed, tokens) / scale - normaliser


def row_keys(rng: jax.Array, num_rows: int) -> jax.Array:
    """One key per output row: fold_in(rng, row). Row r of a fanned-out batch and row r of the same
    prompts repeated therefore draw from the same stream."""
    return jax.vmap(lambda row: jax.random.fold_in(rng, row))(jnp.arange(num_rows, dtype=jnp.uint32))


def step_keys(keys: jax.Array, step: jax.Array | int) -> jax.Array:
    """The keys of generated token `step` for every row: fold_in(row key, step)."""
    return jax.vmap(lambda key: jax.random.fold_in(key, step))(keys)


def step_uniforms(keys: jax.Array, num_steps: int) -> jax.Array:
    """(R, num_steps) float32: column t holds `row_uniforms(step_keys(keys, t))`, the numbers tokens
    0..num_steps - 1 are drawn with, the same bits as drawing them step by step.

    Why: on CPU, JAX's threefry runs as a small rolled loop; drawing per decode step meant two such
    loops (fold_in, then uniform) among the step's few hundred operations. Drawn all at once, they cost
    one vectorised pass before the decode."""
    return jax.vmap(lambda step: row_uniforms(step_keys(keys, step)), out_axes=1)(jnp.arange(num_steps))
