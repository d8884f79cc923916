"""grain pipelines from a random-access FEA source to training batches, with checkpointable state.

    dataset = sft_dataset(source, tokenizer, encoding, model_config, seed=0, batch_size=16,
                          num_micro_batches=2)              # grain.MapDataset of collated batches
    iterator = make_iterator(dataset, num_workers=2)        # grain.DatasetIterator
    batch = next(iterator); state = iterator.get_state()    # state: a small JSON-able dict

The training dataset is `MapDataset.source(source).seed(seed).shuffle().repeat().map(encode)
.batch(batch_size, batch_fn=collate)`: a fresh permutation every epoch (grain reseeds the shuffle
per epoch), epochs chained without a gap, so batch k is a pure function of (seed, k) and the
iterator state is just a position. Decoding + patchifying images and tokenizing run in `map`, i.e.
in grain's reader threads and, with `num_workers > 0`, in worker processes (`mp_prefetch`), while
the main process runs the train step.

A source is anything with `len()` and `source[i] -> {"record": FEARecord, "image_bytes": (...)}`
(`data.sources.FEAJsonlSource`, the TFDS source), which `data.datasets.load_split` returns.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import grain
import numpy as np

from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.data.batching import SFTCollator
from facialr1_jax.data.examples import (
    EncodingConfig,
    PromptExample,
    TrainExample,
    encode_prompt_example,
    encode_sft_example,
    synthesis_instruction,
)
from facialr1_jax.models import Qwen2_5_VLConfig


def element_images(element: dict) -> Sequence[Any]:
    """The images of a source element: encoded bytes or decoded images."""
    for key in ("image_bytes", "images"):
        if key in element:
            return element[key]
    raise KeyError(
        f"source element for record {element.get('id')!r} carries no images "
        f"(expected image_bytes or images; got keys {sorted(element)})"
    )


@dataclasses.dataclass(frozen=True)
class EncodeSFT:
    """grain random map: source element -> TrainExample (picklable, runs in workers); a share
    `encoding.synthesis_prompt_share` of the examples get the synthesis prompt."""

    tokenizer: Any
    encoding: EncodingConfig

    def __call__(self, element: dict, rng: np.random.Generator) -> TrainExample:
        record = element["record"]
        instruction = None
        if rng.random() < self.encoding.synthesis_prompt_share:
            # Both labels, the AUs only or the emotion only (examples module doc); a record with one shows it.
            shown = int(rng.integers(3)) if record.aus and record.label else 0
            instruction = synthesis_instruction(record, self.encoding.prompt_variant, show_aus=shown != 2,
                                                show_label=shown != 1)
        return encode_sft_example(record, self.tokenizer, self.encoding, images=element_images(element),
                                  instruction=instruction)


@dataclasses.dataclass(frozen=True)
class EncodePrompt:
    """grain map: source element -> PromptExample (the prompt side shared by GRPO, eval, synthesis)."""

    tokenizer: Any
    encoding: EncodingConfig

    def __call__(self, element: dict) -> PromptExample:
        return encode_prompt_example(element["record"], self.tokenizer, self.encoding,
                                     images=element_images(element))


def pad_id_of(tokenizer: Any) -> int:
    """The id used for padding: the tokenizer's pad token (Qwen2.5-VL: <|endoftext|>)."""
    return int(tokenizer_lib.special_token_ids(tokenizer).pad)


def sft_dataset(
    source: Any,
    tokenizer: Any,
    encoding: EncodingConfig,
    model_config: Qwen2_5_VLConfig,
    *,
    seed: int,
    batch_size: int,
    num_micro_batches: int = 1,
    shuffle: bool = True,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """Collated SFT batches (see the module docstring); endless unless `num_epochs` is given."""
    if len(source) == 0:
        raise ValueError("the training source holds no records")
    if batch_size % num_micro_batches:
        raise ValueError(f"batch_size {batch_size} is not divisible into {num_micro_batches} micro-batches")
    dataset = grain.MapDataset.source(source).seed(seed)
    if shuffle:
        dataset = dataset.shuffle()
    dataset = dataset.repeat(num_epochs)
    collate = SFTCollator(model_config=model_config, num_micro_batches=num_micro_batches,
                          max_length=encoding.max_length, pad_id=pad_id_of(tokenizer))
    # The prompt choice is drawn from (seed, position in the endless stream): per example and epoch,
    # and the same again after a resume.
    dataset = dataset.random_map(EncodeSFT(tokenizer, encoding))
    return dataset.batch(batch_size, drop_remainder=True, batch_fn=collate)


def make_iterator(
    dataset: grain.MapDataset, *, num_workers: int = 0, num_threads: int = 2, prefetch_batches: int = 2
) -> grain.DatasetIterator:
    """An iterator over `dataset` whose `get_state()` / `set_state()` resume it exactly.

    num_threads reader threads (each builds whole batches) keep up to `prefetch_batches` ready;
    with num_workers > 0 the work moves to that many worker processes. Scripts that use workers
    need an `if __name__ == "__main__":` guard (workers are spawned, not forked).
    """
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch_batches))
    )
    if num_workers > 0:
        from absl import flags

        if not flags.FLAGS.is_parsed():
            # grain reads its absl flags when it starts workers; outside an absl app (tests, notebooks)
            # nobody parsed them, so take their defaults.
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(1, prefetch_batches))
        )
    return iter(iter_dataset)


def default_num_threads() -> int:
    """Reader threads for the main-process pipeline: the machine's cores, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))
