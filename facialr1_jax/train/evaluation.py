"""Evaluation inside a training run: held-out loss, and greedy generation scored with the paper's metrics.

Held-out loss runs the jitted `EvalStep` over pre-encoded batches (the same shapes every time, so it
compiles once). Greedy evaluation goes through the rollout engine (`facialr1_jax.sampling.generate`)
when that package provides it; before it exists `GreedyEvaluator.create` returns None and runs
report the loss alone. Generated texts are scored by `facialr1_jax.eval.metrics.score_benchmark`
(the oracle's parsing), so the format-valid rate, emotion accuracy and AU F1 reported during
training are the numbers the evaluation harness would give.

Multi-host: every process runs the same evaluation (the programs are collective). `EvalStep` places
the host batches itself; generation runs on a view of the model without rematerialisation, placed
once per evaluation under the sampling rules, and its sharded outputs are gathered to every host
(`parallel.to_host`). Only process 0 writes the predictions file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Callable, Sequence

import jax
import numpy as np

from facialr1_jax.data import batching
from facialr1_jax.data.examples import EncodingConfig, PromptExample, TrainExample, encode_prompt_example
from facialr1_jax.data.pipeline import element_images, pad_id_of
from facialr1_jax.fea.profiles import find_profile, get_profile
from facialr1_jax.fea.records import FEARecord
from facialr1_jax.parallel import SAMPLING_RULES, files, shard_model, to_host
from facialr1_jax.train.step import without_remat

_log = logging.getLogger(__name__)


def without_targets(example: TrainExample) -> TrainExample:
    """A copy that contributes nothing to a loss (used to fill the last evaluation batch)."""
    return dataclasses.replace(example, label_mask=np.zeros_like(example.label_mask), id=example.id + "#filler")


def held_out_loss(eval_step: Callable, params: Any, batches: Sequence[dict]) -> dict:
    """{"loss", "target_tokens"} over all held-out batches: the token-weighted mean cross-entropy."""
    totals = [eval_step(params, batch) for batch in batches]
    totals = jax.device_get(totals)
    loss_sum = float(sum(float(t["loss_sum"]) for t in totals))
    count = float(sum(float(t["denominator"]) for t in totals))
    return {"loss": loss_sum / count if count else float("nan"), "target_tokens": count}


def scoring_profile(records: Sequence[FEARecord]):
    """The dataset profile to score records with: their common dataset's, else FEA-20K's (mixed)."""
    names = {record.dataset for record in records}
    if len(names) == 1:
        profile = find_profile(next(iter(names)))
        if profile is not None:
            return profile
    return get_profile("FEA-20K")


def load_generate() -> Callable | None:
    """`facialr1_jax.sampling.generate` when the rollout engine is installed, else None."""
    try:
        from facialr1_jax import sampling
    except ImportError:
        return None
    return getattr(sampling, "generate", None)


@dataclasses.dataclass
class GreedyEvaluator:
    """Greedy generation on held-out records, scored with the benchmark metrics."""

    generate: Callable
    tokenizer: Any
    encoding: EncodingConfig
    model_config: Any
    max_new_tokens: int
    batch_size: int
    mesh: Any = None  # generate sharded over this mesh (sampling rules) when it has several devices

    @classmethod
    def create(cls, tokenizer, encoding: EncodingConfig, model_config, *, max_new_tokens: int,
               batch_size: int, mesh: Any = None) -> "GreedyEvaluator | None":
        generate = load_generate()
        if generate is None:
            _log.info("the rollout engine (facialr1_jax.sampling.generate) is not available: "
                      "evaluation reports the held-out loss only")
            return None
        return cls(generate, tokenizer, encoding, model_config, max_new_tokens, batch_size, mesh)

    def prompts(self, split, num_examples: int) -> list[PromptExample]:
        count = len(split) if num_examples <= 0 else min(num_examples, len(split))
        out = []
        for index in range(count):
            element = split.source[index]
            out.append(encode_prompt_example(element["record"], self.tokenizer, self.encoding,
                                             images=element_images(element)))
        return out

    def generate_texts(self, model, prompts: Sequence[PromptExample]) -> list[str]:
        """Greedy completions of `prompts`, decoded up to (not including) the end-of-turn token.

        The model is used through a view without rematerialisation (which forward-only sampling
        does not need and whose layers do not trace inside the decode loop); on a multi-device
        mesh the view's parameters are resharded once for sampling (`SAMPLING_RULES`), so a
        decode step does not gather FSDP shards.
        """
        texts: list[str] = []
        pad = pad_id_of(self.tokenizer)
        sharded = self.mesh is not None and self.mesh.size > 1
        model = without_remat(model)
        if sharded:
            shard_model(model, self.mesh, SAMPLING_RULES)
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start:start + self.batch_size])
            batch = batching.collate_prompts(chunk, self.model_config, pad_id=pad,
                                             max_length=self.encoding.max_prompt_tokens,
                                             batch_size=self.batch_size)
            result = self.generate(model, batch, max_new_tokens=self.max_new_tokens, greedy=True,
                                   mesh=self.mesh if sharded else None)
            tokens, lengths = to_host((result.tokens, result.lengths))
            for row in range(len(chunk)):
                texts.append(self.tokenizer.decode(tokens[row, : lengths[row]].tolist(), skip_special_tokens=True))
        return texts

    def evaluate(self, model, split, *, num_examples: int, predictions_path: str | None = None) -> dict:
        """Scalars: format_valid, emotion_accuracy, au_f1_micro, au_f1_macro, rouge_l (percent; absent
        when they do not apply) and generated_examples."""
        from facialr1_jax.eval.metrics import score_benchmark

        prompts = self.prompts(split, num_examples)
        texts = self.generate_texts(model, prompts)
        records = [prompt.record for prompt in prompts]
        metrics, scores = score_benchmark(texts, records, scoring_profile(records))
        if predictions_path is not None:
            files.write_text(predictions_path, "".join(
                json.dumps({"prediction": text, **score.to_json()}) + "\n" for text, score in zip(texts, scores)))
        row = {"generated_examples": len(texts)}
        for name in ("format_valid", "emotion_accuracy", "au_f1_micro", "au_f1_macro", "rouge_l"):
            value = getattr(metrics, name)
            if value is not None:
                row[name] = float(value)
        return row
