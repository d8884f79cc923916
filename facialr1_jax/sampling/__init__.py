"""The rollout engine: jitted KV-cache generation with one prefill per group of samples.

Used by GRPO (G samples per prompt), evaluation and inference (greedy) and synthesis.

    batch = data.batching.collate_prompts(prompts, model.config, pad_id=..., max_length=...)
    # or PromptBatch.from_prompts([(ids, pixel_values, grid_thw), ...], model.config, pad_id=..., max_length=...)
    out = generate(model, batch, max_new_tokens=128, num_samples=8, temperature=1.0, rng=jax.random.key(0))
    out.tokens, out.log_probs, out.policy_log_probs, out.mask, out.lengths     # rows [p0 x G, p1 x G, ...]

Hot loops (GRPO) keep one `Engine` and pass the parameters each call:

    engine = Engine(model_def.graphdef, config, mesh=mesh, rules=SAMPLING_RULES)
    out = engine.generate((params, model_def.frozen), batch, max_new_tokens=..., num_samples=G, rng=key)

Log-probabilities: `log_probs` are under the distribution actually sampled from (suppressed ids
removed, temperature, top-k, top-p, renormalised); `policy_log_probs` are log_softmax(logits /
temperature) over the full vocabulary, which is what a training forward of prompt + completion
recomputes: `model.token_log_probs(hidden, tokens)` at temperature 1 (GRPO's setting), or
log_softmax(model.logits(hidden) / temperature) otherwise. GRPO's old-policy log-probs are
`policy_log_probs` (masked by `mask`).

Stopping: a row stops after the first of `stop_token_ids` (default: the model config's eos ids;
`stop_token_ids_for(tokenizer)` gives eos + <|im_end|> + <|endoftext|>); `mask` covers the tokens up
to and including it, `tokens` hold padding after it. The image / video placeholder ids are never
generated (`suppress_token_ids`), so a completion can always be fed back through a training forward.

Modules: `samplers` (greedy / temperature / top-k / top-p, per-row keys), `batch` (`PromptBatch`, the
left-padded input), `engine` (the compiled prefill + decode loop and `generate`).
"""

from facialr1_jax.sampling.batch import PromptBatch
from facialr1_jax.sampling.engine import (
    DecodeState,
    Engine,
    GenerationOutput,
    batch_bucket,
    default_stop_token_ids,
    engine_for,
    generate,
    stop_token_ids_for,
)
from facialr1_jax.sampling.samplers import SamplingConfig, choose_tokens, filter_logits, row_keys, step_keys

__all__ = [
    "DecodeState",
    "Engine",
    "GenerationOutput",
    "PromptBatch",
    "SamplingConfig",
    "batch_bucket",
    "choose_tokens",
    "default_stop_token_ids",
    "engine_for",
    "filter_logits",
    "generate",
    "row_keys",
    "step_keys",
    "stop_token_ids_for",
]
