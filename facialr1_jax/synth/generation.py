"""Prompts in, candidate answers out: the model side of stage 3.

`PromptEncoder` turns a record job and an instruction into a `PromptExample` (the chat prompt with
the record's images, `data.examples.encode_prompt_example`) and says whether an instruction fits
the token budget. `ModelGenerator` runs the rollout engine (`facialr1_jax.sampling.generate`) on
batches of those prompts: greedy decoding for one candidate per prompt (the reference), or K samples
at a temperature. Every batch is padded to `batch_size` prompts, so the engine compiles once per
prompt-length bucket and never for a short last batch.

Sampling keys are derived from the seed and the position of the batch in the run (round, block,
attempt, batch), never from a global counter, so a resumed run draws exactly what an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from facialr1_jax.data import chat
from facialr1_jax.data.examples import (
    EncodingConfig,
    PromptExample,
    encode_prompt_example,
    image_token_counts,
    preprocess_images,
)
from facialr1_jax.synth.attempts import RecordJob


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One generated answer; `finished` is False when it was cut off at max_new_tokens."""

    text: str
    finished: bool


class CandidateSource(Protocol):
    """What stage 3 needs from a model: K candidate answers for each prompt.

    `key_path` names the call's place in the run (round, block, attempt, batch) and seeds any
    sampling; the result has one list of candidates per prompt, in order.
    """

    def __call__(self, prompts: Sequence[PromptExample], key_path: tuple[int, ...]) -> list[list[Candidate]]: ...


class PromptEncoder:
    """Encodes synthesis prompts for one tokenizer and encoding (prompt variant, pixels, budget)."""

    def __init__(self, tokenizer: Any, encoding: EncodingConfig):
        self.tokenizer = tokenizer
        self.encoding = encoding
        self._image_tokens: dict[int, list[int]] = {}

    def image_tokens(self, job: RecordJob) -> list[int]:
        """Image placeholder tokens per image of the job's record (computed once per job)."""
        if job.index not in self._image_tokens:
            _, grid = preprocess_images(job.record, job.images, self.encoding.image)
            self._image_tokens[job.index] = image_token_counts(grid, self.encoding.image)
        return self._image_tokens[job.index]

    def forget(self, job: RecordJob) -> None:
        self._image_tokens.pop(job.index, None)

    def fits(self, job: RecordJob, instruction: str) -> bool:
        """Whether the prompt of `instruction` (images included) is within `max_prompt_tokens`."""
        ids = chat.encode_prompt(self.tokenizer, instruction, self.image_tokens(job))
        return len(ids) <= self.encoding.max_prompt_tokens

    def encode(self, job: RecordJob, instruction: str) -> PromptExample:
        return encode_prompt_example(job.record, self.tokenizer, self.encoding, images=job.images,
                                     instruction=instruction)


class ModelGenerator:
    """`CandidateSource` backed by a loaded model and the rollout engine."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int, max_new_tokens: int, max_prompt_tokens: int,
                 num_candidates: int = 1, temperature: float = 0.7, seed: int = 0):
        from facialr1_jax.data.pipeline import pad_id_of
        from facialr1_jax.sampling import default_stop_token_ids

        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.num_candidates = int(num_candidates)
        self.temperature = float(temperature)
        self.seed = int(seed)
        self.pad_id = pad_id_of(tokenizer)
        self.stop_ids = np.asarray(default_stop_token_ids(model.config), np.int64)

    def _key(self, key_path: tuple[int, ...]):
        import jax

        key = jax.random.PRNGKey(self.seed)
        for part in key_path:
            key = jax.random.fold_in(key, int(part))
        return key

    def __call__(self, prompts: Sequence[PromptExample], key_path: tuple[int, ...]) -> list[list[Candidate]]:
        import jax

        from facialr1_jax.data.batching import collate_prompts
        from facialr1_jax.sampling import generate

        if len(prompts) > self.batch_size:
            raise ValueError(f"{len(prompts)} prompts do not fit one batch of {self.batch_size}")
        batch = collate_prompts(list(prompts), self.model.config, pad_id=self.pad_id,
                                max_length=self.max_prompt_tokens, batch_size=self.batch_size)
        if self.num_candidates == 1:
            out = generate(self.model, batch, max_new_tokens=self.max_new_tokens, temperature=0.0)
        else:
            out = generate(self.model, batch, max_new_tokens=self.max_new_tokens, num_samples=self.num_candidates,
                           temperature=self.temperature, rng=self._key(key_path))
        tokens = np.asarray(jax.device_get(out.tokens))
        lengths = np.asarray(jax.device_get(out.lengths))
        results: list[list[Candidate]] = []
        for prompt_row in range(len(prompts)):
            candidates = []
            for sample in range(self.num_candidates):
                row = prompt_row * self.num_candidates + sample
                generated = tokens[row, : lengths[row]]
                finished = bool(len(generated)) and bool(np.isin(generated[-1], self.stop_ids))
                text = self.tokenizer.decode(generated.tolist(), skip_special_tokens=True)
                candidates.append(Candidate(text=text, finished=finished))
            results.append(candidates)
        return results
