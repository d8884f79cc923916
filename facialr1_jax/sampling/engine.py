"""The rollout engine: a jitted prefill and a jitted `lax.while_loop` decode over a shared-prompt cache.

Two compiled programs per (bucketed) shape, both functional `jax.jit` over `nnx.split` state (the
parameters are a traced argument, the graph definition is static):

1. prefill(params, prompts, rng): vision tower + one decoder pass over the B left-padded prompts into a
   KV cache of P slots, one row per prompt. That cache becomes (never repeated; its keys transposed to
   the dimension-major layout the decode attention reads) the prompt part of a `SharedPromptCache`
   (`models.qwen2_5_vl.text`); its completion part has one row per sample, R = B * G rows ordered
   [prompt0 x G, prompt1 x G, ...], and the first completion window's slots (below). The last
   position's logits are repeated G times and the first token of every row is drawn. Each (image,
   prompt) is encoded, and its keys/values stored, once however many samples it gets.
2. decode(params, state): a `lax.while_loop` that feeds the previous token through
   `LanguageModel.decode_step`, which appends its keys/values at completion slot t - 1 and attends the
   prompt part with the G samples' queries of a prompt batched together (one matmul per prompt and kv
   head instead of G matrix-vector products over G identical copies) plus the row's own completion
   (cascade attention, one softmax over both; `models.qwen2_5_vl.text.shared_prompt_attention`), then
   draws token t, until max_new_tokens or until every row has stopped. The decode state (cache
   included) is donated, so the loop updates the completion cache in place. num_samples = 1
   (evaluation, synthesis) is the same program with groups of one.
   Completion windows: a step reads its rows' whole completion cache, written or not, so the loop runs
   in up to three windows (`completion_windows`: 128 new tokens -> 32, 64, then 128 slots), one
   `while_loop` each, the cache grown with zeros in between; the tokens are the one-window decode's
   (masked slots weigh exactly 0). `Engine(grow_completion_cache=False)` decodes in one window.

Randomness: row r draws token t with key fold_in(fold_in(rng, r), t) (all the decode's numbers are
drawn once, in the prefill: `samplers.step_uniforms`), so one prefill fanned out to G rows
samples with the same keys as the same prompts repeated G times with the same rng (same tokens, up to
float rounding: the two group the prompt's attention differently).

Static shapes: prompt length and patch count come bucketed from `data.batching.collate_prompts`; the
engine rounds the number of prompts up to a power of two with filler rows (their outputs are dropped),
so after warm-up a run does not compile again. `Engine.compiled_programs()` counts what was built.

CPU decode kernels: on one CPU device a third small program runs between the two, copying the language
model's matrices into the (out, in) layout with q/k/v and gate/up fused (`text.DecodeKernels`), and
the decode steps read that copy. XLA:CPU's matmuls of a few dozen rows run 1.13-1.17x faster against
an (out, in) weight; the copy costs one transposition of the weights per call (53-54 ms at the
`small` preset), repaid within the first few dozen decode steps (`python benchmarks/decode_layouts.py`
measures both). Off-CPU, or on a mesh (where the fused matrices would cut across the tensor-parallel split),
the steps read the parameters as they are; `Engine(decode_kernels=...)` overrides the choice.

Sharding: with a mesh, per-row inputs, the prompt cache's prompt axis and the completion cache's row
axis are split over the batch mesh axes, and the activation constraints of `rules` (default
`parallel.SAMPLING_RULES`) apply while tracing. Parameters are used where they are; place them with
`parallel.shard_model(model, mesh, SAMPLING_RULES)` (or `Engine.place_params`) so that a decode step
does not gather FSDP shards.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import warnings
from typing import Any, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from facialr1_jax.models import Qwen2_5_VLConfig, decode_position_ids
from facialr1_jax.models.qwen2_5_vl.text import DecodeKernels, SharedPromptCache, shared_prompt_cache
from facialr1_jax.parallel.rules import SAMPLING_RULES, Rules, activation_sharding, constrain, logical_to_spec
from facialr1_jax.sampling.batch import PromptBatch
from facialr1_jax.sampling.samplers import SamplingConfig, choose_tokens, row_keys, step_uniforms


ROW_AXES = ("batch", None)  # per-row (R, ...) arrays: rows over the batch mesh axes


@struct.dataclass
class GenerationOutput:
    """What `generate` returns; R = batch * num_samples rows ordered [prompt0 x G, prompt1 x G, ...].

    tokens            int32 (R, T)  generated ids; pad_token after a row stopped
    log_probs         f32   (R, T)  log-prob of each token under the distribution it was drawn from
                                    (suppressed ids removed, logits / temperature, top-k / top-p filtered,
                                    renormalised); for greedy decoding, equal to policy_log_probs; 0 after
                                    the stop
    policy_log_probs  f32   (R, T)  log_softmax(logits / temperature) over the full vocabulary at the token
                                    (temperature 1 when greedy): what a training forward recomputes
                                    (`model.token_log_probs` at temperature 1); use it for GRPO ratios;
                                    0 after the stop
    mask              f32   (R, T)  1 up to and including the first stop token
    lengths           int32 (R,)    generated tokens per row, the stop token included (= mask.sum(-1))
    num_steps         int32 ()      token positions actually decoded (< T when every row stopped early)
    logits            f32   (R, T, vocab) or None   raw logits of every step (only with return_logits)
    """

    tokens: jax.Array
    log_probs: jax.Array
    policy_log_probs: jax.Array
    mask: jax.Array
    lengths: jax.Array
    num_steps: jax.Array
    logits: jax.Array | None = None


@struct.dataclass
class DecodeState:
    """The loop carry of the decode program (B prompts, R = B * G rows, P prompt slots, T new tokens)."""

    cache: SharedPromptCache  # prompt part B rows of P slots, completion part R rows of T slots
    tokens: jax.Array  # (R, T) int32
    log_probs: jax.Array  # (R, T) f32
    policy_log_probs: jax.Array  # (R, T) f32
    logits: jax.Array | None  # (R, T, vocab) f32 when requested
    lengths: jax.Array  # (R,) int32 tokens generated so far, the stop included
    done: jax.Array  # (R,) bool
    step: jax.Array  # () int32 index of the next token to generate
    prompt_slots: jax.Array  # (B, P) bool: prompt cache slots holding real prompt tokens
    prompt_tokens: jax.Array  # (R,) int32 real prompt tokens
    rope_deltas: jax.Array  # (R,) int32
    uniforms: jax.Array | None  # (R, T) f32: the number each row's token t is drawn with (None when greedy)
    stop_token_ids: jax.Array  # (K,) int32, padded with -1 (never generated)
    suppressed_token_ids: jax.Array  # (K,) int32 ids never sampled, padded with -1


@dataclasses.dataclass(frozen=True)
class _Settings:
    """Everything static about one generate call (part of the compiled programs' cache key)."""

    num_samples: int
    max_new_tokens: int
    sampling: SamplingConfig
    pad_token_id: int
    cache_dtype: str
    return_logits: bool
    grow_completion_cache: bool = True

    @property
    def completion_windows(self) -> tuple[int, ...]:
        return completion_windows(self.max_new_tokens) if self.grow_completion_cache else (self.max_new_tokens,)


MIN_COMPLETION_WINDOW = 32  # smaller windows save too little to pay for another compiled loop


def completion_windows(max_new_tokens: int) -> tuple[int, ...]:
    """The completion-cache sizes one decode grows through: max_new_tokens / 4 and / 2 (those of at least
    MIN_COMPLETION_WINDOW slots), then max_new_tokens; e.g. 128 -> (32, 64, 128), 48 -> (48,).

    Why: every decode step reads its rows' whole completion cache (keys and values of every layer),
    written or not, and attends all of it, so its cost grows with the slots rather than with the tokens
    written so far. Running the first quarter of the tokens over a quarter of the slots and the next
    quarter over half reads about two thirds of what one window would; `benchmarks/generate_vs_hf.py`
    reports what that saves end to end (`windows_speedup`). Each window is one more compiled copy of
    the loop, hence at most three, and none under MIN_COMPLETION_WINDOW slots.
    """
    smaller = [max_new_tokens // 4, max_new_tokens // 2]
    return tuple(dict.fromkeys([w for w in smaller if w >= MIN_COMPLETION_WINDOW] + [max_new_tokens]))


def completion_window_steps(max_new_tokens: int, windows: Sequence[int]) -> tuple[int, ...]:
    """The most steps each window's decode loop runs, e.g. 128 new tokens over (32, 64, 128) -> (32, 32, 63).

    The prefill chooses token 0; step s writes token s - 1 into completion slot s - 1 and chooses token
    s, so a window of w slots ends after step w, and the last window after step max_new_tokens - 1
    (`Engine._decode`'s loop conditions). Compile-only plans
    count each loop at this bound (the compiler cannot know when every row stops).
    """
    steps, done = [], 0
    for window in windows:
        last = min(int(window), max_new_tokens - 1)
        steps.append(max(last - done, 0))
        done = max(done, last)
    return tuple(steps)


@contextlib.contextmanager
def grown_cache_warnings_ignored(settings: _Settings):
    """Silences JAX's "Some donated buffers were not usable" for a decode that grows its completion cache:
    the donated first-window buffers cannot become the (larger) outputs, by design; every other donated
    buffer is used in place as before. For a one-window decode the warning still shows: there it would
    mean something."""
    with warnings.catch_warnings():
        if len(settings.completion_windows) > 1:
            warnings.filterwarnings("ignore", message="Some donated buffers were not usable")
        yield


@dataclasses.dataclass(frozen=True)
class _Call:
    """One generate call, validated: the prefill program's arguments, its settings, the rows to keep."""

    params: tuple
    prefill_args: tuple
    settings: _Settings
    real_rows: int


def default_stop_token_ids(config: Qwen2_5_VLConfig) -> tuple[int, ...]:
    """The model config's end-of-sequence id(s): for Qwen2.5-VL instruct models <|im_end|>."""
    eos = config.text_config.eos_token_id
    if eos is None:
        return ()
    return tuple(int(token) for token in (eos if isinstance(eos, (tuple, list)) else (eos,)))


def stop_token_ids_for(tokenizer: Any, extra: Iterable[str] = ("<|im_end|>", "<|endoftext|>")) -> tuple[int, ...]:
    """End-of-turn and end-of-text ids of a Hugging Face tokenizer: its eos plus those of `extra` it knows."""
    ids = []
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.append(int(eos))
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    ids.extend(int(vocab[token]) for token in extra if token in vocab)
    return tuple(dict.fromkeys(ids))


def batch_bucket(batch_size: int) -> int:
    """The next power of two >= batch_size: the row counts the programs are compiled for."""
    return 1 << max(0, int(batch_size - 1).bit_length())


ID_SLOTS = 4  # token-id lists are padded to a multiple of this, so the usual 0-4 ids share one program


def token_id_array(token_ids: Sequence[int], what: str, vocab_size: int) -> np.ndarray:
    """Token ids as an int32 array padded with -1 to a multiple of ID_SLOTS (a traced argument, so
    changing the ids never recompiles)."""
    ids = [int(token) for token in token_ids]
    bad = [token for token in ids if not 0 <= token < vocab_size]
    if bad:
        raise ValueError(f"{what} must be token ids in [0, {vocab_size}), got {bad}")
    slots = max(ID_SLOTS, -(-len(ids) // ID_SLOTS) * ID_SLOTS)
    return np.asarray(ids + [-1] * (slots - len(ids)), np.int32)


def _column(uniforms: jax.Array | None, step) -> jax.Array | None:
    return None if uniforms is None else jax.lax.dynamic_index_in_dim(uniforms, step, axis=1, keepdims=False)


def _is_stop(tokens: jax.Array, stop_token_ids: jax.Array) -> jax.Array:
    return jnp.any(tokens[:, None] == stop_token_ids[None, :], axis=-1)


def _record(state: DecodeState, step, tokens, log_probs, policy_log_probs, logits, settings: _Settings
            ) -> DecodeState:
    """Writes token `step` of every row that has not stopped (stopped rows get padding and 0 log-probs)."""
    active = ~state.done
    tokens = jnp.where(active, tokens, settings.pad_token_id)
    write = lambda buffer, values: jax.lax.dynamic_update_slice_in_dim(buffer, values[:, None], step, axis=1)
    new_logits = state.logits
    if settings.return_logits:
        new_logits = write(state.logits, logits.astype(jnp.float32))
    return state.replace(
        tokens=write(state.tokens, tokens),
        log_probs=write(state.log_probs, jnp.where(active, log_probs, 0.0)),
        policy_log_probs=write(state.policy_log_probs, jnp.where(active, policy_log_probs, 0.0)),
        logits=new_logits,
        lengths=state.lengths + active.astype(jnp.int32),
        done=state.done | (active & _is_stop(tokens, state.stop_token_ids)),
        step=jnp.asarray(step + 1, jnp.int32),
    )


class Engine:
    """Compiled prefill + decode for one model structure (graph definition) and placement.

        engine = Engine.for_model(model, mesh=None, rules=None, cache_dtype=None)
        out = engine.generate(nnx.state(model), batch, max_new_tokens=128, num_samples=8, rng=key)

    `params` may be anything `nnx.merge(graphdef, *params)` accepts: one State, or a tuple of States
    (e.g. `(train_state.params, model_def.frozen)` for a model split as in `train.state`).
    """

    def __init__(self, graphdef: Any, config: Qwen2_5_VLConfig, *, mesh: Mesh | None = None,
                 rules: Rules | None = None, cache_dtype: Any = None, bucket_batch: bool = True,
                 decode_kernels: bool | None = None, grow_completion_cache: bool = True):
        self.graphdef = graphdef
        self.config = config
        self.mesh = mesh
        self.rules = (SAMPLING_RULES if rules is None else rules) if mesh is not None else None
        self.cache_dtype = jnp.dtype(_default_cache_dtype(mesh) if cache_dtype is None else cache_dtype)
        self.bucket_batch = bucket_batch
        # Decode through `DecodeKernels` (see the module docstring); None = on one CPU device.
        self.decode_kernels = _default_decode_kernels(mesh) if decode_kernels is None else bool(decode_kernels)
        # Decode through growing completion windows (`completion_windows`); False = one loop over all slots.
        self.grow_completion_cache = bool(grow_completion_cache)
        self._prefill_program = jax.jit(self._prefill, static_argnames=("settings",))
        self._kernels_program = jax.jit(self._kernels)
        self._decode_program = jax.jit(self._decode, static_argnames=("settings",), donate_argnames=("state",))
        self._greedy_key = None

    @classmethod
    def for_model(cls, model: nnx.Module, **options) -> "Engine":
        graphdef, _ = nnx.split(model)
        return cls(graphdef, model.config, **options)

    def compiled_programs(self) -> int:
        """How many programs (prefill, decode kernels, decode; all shapes) have been compiled so far."""
        return (self._prefill_program._cache_size() + self._kernels_program._cache_size()
                + self._decode_program._cache_size())

    def place_params(self, params: Any) -> Any:
        """`params` resharded for sampling under this engine's mesh and rules (a no-op without a mesh)."""
        if self.mesh is None:
            return params
        from facialr1_jax.parallel.rules import state_shardings

        return jax.device_put(params, state_shardings(params, self.mesh, self.rules))

    # ---------------------------------------------------------------------------------------------
    # the two compiled phases
    # ---------------------------------------------------------------------------------------------
    def _merge(self, params) -> nnx.Module:
        return nnx.merge(self.graphdef, *params)

    def _prefill(self, params, batch: PromptBatch, real_prompts, rng, stop_token_ids, suppressed_token_ids,
                 settings: _Settings) -> DecodeState:
        model = self._merge(params)
        prompts, prompt_length = batch.input_ids.shape
        fan_out, new_tokens = settings.num_samples, settings.max_new_tokens
        features = None if batch.pixel_values is None else model.encode_images(batch.pixel_values, batch.plan)
        embeds = model.embed(batch.input_ids, features)
        prompt_slots = batch.attention_mask.astype(bool)
        prompt_cache = model.init_cache(prompts, prompt_length, settings.cache_dtype)
        hidden, prompt_cache = model.forward_embeds(embeds, batch.position_ids, prompt_slots, prompt_cache, 0,
                                                    return_hidden=True)
        # Left padding: every prompt's last token is in the last column.
        logits = model.logits(hidden[:, -1])

        def fan(x):
            return x if fan_out == 1 else jnp.repeat(x, fan_out, axis=0)

        # The prompt's keys/values stay one row per prompt; only the completion part has a row per sample.
        # The completion part starts at the first window's size; the decode grows it (`completion_windows`).
        cache = shared_prompt_cache(self.config.text_config, prompt_cache, fan_out, settings.completion_windows[0],
                                    settings.cache_dtype)
        # Rows split over the batch mesh axes for sampling (each device draws for its own rows).
        logits = constrain(fan(logits), ROW_AXES)
        rows = prompts * fan_out
        # Every step's random numbers at once: row r's token t uses fold_in(fold_in(rng, r), t).
        uniforms = None if settings.sampling.greedy else constrain(step_uniforms(row_keys(rng, rows), new_tokens),
                                                                    ROW_AXES)
        vocab = logits.shape[-1]
        state = DecodeState(
            cache=cache,
            tokens=constrain(jnp.full((rows, new_tokens), settings.pad_token_id, jnp.int32), ROW_AXES),
            log_probs=constrain(jnp.zeros((rows, new_tokens), jnp.float32), ROW_AXES),
            policy_log_probs=constrain(jnp.zeros((rows, new_tokens), jnp.float32), ROW_AXES),
            logits=jnp.zeros((rows, new_tokens, vocab), jnp.float32) if settings.return_logits else None,
            lengths=jnp.zeros((rows,), jnp.int32),
            done=~fan(real_prompts),  # filler rows count as stopped, so they never hold the loop up
            step=jnp.zeros((), jnp.int32),
            prompt_slots=prompt_slots,
            prompt_tokens=fan(batch.attention_mask.astype(jnp.int32).sum(axis=1)),
            rope_deltas=fan(batch.rope_deltas),
            uniforms=uniforms,
            stop_token_ids=stop_token_ids,
            suppressed_token_ids=suppressed_token_ids,
        )
        tokens, log_probs, policy_log_probs = choose_tokens(logits, None, settings.sampling, suppressed_token_ids,
                                                            uniforms=_column(uniforms, 0))
        return _record(state, 0, tokens, log_probs, policy_log_probs, logits, settings)

    def _kernels(self, params) -> DecodeKernels:
        return self._merge(params).decode_kernels()

    def _decode(self, params, state: DecodeState, kernels: DecodeKernels | None,
                settings: _Settings) -> tuple[DecodeState, jax.Array]:
        model = self._merge(params)
        new_tokens = settings.max_new_tokens

        def unfinished(s: DecodeState):
            return (s.step < new_tokens) & ~jnp.all(s.done)

        def next_token(s: DecodeState) -> DecodeState:
            step = s.step
            previous = jax.lax.dynamic_slice_in_dim(s.tokens, step - 1, 1, axis=1)  # (R, 1)
            positions = decode_position_ids(s.prompt_tokens + step - 1, s.rope_deltas)
            # Token step - 1 goes to completion slot step - 1 and predicts token `step`.
            hidden, cache = model.language_model.decode_step(model.embed(previous), positions, s.cache,
                                                             s.prompt_slots, step - 1, kernels)
            logits = constrain(model.logits(hidden[:, 0], kernels), ROW_AXES)
            tokens, log_probs, policy_log_probs = choose_tokens(logits, None, settings.sampling,
                                                                s.suppressed_token_ids,
                                                                uniforms=_column(s.uniforms, step))
            return _record(s.replace(cache=cache), step, tokens, log_probs, policy_log_probs, logits, settings)

        # One loop per completion window: tokens 1..window write slots 0..window - 1, then the cache grows.
        final = state
        for window in settings.completion_windows:
            final = jax.lax.while_loop(lambda s, window=window: unfinished(s) & (s.step <= window), next_token,
                                       final.replace(cache=final.cache.with_completion_length(window)))
        mask = (jnp.arange(new_tokens)[None, :] < final.lengths[:, None]).astype(jnp.float32)
        return final, mask

    # ---------------------------------------------------------------------------------------------
    # the host-side call
    # ---------------------------------------------------------------------------------------------
    def generate(self, params: Any, batch: PromptBatch | Mapping[str, Any], *, max_new_tokens: int,
                 num_samples: int = 1, temperature: float = 1.0, top_k: int | None = 0, top_p: float | None = 1.0,
                 greedy: bool = False, rng: jax.Array | None = None, stop_token_ids: Sequence[int] | None = None,
                 suppress_token_ids: Sequence[int] | None = None, return_logits: bool = False) -> GenerationOutput:
        """Generates up to `max_new_tokens` for every prompt of `batch`, `num_samples` times each.

        batch: a `PromptBatch` or the dict of `data.batching.collate_prompts`. temperature 0 (or
        greedy=True) decodes greedily; otherwise `rng` is required. stop_token_ids: a row stops after
        generating one of them (None = the model config's eos ids; () = never stop). suppress_token_ids:
        ids never generated (None = the image and video placeholders, whose appearance in a completion
        would make a training forward read it as an image; () = none). return_logits: also return the
        raw logits of every step (float32 (R, T, vocab); for tests and distillation).
        """
        call = self._prepare_call(params, batch, max_new_tokens=max_new_tokens, num_samples=num_samples,
                                  temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, rng=rng,
                                  stop_token_ids=stop_token_ids, suppress_token_ids=suppress_token_ids,
                                  return_logits=return_logits)
        with self._tracing_context(call.settings):
            state = self._prefill_program(*call.prefill_args, settings=call.settings)
            kernels = self._kernels_program(call.params) if self._uses_kernels(call.settings) else None
            final, mask = self._decode_program(call.params, state, kernels, settings=call.settings)
        out = GenerationOutput(tokens=final.tokens, log_probs=final.log_probs,
                               policy_log_probs=final.policy_log_probs, mask=mask, lengths=final.lengths,
                               num_steps=final.step, logits=final.logits)
        if final.tokens.shape[0] != call.real_rows:
            out = out.replace(**{name: getattr(out, name)[:call.real_rows] for name in
                                 ("tokens", "log_probs", "policy_log_probs", "mask", "lengths")},
                              logits=None if out.logits is None else out.logits[:call.real_rows])
        return out

    def compiled_decode_text(self, params: Any, batch: PromptBatch | Mapping[str, Any], *, max_new_tokens: int,
                             **generate_options) -> str:
        """The optimised HLO text of the decode program that `generate` with these arguments runs
        (compiled if it is not yet; nothing is executed). For inspecting a decode step: layouts,
        transposes, fusions, collectives."""
        call = self._prepare_call(params, batch, max_new_tokens=max_new_tokens, **generate_options)
        with self._tracing_context(call.settings):
            state = jax.eval_shape(lambda *args: self._prefill_program(*args, settings=call.settings),
                                   *call.prefill_args)
            kernels = jax.eval_shape(self._kernels_program, call.params) if self._uses_kernels(call.settings) else None
            lowered = self._decode_program.lower(call.params, state, kernels, settings=call.settings)
        return lowered.compile().as_text()

    def _prepare_call(self, params, batch, *, max_new_tokens, num_samples=1, temperature=1.0, top_k=0, top_p=1.0,
                      greedy=False, rng=None, stop_token_ids=None, suppress_token_ids=None,
                      return_logits=False) -> "_Call":
        """Validates `generate`'s arguments and turns them into the programs' inputs (placed on devices)."""
        params = tuple(params) if isinstance(params, (tuple, list)) else (params,)
        batch = batch if isinstance(batch, PromptBatch) else PromptBatch.from_collated(batch)
        batch = jax.device_get(batch)
        batch.validate(self.config)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        sampling = SamplingConfig.create(temperature, top_k, top_p, greedy)
        if rng is None:
            if not sampling.greedy:
                raise ValueError(f"sampling at temperature {sampling.temperature} needs rng (a jax.random key)")
            rng = self._default_key()
        vocab = self.config.text_config.vocab_size
        stops = token_id_array(default_stop_token_ids(self.config) if stop_token_ids is None else stop_token_ids,
                               "stop_token_ids", vocab)
        suppressed = token_id_array(self.placeholder_token_ids if suppress_token_ids is None else suppress_token_ids,
                                    "suppress_token_ids", vocab)
        settings = _Settings(num_samples=int(num_samples), max_new_tokens=int(max_new_tokens), sampling=sampling,
                             pad_token_id=self.pad_token_id,
                             cache_dtype=self.cache_dtype.name, return_logits=bool(return_logits),
                             grow_completion_cache=self.grow_completion_cache)

        real_rows = batch.batch_size * settings.num_samples
        real_prompts = np.ones((batch.batch_size,), bool)
        if self.bucket_batch:
            batch = batch.with_rows(batch_bucket(batch.batch_size), self._filler_token_id())
            real_prompts = np.arange(batch.batch_size) < real_prompts.size
        batch, real_prompts = self._place(batch, real_prompts)
        return _Call(params=params, prefill_args=(params, batch, real_prompts, rng, stops, suppressed),
                     settings=settings, real_rows=real_rows)

    def _uses_kernels(self, settings: _Settings) -> bool:
        # With one new token (drawn by the prefill) the decode loop never runs a step.
        return self.decode_kernels and settings.max_new_tokens > 1

    def _default_key(self) -> jax.Array:
        if self._greedy_key is None:
            self._greedy_key = jax.random.PRNGKey(0)  # unused by greedy decoding; a fixed value keeps one program
        return self._greedy_key

    @property
    def placeholder_token_ids(self) -> tuple[int, ...]:
        """The image and video placeholder ids: suppressed by default."""
        return tuple(int(t) for t in (self.config.image_token_id, self.config.video_token_id) if t is not None)

    @property
    def pad_token_id(self) -> int:
        """What fills `tokens` after a row stopped: the config's pad id, else its (first) eos id, else 0."""
        pad = self.config.text_config.pad_token_id
        if pad is not None:
            return int(pad)
        eos = default_stop_token_ids(self.config)
        return eos[0] if eos else 0

    def _filler_token_id(self) -> int:
        """A text token for filler rows (anything but an image or video placeholder)."""
        reserved = {self.config.image_token_id, self.config.video_token_id}
        for candidate in (self.config.text_config.pad_token_id, *default_stop_token_ids(self.config), 0, 1, 2):
            if candidate is not None and candidate not in reserved:
                return int(candidate)
        raise AssertionError("unreachable: three distinct candidates cannot all be reserved")

    def _tracing_context(self, settings: _Settings | None = None) -> contextlib.ExitStack:
        """The context the programs are traced in: the mesh's activation constraints (with a mesh) and,
        for a decode through several completion windows, `grown_cache_warnings_ignored`."""
        stack = contextlib.ExitStack()
        if self.mesh is not None:
            stack.enter_context(activation_sharding(self.mesh, self.rules))
        if settings is not None:
            stack.enter_context(grown_cache_warnings_ignored(settings))
        return stack

    def _place(self, batch: PromptBatch, real_prompts: np.ndarray) -> tuple[PromptBatch, jax.Array]:
        """Host arrays -> device arrays; with a mesh, per-row arrays split over the batch axes."""
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, batch), jnp.asarray(real_prompts)
        mesh, rules = self.mesh, self.rules

        def put(array, axes):
            array = np.asarray(array)
            spec = PartitionSpec() if axes is None else logical_to_spec(axes, rules, mesh, array.shape)
            return jax.device_put(array, NamedSharding(mesh, spec))

        replicated = lambda tree: None if tree is None else jax.tree.map(lambda a: put(a, None), tree)
        placed = PromptBatch(
            input_ids=put(batch.input_ids, ("batch", "length")),
            attention_mask=put(batch.attention_mask, ("batch", "length")),
            position_ids=put(batch.position_ids, (None, "batch", "length")),
            rope_deltas=put(batch.rope_deltas, ("batch",)),
            pixel_values=replicated(batch.pixel_values),
            plan=replicated(batch.plan),
        )
        return placed, put(real_prompts, ("batch",))


def _default_decode_kernels(mesh: Mesh | None) -> bool:
    """`DecodeKernels` on one CPU device only: accelerators' matmuls take either weight layout at full
    speed (the copy would only cost memory), and on a mesh the fused q/k/v and gate/up matrices would
    cut across the tensor-parallel split of their heads and hidden units."""
    if mesh is not None:
        return mesh.devices.size == 1 and mesh.devices.flat[0].platform == "cpu"
    return jax.default_backend() == "cpu"


def _default_cache_dtype(mesh: Mesh | None) -> Any:
    """bfloat16 on accelerators (half the cache memory and bandwidth), float32 on CPU (exact, and CPU
    bfloat16 arithmetic is emulated)."""
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    return jnp.float32 if platform == "cpu" else jnp.bfloat16


_ENGINES: "collections.OrderedDict[tuple, Engine]" = collections.OrderedDict()
_MAX_ENGINES = 8


def engine_for(model: nnx.Module, *, mesh: Mesh | None = None, rules: Rules | None = None,
               cache_dtype: Any = None) -> tuple[Engine, Any]:
    """(the shared Engine for this model's structure and placement, the model's current state).

    Engines are kept per (graph definition, mesh, rules, cache dtype), so repeated `generate` calls on
    a model whose parameters change (training) reuse the compiled programs.
    """
    graphdef, state = nnx.split(model)
    key = (graphdef, mesh, rules, None if cache_dtype is None else jnp.dtype(cache_dtype).name)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = Engine(graphdef, model.config, mesh=mesh, rules=rules, cache_dtype=cache_dtype)
        _ENGINES[key] = engine
        while len(_ENGINES) > _MAX_ENGINES:
            _ENGINES.popitem(last=False)
    else:
        _ENGINES.move_to_end(key)
    return engine, state


def generate(model: nnx.Module, batch: PromptBatch | Mapping[str, Any], *, max_new_tokens: int, num_samples: int = 1,
             temperature: float = 1.0, top_k: int | None = 0, top_p: float | None = 1.0, greedy: bool = False,
             rng: jax.Array | None = None, stop_token_ids: Sequence[int] | None = None, cache_dtype: Any = None,
             mesh: Mesh | None = None, rules: Rules | None = None, suppress_token_ids: Sequence[int] | None = None,
             return_logits: bool = False) -> GenerationOutput:
    """Samples `num_samples` completions for every prompt of `batch` (see `Engine.generate`).

    One prefill per prompt, its keys/values shared by the samples' decode; rows of the result are ordered
    [prompt0 x G, prompt1 x G, ...]. cache_dtype: KV cache dtype (None = bfloat16 off-CPU, float32 on
    CPU). mesh / rules: run sharded (rules default to `parallel.SAMPLING_RULES`).
    """
    engine, state = engine_for(model, mesh=mesh, rules=rules, cache_dtype=cache_dtype)
    return engine.generate(state, batch, max_new_tokens=max_new_tokens, num_samples=num_samples,
                           temperature=temperature, top_k=top_k, top_p=top_p, greedy=greedy, rng=rng,
                           stop_token_ids=stop_token_ids, suppress_token_ids=suppress_token_ids,
                           return_logits=return_logits)
