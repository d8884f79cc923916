"""From prompts and sampled completions to GRPO training batches (host-side numpy).

The rollout engine returns, for P prompts and G samples each, R = P * G completion rows ordered
[prompt0 x G, prompt1 x G, ...]. A policy update needs each row as one training sequence:

    input_ids   = left-padded prompt (Lp columns) ++ completion (T columns, pad after the stop)
    positions   = the prompt's M-RoPE positions ++ (real prompt tokens + j + rope_delta) for token j,
                  the same positions the engine used while decoding
    targets[t]  = input_ids[t + 1], so completion token j is predicted at column Lp - 1 + j

plus the per-row/per-token GRPO inputs (advantages, completion mask, old and reference
log-probs). The layout is `facialr1_jax.train.forward`'s micro-batched layout, so the shared
TrainStep accumulates GRPO micro-batches exactly like SFT ones.

When every micro-batch holds whole groups, the batch takes the shared-prompt layout instead
(`shared_prompt_batch`): each prompt once and only the completions per row, so the model computes a
prompt (and its image) once for its G completions, which attend its keys/values
(`LanguageModel.shared_prompt_forward`). In the full-sequence layout the G rows of a prompt still
share its image: each micro-batch packs every prompt it touches once and `vision["feature_offsets"]`
points the rows at their prompt's image features, so the vision tower runs once per prompt, not per
sample.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

import numpy as np

from facialr1_jax.data import batching

# First think block, tags matched case-insensitively (the AU reward's rule in fea.answers).
_THINK_SPAN = re.compile(rb"<think>(.*?)</think>", re.DOTALL | re.IGNORECASE)


@dataclasses.dataclass
class PromptCycler:
    """An endless, seeded order over a split's records; its state is checkpointed with the run.

    Each epoch is a fresh permutation drawn from (seed, epoch), so the order after a resume is the
    order an uninterrupted run would have seen.
    """

    size: int
    seed: int
    shuffle: bool = True
    epoch: int = 0
    position: int = 0

    def __post_init__(self):
        if self.size < 1:
            raise ValueError("PromptCycler needs at least one record")

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.size)
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def take(self, count: int) -> list[int]:
        indices: list[int] = []
        while len(indices) < count:
            order = self._order(self.epoch)
            needed = count - len(indices)
            chunk = order[self.position : self.position + needed]
            indices.extend(int(i) for i in chunk)
            self.position += len(chunk)
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
        return indices

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "size": self.size, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        if int(state["size"]) != self.size or int(state["seed"]) != self.seed:
            raise ValueError(
                f"the checkpointed prompt order is for {state['size']} records with seed {state['seed']}, "
                f"but this run has {self.size} records with seed {self.seed}"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def think_token_mask(byte_table: Any, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[R, T] float mask of the completion tokens that overlap the first <think>...</think> block.

    Works on the completion's bytes (special tokens contribute none). Tag matching is ASCII
    case-insensitive; the reward's Unicode case folding (e.g. the Kelvin sign) is not reproduced,
    which only matters for deliberately odd tags and only changes which tokens get the AU term.
    """
    out = np.zeros(tokens.shape, np.float32)
    for row in range(tokens.shape[0]):
        pieces = [byte_table.bytes_of(int(t)) if m else b"" for t, m in zip(tokens[row], mask[row])]
        ends = np.cumsum([len(p) for p in pieces])
        starts = ends - np.array([len(p) for p in pieces])
        match = _THINK_SPAN.search(b"".join(pieces))
        if match is None:
            continue
        span_start, span_end = match.span()
        overlaps = (starts < span_end) & (ends > span_start) & (ends > starts)
        out[row] = overlaps.astype(np.float32)
    return out


