"""FEA records -> model inputs: the prompt every stage shares, and SFT training examples.

    prompt = encode_prompt_example(record, tokenizer, encoding, images=...)   # rollout, GRPO, eval, synthesis
    example = encode_sft_example(record, tokenizer, encoding, images=...)     # stage 1

A prompt is the Qwen2.5-VL chat: the (default) system turn, a user turn with the image(s) then the
instruction (`fea.prompts.build_instruction` with the record's question and its dataset's allowed
labels, full or compact variant), and the opening of the assistant turn. Each image contributes
`t * h * w / merge_unit` image placeholder tokens, exactly as many as the vision tower returns
features for. An SFT example appends the record's target text and the end-of-turn token.

Which text the reply is (`EncodingConfig.target`):
  "description"  the record's reasoning annotation (`<think>...</think>\n<answer>...</answer>`), the
                 paper's stage 1 target;
  "compact"      the same answer format built from the labels alone: `<think>AU6, AU12</think>\n
                 <answer>happiness</answer>` (`compact_target`). Nearly every token of it depends on
                 the image, so a from-scratch language model learns to read the image tokens from it
                 far sooner than from a long description whose template dominates the loss.

Which instruction the prompt carries: the task instruction, or for a share of the SFT examples
(`EncodingConfig.synthesis_prompt_share`, drawn per example and epoch) the stage 3 synthesis
instruction with the record's own ground truth (`synthesis_instruction`), the reply unchanged. A
pretrained VLM follows such a prompt out of the box; a from-scratch demo model learns to from these
examples, so that stage 3 can then annotate new records with the labels it is given. Stage 2 records
carry both labels or only one (AU-only and emotion-only sources), so a record with both shows both,
only its AUs or only its emotion, drawn with equal odds.

Which tokens are trained on (`EncodingConfig.loss_on`):
  "assistant"  the reply and its end-of-turn token (the usual choice; the default);
  "all"        every token except image placeholders, as the reference code does (it masks only
               padding and image tokens, so the prompt is learned too).
Targets longer than `max_target_tokens` are truncated (counted in `TrainExample.truncated`);
prompts longer than `max_prompt_tokens` are an error naming the record: silently cutting a prompt
would cut the image or the question.

Everything here is host-side numpy and picklable, so it runs inside grain worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from facialr1_jax.data import chat
from facialr1_jax.data import images as image_lib
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.fea.aus import sort_aus
from facialr1_jax.fea.profiles import find_profile, labels_for
from facialr1_jax.fea.prompts import VARIANTS, build_instruction, build_synthesis_instruction
from facialr1_jax.fea.records import FEARecord, resolve_image_path

LOSS_ON = ("assistant", "all")
TARGETS = ("description", "compact")
# The think block of a compact target whose record has no active AU (a neutral face).
NO_AUS_TEXT = "none"


@dataclasses.dataclass(frozen=True)
class EncodingConfig:
    """How records become tokens and patches (the `data` section of a run config, plus loss_on)."""

    prompt_variant: str = "compact"
    image: image_lib.ImageConfig = dataclasses.field(default_factory=image_lib.ImageConfig)
    max_prompt_tokens: int = 256
    max_target_tokens: int = 160
    loss_on: str = "assistant"
    target: str = "description"
    synthesis_prompt_share: float = 0.0  # SFT examples whose prompt is the synthesis prompt (module doc)

    def __post_init__(self):
        if self.prompt_variant not in VARIANTS:
            raise ValueError(f"prompt_variant {self.prompt_variant!r} is not one of {VARIANTS}")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"loss_on {self.loss_on!r} is not one of {LOSS_ON}")
        if self.target not in TARGETS:
            raise ValueError(f"target {self.target!r} is not one of {TARGETS}")
        if not 0.0 <= self.synthesis_prompt_share <= 1.0:
            raise ValueError(f"synthesis_prompt_share {self.synthesis_prompt_share} is not within [0, 1]")

    @property
    def max_length(self) -> int:
        """The longest training sequence: prompt plus target."""
        return self.max_prompt_tokens + self.max_target_tokens

    @classmethod
    def from_config(cls, config: Any) -> "EncodingConfig":
        """From a run config: the `data` section (its `target` when present), and `sft.loss_on` and
        `sft.synthesis_prompt_share` when the config has them."""
        data = config.data
        loss_on = config.sft.loss_on if "sft" in config else "assistant"
        share = float(config.sft.get("synthesis_prompt_share", 0.0)) if "sft" in config else 0.0
        target = data.get("target", "description")
        return cls(
            prompt_variant=data.prompt_variant,
            image=image_lib.ImageConfig(min_pixels=int(data.min_pixels), max_pixels=int(data.max_pixels)),
            max_prompt_tokens=int(data.max_prompt_tokens),
            max_target_tokens=int(data.max_target_tokens),
            loss_on=loss_on,
            target=target,
            synthesis_prompt_share=share,
        )


@dataclasses.dataclass(frozen=True)
class PromptExample:
    """One encoded prompt, ready for `batching.collate_prompts` and the rollout engine."""

    id: str
    input_ids: np.ndarray  # int32 [T]: chat prompt with image placeholders, ending "<|im_start|>assistant\n"
    pixel_values: np.ndarray  # float32 [num_patches, patch_dim] (0 rows when there is no image)
    image_grid_thw: np.ndarray  # int64 [num_images, 3]
    record: FEARecord  # ground truth for rewards and metrics (labels, AUs, description)
    instruction: str  # the user-turn text that was encoded

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values.shape[0])


@dataclasses.dataclass(frozen=True)
class TrainExample:
    """One encoded SFT sequence, ready for `batching.SFTCollator`."""

    id: str
    input_ids: np.ndarray  # int32 [T]: prompt + reply + end-of-turn
    label_mask: np.ndarray  # float32 [T]: 1 where the token is a training target (predicted from its prefix)
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    prompt_length: int
    truncated: bool  # the reply was cut at max_target_tokens

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values.shape[0])


def load_record_images(record: FEARecord, image_root: str | None) -> list[bytes]:
    """The encoded bytes of every image of `record`, read only from inside `image_root`."""
    if image_root is None:
        raise ValueError(f"record {record.id!r}: no image root given and no image bytes passed")
    data = []
    for relative in record.images:
        path = resolve_image_path(image_root, relative, where=f"record {record.id!r}")
        data.append(image_lib.read_image_file(path))
    return data


def preprocess_images(
    record: FEARecord, images: Sequence[image_lib.ImageSource], image_config: image_lib.ImageConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(pixel_values, image_grid_thw) of all images of a record, concatenated in order."""
    if len(images) != len(record.images):
        raise ValueError(f"record {record.id!r} lists {len(record.images)} images but {len(images)} were given")
    patches, grids = [], []
    for relative, image in zip(record.images, images):
        try:
            values, grid = image_config.preprocess(image)
        except image_lib.ImageLoadError as error:
            raise image_lib.ImageLoadError(
                error.kind, error.reason, where=f"record {record.id!r}, image {relative!r}"
            ) from None
        patches.append(values)
        grids.append(np.asarray(grid, np.int64).reshape(3))
    if not patches:
        return np.zeros((0, image_config.patch_dim), np.float32), np.zeros((0, 3), np.int64)
    return np.concatenate(patches).astype(np.float32, copy=False), np.stack(grids)


def image_token_counts(grid_thw: np.ndarray, image_config: image_lib.ImageConfig) -> list[int]:
    """Placeholder tokens per image: patches / merge_size**2."""
    unit = image_config.merge_size**2
    return [int(np.prod(grid)) // unit for grid in np.asarray(grid_thw).reshape(-1, 3)]


def default_instruction(record: FEARecord, prompt_variant: str) -> str:
    """The task instruction for a record: its question and its dataset's allowed emotion list."""
    return build_instruction(record.question, labels_for(record.dataset), prompt_variant)


def synthesis_instruction(record: FEARecord, prompt_variant: str, *, show_aus: bool = True,
                          show_label: bool = True) -> str:
    """The stage 3 instruction for a record: the task instruction plus its ground truth (AUs and
    label, whichever it has; `show_aus` / `show_label` False leave one out, as for a record of an
    emotion-only or AU-only source)."""
    return build_synthesis_instruction(record.question, labels_for(record.dataset),
                                       record.aus if show_aus else (), record.label if show_label else None,
                                       prompt_variant)


def encode_prompt_example(
    record: FEARecord,
    tokenizer: Any,
    encoding: EncodingConfig,
    *,
    images: Sequence[image_lib.ImageSource] | None = None,
    image_root: str | None = None,
    instruction: str | None = None,
) -> PromptExample:
    """Encodes the prompt of `record`.

    images: the record's images (paths, bytes, PIL images or arrays); when None they are read from
    `image_root`. instruction: the user-turn text; None = the task instruction of
    `default_instruction` (synthesis passes its ground-truth-hinted prompt here).
    """
    if images is None:
        images = load_record_images(record, image_root)
    pixel_values, grid_thw = preprocess_images(record, images, encoding.image)
    text = default_instruction(record, encoding.prompt_variant) if instruction is None else instruction
    ids = np.asarray(chat.encode_prompt(tokenizer, text, image_token_counts(grid_thw, encoding.image)), np.int32)
    if len(ids) > encoding.max_prompt_tokens:
        raise ValueError(
            f"record {record.id!r}: the prompt has {len(ids)} tokens (images included), more than "
            f"data.max_prompt_tokens = {encoding.max_prompt_tokens}; raise it, lower data.max_pixels or "
            f"use data.prompt_variant = 'compact'"
        )
    return PromptExample(id=record.id, input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid_thw,
                         record=record, instruction=text)


def compact_target(record: FEARecord) -> str:
    """The short reply built from a record's labels: its AUs in numeric order, comma-separated, in
    the think block (`none` when it has none) and its emotion (labels[0]) as the answer, e.g.
    `<think>AU6, AU12</think>\n<answer>happiness</answer>`: the layout every reward and metric
    parses (`fea.answers`), with the canonical AU names and emotion nouns of the record."""
    if record.label is None:
        raise ValueError(f"record {record.id!r} has no emotion label: a compact SFT target needs one")
    aus = ", ".join(sort_aus(record.aus)) or NO_AUS_TEXT
    return f"<think>{aus}</think>\n<answer>{record.label}</answer>"


def has_target(record: FEARecord, target: str) -> bool:
    """Whether `record` carries what a truthful `target` reply is built from: a description; or an
    emotion label and an annotated AU set (an empty AU list of a data set without AU annotation
    means "not annotated", not "no AU", so such a record has no compact target)."""
    if target == "description":
        return bool(record.description.strip())
    if target == "compact":
        profile = find_profile(record.dataset)
        annotated = bool(record.aus) or (profile is not None and profile.annotated_aus != ())
        return record.label is not None and annotated
    raise ValueError(f"target {target!r} is not one of {TARGETS}")


def target_text(record: FEARecord, target: str) -> str:
    """The reply an SFT example trains on for `target` (one of TARGETS; see the module doc)."""
    if target == "description":
        if not record.description.strip():
            raise ValueError(f"record {record.id!r} has no description: SFT needs the reasoning text as its target")
        return record.description
    if target == "compact":
        return compact_target(record)
    raise ValueError(f"target {target!r} is not one of {TARGETS}")


def encode_sft_example(
    record: FEARecord,
    tokenizer: Any,
    encoding: EncodingConfig,
    *,
    images: Sequence[image_lib.ImageSource] | None = None,
    image_root: str | None = None,
    instruction: str | None = None,
) -> TrainExample:
    """Encodes prompt + the target text of `encoding.target` + end-of-turn, with the label mask of
    `encoding.loss_on`. instruction: the user-turn text (None = the task instruction)."""
    return encode_turn(record, tokenizer, encoding, instruction, target_text(record, encoding.target),
                       images=images, image_root=image_root)


def encode_turn(
    record: FEARecord,
    tokenizer: Any,
    encoding: EncodingConfig,
    instruction: str | None,
    reply_text: str,
    *,
    images: Sequence[image_lib.ImageSource] | None = None,
    image_root: str | None = None,
) -> TrainExample:
    """One training turn about `record`'s images: the prompt with `instruction` (None = the task
    instruction), then `reply_text` + end-of-turn, with the label mask of `encoding.loss_on`."""
    prompt = encode_prompt_example(record, tokenizer, encoding, images=images, image_root=image_root,
                                   instruction=instruction)
    reply = np.asarray(chat.encode_completion(tokenizer, reply_text), np.int32)
    truncated = len(reply) > encoding.max_target_tokens
    reply = reply[: encoding.max_target_tokens]
    input_ids = np.concatenate([prompt.input_ids, reply])
    label_mask = np.zeros(len(input_ids), np.float32)
    if encoding.loss_on == "assistant":
        label_mask[len(prompt.input_ids):] = 1.0
    else:
        image_token = tokenizer_lib.special_token_ids(tokenizer).image_pad
        label_mask[:] = (input_ids != image_token).astype(np.float32)
    return TrainExample(id=record.id, input_ids=input_ids, label_mask=label_mask,
                        pixel_values=prompt.pixel_values, image_grid_thw=prompt.image_grid_thw,
                        prompt_length=len(prompt.input_ids), truncated=bool(truncated))