def reference_think_token_mask(byte_table: Any, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[R, T] float mask of the AU term's tokens in `grpo.loss_variant = "facial_r1_code"` (the authors'
    trainer, docs/METHOD.md 7.6): the tokens strictly between a `<think>` and a `</think>` tag.

    As the reference does with token ids, every `<think>` and every `</think>` is found (left to right,
    case-sensitive, not overlapping), the i-th opening is paired with the i-th closing, and a pair marks
    the content between them when the closing comes after the opening; tags themselves are not marked.
    The search runs on the kept tokens' bytes (special tokens contribute none), so a tag counts however
    it was split into tokens; a token is marked when all of its bytes lie inside a content span.
    """
    out = np.zeros(tokens.shape, np.float32)
    for row in range(tokens.shape[0]):
        pieces = [byte_table.bytes_of(int(t)) if m else b"" for t, m in zip(tokens[row], mask[row])]
        lengths = np.array([len(p) for p in pieces])
        ends = np.cumsum(lengths)
        starts = ends - lengths
        text = b"".join(pieces)
        openings = [m.end() for m in re.finditer(re.escape(b"<think>"), text)]
        closings = [m.start() for m in re.finditer(re.escape(b"</think>"), text)]
        for content_start, content_end in zip(openings, closings):
            if content_end > content_start:
                inside = (starts >= content_start) & (ends <= content_end) & (lengths > 0)
                out[row] = np.maximum(out[row], inside.astype(np.float32))
    return out


def training_batch(
    prompts: dict,
    prompt_pixel_values: Sequence[np.ndarray],
    prompt_grids: Sequence[np.ndarray],
    tokens: np.ndarray,
    completion_mask: np.ndarray,
    advantages: np.ndarray,
    *,
    num_generations: int,
    num_micro_batches: int,
    model_config: Any,
    pad_id: int,
    old_log_probs: np.ndarray | None = None,
    ref_log_probs: np.ndarray | None = None,
    share_prompts: bool = True,
    think_mask: np.ndarray | None = None,
    sample_weights: np.ndarray | None = None,
) -> dict:
    """The micro-batched GRPO batch for R = P * G rows (see the module docstring).

    prompts: `data.batching.collate_prompts` output for the P prompts (exactly P rows, no filler).
    prompt_pixel_values / prompt_grids: each prompt's patches and grids; under "vision", each
        micro-batch packs each of its prompts' images once and `feature_offsets` points its G rows at
        them (see `shared_prompt_vision`).
    advantages: [R] (one scalar per completion) or [R, T] (per token, e.g. the think-only AU term).
    share_prompts: when every micro-batch holds whole groups (its rows a multiple of G), build the
        shared-prompt layout (`shared_prompt_batch`: each prompt once, the model computes it once for
        its G completions); otherwise, or with False, one full sequence per row.
    think_mask / sample_weights: [R, T] and [R], the inputs of `grpo.loss_variant = "facial_r1_code"`
        (`reference_think_token_mask`, each row's record `weights`); carried per row like advantages.
    """
    num_rows, completion_length = tokens.shape
    num_prompts = prompts["input_ids"].shape[0]
    if num_rows != num_prompts * num_generations:
        raise ValueError(f"{num_rows} completion rows for {num_prompts} prompts x {num_generations} samples")
    if num_rows % num_micro_batches:
        raise ValueError(f"{num_rows} completion rows do not split into {num_micro_batches} micro-batches")
    per_micro = num_rows // num_micro_batches
    prompt_of_row = np.arange(num_rows) // num_generations
    keep = completion_mask > 0

    completion_ids = np.where(keep, tokens, pad_id).astype(np.int32)
    first = (prompts["prompt_lengths"] + prompts["rope_deltas"])[prompt_of_row]
    completion_positions = first[:, None] + np.arange(completion_length)[None, :]
    completion_positions = np.repeat(completion_positions[:, None, :], 3, axis=1).astype(np.int32)
    grpo_inputs = {"completion_mask": keep.astype(np.float32), "advantages": np.asarray(advantages, np.float32)}
    if old_log_probs is not None:
        grpo_inputs["old_log_probs"] = np.asarray(old_log_probs, np.float32)
    if ref_log_probs is not None:
        grpo_inputs["ref_log_probs"] = np.asarray(ref_log_probs, np.float32)
    if think_mask is not None:
        grpo_inputs["think_mask"] = np.asarray(think_mask, np.float32)
    if sample_weights is not None:
        sample_weights = np.asarray(sample_weights, np.float32)
        if sample_weights.shape != (num_rows,):
            raise ValueError(f"sample_weights has shape {sample_weights.shape}, expected ({num_rows},)")
        grpo_inputs["sample_weights"] = sample_weights
    if share_prompts and per_micro % num_generations == 0:
        return shared_prompt_batch(prompts, prompt_pixel_values, prompt_grids, completion_ids, completion_positions,
                                   grpo_inputs, num_micro_batches=num_micro_batches, model_config=model_config)

    input_ids = np.concatenate([prompts["input_ids"][prompt_of_row], completion_ids], axis=1)
    attention_mask = np.concatenate([prompts["attention_mask"][prompt_of_row].astype(bool), keep], axis=1)
    prompt_positions = np.transpose(prompts["position_ids"], (1, 0, 2))[prompt_of_row]  # [R, 3, Lp]
    position_ids = np.concatenate([prompt_positions, completion_positions], axis=2).astype(np.int32)
    targets = np.zeros_like(input_ids)
    targets[:, :-1] = input_ids[:, 1:]

    per_row = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": position_ids,
        "targets": targets,
        **grpo_inputs,
    }
    batch = {name: value.reshape(num_micro_batches, per_micro, *value.shape[1:]) for name, value in per_row.items()}

    if len(prompt_pixel_values) and sum(int(p.shape[0]) for p in prompt_pixel_values):
        batch["vision"] = shared_prompt_vision(prompt_pixel_values, prompt_grids,
                                               prompt_of_row.reshape(num_micro_batches, per_micro), model_config)
    return batch


def shared_prompt_batch(prompts: dict, prompt_pixel_values: Sequence[np.ndarray], prompt_grids: Sequence[np.ndarray],
                        completion_ids: np.ndarray, completion_positions: np.ndarray, grpo_inputs: dict, *,
                        num_micro_batches: int, model_config: Any) -> dict:
    """The shared-prompt layout of `training_batch` (whole groups per micro-batch): the P prompts once,
    [num_micro, P / num_micro, ...] (`prompt_ids`, `prompt_attention_mask`, `prompt_position_ids`), and
    the R completions, [num_micro, R / num_micro, ...] (`completion_ids`, `completion_position_ids`
    and the GRPO inputs). `train.forward.shared_prompt_completion_log_probs` runs each prompt through
    the model once and its G completions attend its keys/values: the same log-probs as the full
    sequences, without G copies of the prompt's (and its image's) forward and backward passes.
    """
    num_prompts = prompts["input_ids"].shape[0]
    if num_prompts % num_micro_batches:
        raise ValueError(f"{num_prompts} prompts do not split into {num_micro_batches} micro-batches")
    per_micro_prompts = num_prompts // num_micro_batches
    prompt_level = {
        "prompt_ids": prompts["input_ids"].astype(np.int32),
        "prompt_attention_mask": prompts["attention_mask"].astype(bool),
        "prompt_position_ids": np.transpose(prompts["position_ids"], (1, 0, 2)).astype(np.int32),  # [P, 3, Lp]
    }
    row_level = {"completion_ids": completion_ids, "completion_position_ids": completion_positions, **grpo_inputs}
    batch = {name: value.reshape(num_micro_batches, per_micro_prompts, *value.shape[1:])
             for name, value in prompt_level.items()}
    batch.update({name: value.reshape(num_micro_batches, -1, *value.shape[1:]) for name, value in row_level.items()})
    if len(prompt_pixel_values) and sum(int(p.shape[0]) for p in prompt_pixel_values):
        prompt_index = np.arange(num_prompts).reshape(num_micro_batches, per_micro_prompts)
        vision = shared_prompt_vision(prompt_pixel_values, prompt_grids, prompt_index, model_config)
        # One row per prompt, packed in row order: the placeholders read the images row-major, so the
        # offsets (each row's exclusive cumulative feature count) say nothing new.
        del vision["feature_offsets"]
        batch["vision"] = vision
    return batch


def shared_prompt_vision(
    prompt_pixel_values: Sequence[np.ndarray],
    prompt_grids: Sequence[np.ndarray],
    prompt_of_row: np.ndarray,
    model_config: Any,
) -> dict:
    """The "vision" leaves of a micro-batched batch whose rows share their prompts' images.

    prompt_of_row: [num_micro, per_micro], the prompt each row belongs to. Each micro-batch packs the
    images of its DISTINCT prompts once, in order of first appearance, so the vision tower encodes a
    prompt's image once for all of its samples in that micro-batch (instead of once per sample), and
    `feature_offsets` [num_micro, per_micro] (int32) points every row at its prompt's merged feature
    rows within its micro-batch's packed features (merged rows = patches / merge_unit). A micro-batch
    that holds only part of a group, or parts of several groups, packs each prompt it touches.
    All micro-batches pad to one patch bucket so that they stack.
    """
    merge_unit = model_config.vision_config.merge_unit
    for index, pixels in enumerate(prompt_pixel_values):
        if pixels.shape[0] % merge_unit:
            raise ValueError(f"prompt {index}'s image has {pixels.shape[0]} patches, not a multiple of the "
                             f"merge unit {merge_unit}")
    parts, offsets = [], np.zeros(prompt_of_row.shape, np.int32)
    for micro, rows in enumerate(prompt_of_row):
        distinct = list(dict.fromkeys(int(p) for p in rows))
        patch_counts = [int(prompt_pixel_values[p].shape[0]) for p in distinct]
        first_feature = np.concatenate([[0], np.cumsum(patch_counts)[:-1]]) // merge_unit
        offset_of_prompt = dict(zip(distinct, first_feature))
        offsets[micro] = [offset_of_prompt[int(p)] for p in rows]
        parts.append(([prompt_pixel_values[p] for p in distinct], [prompt_grids[p] for p in distinct],
                      sum(patch_counts)))
    pad_to = batching.patch_bucket(max(total for _, _, total in parts), merge_unit)
    packed = [batching.pack_vision(pixels, grids, model_config, pad_to) for pixels, grids, _ in parts]
    vision = {name: np.stack([part[name] for part in packed]) for name in packed[0]}
    vision["feature_offsets"] = offsets  # the key `train.forward.hidden_states` reads
    return vision
