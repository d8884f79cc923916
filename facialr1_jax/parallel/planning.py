"""Compile-only plans of a training run: per-device memory, FLOPs per step and the implied MFU.

    plan = plan_config(config)        # a run config (configs/sft.py or configs/grpo.py), any mesh
    print(format_table(plan, step_seconds, peak_flops_per_device)); row = plan.to_dict(...)

Nothing is allocated on the devices: the model is built with `nnx.eval_shape`, the train state with
`jax.eval_shape`, and every program is `jax.jit(...).lower(<ShapeDtypeStructs with shardings>)
.compile()`d exactly as the training code builds it (the same `train.step.TrainStep`, SFT and GRPO
losses, and `sampling.Engine` prefill / decode programs). Batches come from the project's own
collators fed with synthetic examples of the configured worst-case shapes (prompt and target length
caps, images of `data.max_pixels`), so the plan sees the layouts training sees. On CPU,
`launch/plan.py` fakes N devices (`--xla_force_host_platform_device_count`), which lets a laptop
plan a 32-chip job.

What each program reports (`ProgramPlan`):
  * memory, per device, from `compiled.memory_analysis()`: arguments + outputs + temporaries - the
    bytes outputs alias from donated arguments. `StagePlan.per_device_bytes` adds what stays resident
    on the device but is not an argument of that program (e.g. the optimiser moments while the
    rollout runs, the frozen reference policy while GRPO updates), and takes the maximum over the
    stage's programs;
  * hardware FLOPs, from the optimised per-device HLO: the matmul FLOPs of every `dot`, multiplied
    through `while` trip counts. `compiled.cost_analysis()["flops"]` counts a loop body ONCE whatever
    its trip count, so for a step that scans 8 micro-batches it is 8x too low; it is still reported
    (`xla_cost_analysis_flops`) for reference. Hardware FLOPs include rematerialisation and any work
    replicated across devices. They are read from CPU programs only (elsewhere matmuls become library
    calls or convolutions);
  * model FLOPs, from the jaxpr of the forward pass (global, no recomputation): a train step counts
    3 x forward (forward + backward at twice the forward), the rollout counts prefill + decode steps.
    MFU = model FLOPs per step / (step time x devices x peak FLOP/s per device);
  * collective traffic: bytes produced per device by all-gather / all-reduce / reduce-scatter /
    all-to-all / collective-permute, per step.

Loops whose trip count the compiler cannot know (the decode `while_loop`s stop when every row has
stopped) are counted at their maximum: `max_new_tokens - 1` decode steps in all, each completion
window's loop at the steps it can run (`sampling.engine.completion_window_steps`).

Caveats printed with every plan (`CAVEATS`): on fake CPU devices, XLA:CPU's buffer assignment stands
in for the accelerator's; it computes bfloat16 matmuls in float32, so gathered weights and their
gradients appear at up to twice their accelerator size, and fusion differs. Attention is the model's
dense implementation (the [heads, L, L] scores are materialised).

This module sits at the launcher end of the import order (it imports train/ and sampling/), so it
is deliberately not re-exported from `facialr1_jax.parallel`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.extend import core as jax_core
from jax.sharding import Mesh

from facialr1_jax import models
from facialr1_jax.data import batching
from facialr1_jax.data.examples import TrainExample
from facialr1_jax.data.images import ImageConfig
from facialr1_jax.parallel.mesh import MESH_AXES, make_mesh
from facialr1_jax.parallel.rules import TRAINING_RULES, activation_sharding, state_shardings

# --------------------------------------------------------------------------------------------------
# FLOP and traffic counting
# --------------------------------------------------------------------------------------------------
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "f8e4m3fn": 1, "f8e5m2": 1,
                "s4": 1, "u4": 1}
_ARRAY_TYPE = re.compile(r"\b([a-z]+\d*(?:e\d+m\d+\w*)?)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*?)\)(.*)$")
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_CALLEE = re.compile(r"\b(calls|to_apply|body|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def _array_types(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(dtype, tuple(int(d) for d in dims.split(",") if d)) for dtype, dims in _ARRAY_TYPE.findall(text)
            if dtype in _DTYPE_BYTES]


@dataclasses.dataclass(frozen=True)
class HloCounts:
    """Per-device counts over one execution of an optimised HLO module, loops multiplied out."""

    matmul_flops: float
    collective_bytes: dict[str, float]
    unknown_trip_count_loops: int  # while loops counted at the caller's `unknown_trip_count`


TripCounts = int | Sequence[int]


def _trip_counter(unknown_trip_count: TripCounts) -> Callable[[], int]:
    """Hands out the trip count of each loop without a known one, in the order the loops are met: one
    number for all of them, or one per loop (more loops than numbers is an error)."""
    if isinstance(unknown_trip_count, (int, np.integer)):
        return lambda: int(unknown_trip_count)
    counts = iter(tuple(int(n) for n in unknown_trip_count))
    given = len(tuple(unknown_trip_count))

    def next_count() -> int:
        count = next(counts, None)
        if count is None:
            raise ValueError(f"more loops without a known trip count than the {given} trip counts given")
        return count

    return next_count


def count_hlo(hlo_text: str, *, unknown_trip_count: TripCounts = 1) -> HloCounts:
    """Matmul FLOPs and collective bytes of an optimised HLO module (`compiled.as_text()`).

    A `dot`'s FLOPs are 2 x (output elements) x (product of the lhs contracting dimensions); a
    `while` body counts `known_trip_count` times (the compiler's analysis), a conditional counts its
    costliest branch, fusions and calls once. A loop without a known trip count counts
    `unknown_trip_count` times: one number for every such loop, or a sequence with one per loop in the
    order they run. The HLO text lists a computation's instructions after their operands, so loops
    that feed each other (the rollout's completion windows) are met in that order; a computation
    called from two places is counted from its first.
    """
    trip_count = _trip_counter(unknown_trip_count)
    computations: dict[str, list[tuple[str, str, str, str, str]]] = {}
    entry = None
    current = None
    for line in hlo_text.splitlines():
        header = _COMPUTATION.match(line)
        if header:
            current = header.group(1)
            computations[current] = []
            if line.lstrip().startswith("ENTRY"):
                entry = current
            continue
        if current is None:
            continue
        if line.strip() == "}":
            current = None
            continue
        match = _INSTRUCTION.match(line)
        if match:
            computations[current].append(match.groups())
    if entry is None:
        raise ValueError("no ENTRY computation found in the HLO text")

    unknown_loops = 0
    memo: dict[str, tuple[float, dict[str, float]]] = {}

    def visit(name: str) -> tuple[float, dict[str, float]]:
        nonlocal unknown_loops
        if name in memo:
            return memo[name]
        flops = 0.0
        traffic: dict[str, float] = {}
        shapes = {inst[0]: inst[1] for inst in computations.get(name, [])}
        for inst_name, type_text, opcode, operands, attributes in computations.get(name, []):
            if opcode == "dot":
                out_dims = _array_types(type_text)[0][1]
                lhs_name = re.findall(r"%?([\w.\-]+)", operands.split(",")[0])[-1]
                lhs_types = _array_types(shapes.get(lhs_name, "")) or _array_types(operands.split(",")[0])
                contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attributes)
                lhs_dims = lhs_types[0][1] if lhs_types else ()
                size = math.prod(lhs_dims[int(d)] for d in contracting.group(1).split(",") if d) if contracting else 1
                flops += 2.0 * math.prod(out_dims) * size
            base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
            if base in COLLECTIVES:
                arrays = _array_types(type_text)
                if opcode.endswith("-start") and len(arrays) > 1:
                    arrays = arrays[len(arrays) // 2:]  # (operands..., results...): count the results
                traffic[base] = traffic.get(base, 0.0) + sum(
                    _DTYPE_BYTES[dtype] * math.prod(dims) for dtype, dims in arrays)
            callees: list[tuple[str, float]] = []
            for kind, callee in _CALLEE.findall(attributes):
                if kind == "to_apply" and opcode != "call":
                    continue  # reducers and scatter combiners: scalar code, no matmuls
                if kind == "body":
                    trip = _TRIP_COUNT.search(attributes)
                    if trip is None:
                        unknown_loops += 1
                    callees.append((callee, float(trip.group(1)) if trip else float(trip_count())))
                else:
                    callees.append((callee, 1.0))
            for callee, multiplier in callees:
                sub_flops, sub_traffic = visit(callee)
                flops += multiplier * sub_flops
                for key, value in sub_traffic.items():
                    traffic[key] = traffic.get(key, 0.0) + multiplier * value
            branches = _BRANCHES.search(attributes)
            if branches:
                costs = [visit(b.strip().lstrip("%")) for b in branches.group(1).split(",") if b.strip()]
                if costs:
                    worst = max(costs, key=lambda c: c[0])
                    flops += worst[0]
                    for key, value in worst[1].items():
                        traffic[key] = traffic.get(key, 0.0) + value
        memo[name] = (flops, traffic)
        return memo[name]

    flops, traffic = visit(entry)
    return HloCounts(matmul_flops=flops, collective_bytes=traffic, unknown_trip_count_loops=unknown_loops)


def jaxpr_matmul_flops(closed_jaxpr: Any, *, unknown_trip_count: TripCounts = 1) -> float:
    """Global matmul FLOPs of a (closed) jaxpr: scans multiply by their length, conditionals count their
    costliest branch, `while` bodies count `unknown_trip_count` times (one number for every loop, or
    one per loop in the order the jaxpr runs them; a sequence must name every loop)."""
    trip_count = _trip_counter(unknown_trip_count)
    total, loops = _jaxpr_flops(closed_jaxpr, trip_count)
    if not isinstance(unknown_trip_count, (int, np.integer)) and loops != len(tuple(unknown_trip_count)):
        raise ValueError(f"the jaxpr has {loops} while loops, but {len(tuple(unknown_trip_count))} trip counts "
                         f"were given")
    return total


def _jaxpr_flops(closed_jaxpr: Any, trip_count: Callable[[], int]) -> tuple[float, int]:
    """(matmul FLOPs, while loops met) of `jaxpr_matmul_flops`."""
    jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
    total, loops = 0.0, 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
            lhs_shape = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs_shape[d] for d in lhs_contracting)
            continue
        if name == "cond":
            # Every branch is walked for its loops; the costliest one counts.
            branches = [_jaxpr_flops(branch, trip_count) for branch in eqn.params["branches"]]
            total += max(flops for flops, _ in branches)
            loops += sum(count for _, count in branches)
            continue
        multiplier = 1.0
        if name == "scan":
            multiplier = float(eqn.params["length"])
        elif name == "while":
            multiplier = float(trip_count())
            loops += 1
        for key, value in eqn.params.items():
            if name == "while" and key == "cond_jaxpr":
                continue
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
                    flops, count = _jaxpr_flops(sub, trip_count)
                    total += multiplier * flops
                    loops += count
    return total, loops


def forward_flops(fn: Callable, *args: Any, unknown_trip_count: TripCounts = 1) -> float:
    """Global matmul FLOPs of `fn(*args)` (arguments may be ShapeDtypeStructs; nothing runs)."""
    return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args), unknown_trip_count=unknown_trip_count)


# --------------------------------------------------------------------------------------------------
# bytes of abstract trees
# --------------------------------------------------------------------------------------------------
def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs; the largest shard, per leaf)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = tuple(leaf.shape)
        sharding = getattr(leaf, "sharding", None)
        if sharding is not None:
            shape = tuple(sharding.shard_shape(shape))
        total += math.prod(shape) * jnp.dtype(leaf.dtype).itemsize
    return int(total)


def abstract_like(tree: Any, shardings: Any = None) -> Any:
    """ShapeDtypeStructs of `tree` (with `shardings`, a matching tree, or the leaves' own)."""
    if shardings is None:
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
                            tree)
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# --------------------------------------------------------------------------------------------------
# synthetic examples with the configured worst-case shapes
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ExampleShape:
    """The size of one synthetic example: text tokens around one image of `image_grid` patches."""

    sequence_tokens: int  # prompt (image placeholders included) + target, or the prompt alone
    target_tokens: int  # trained-on tokens at the end (0 for prompts)
    image_grid: tuple[int, int, int] | None  # (t, h, w) patch grid of the one image; None = text only


def image_grid_for(min_pixels: int, max_pixels: int, max_prompt_tokens: int | None = None,
                   merge_unit: int = 4) -> tuple[int, int, int]:
    """The patch grid of the largest square image the data config admits (the worst case).

    With `max_prompt_tokens`, the largest square image whose placeholders (patches / merge_unit, plus
    the vision start and end tokens) leave at least one text token in a prompt of that many tokens:
    a larger image makes its prompt too long, which the data pipeline rejects, so training never sees
    it. (At the reference's 12,845,056-pixel cap the largest square image is 16,384 merged tokens.)
    """
    images = ImageConfig(min_pixels=int(min_pixels), max_pixels=int(max_pixels))
    side = int(math.isqrt(int(max_pixels)))
    while True:
        grid = tuple(int(v) for v in images.grid_thw(side, side))
        fits = max_prompt_tokens is None or math.prod(grid) // merge_unit + 2 < int(max_prompt_tokens)
        if fits or side <= 28:
            return grid
        side -= 28


def planned_image_grid(config: Any, model_config: models.Qwen2_5_VLConfig) -> tuple[int, int, int]:
    """`image_grid_for` the data section of a stage config: the pixel caps and the prompt budget."""
    return image_grid_for(config.data.min_pixels, config.data.max_pixels, int(config.data.max_prompt_tokens),
                          model_config.vision_config.merge_unit)


def _special_ids(config: models.Qwen2_5_VLConfig) -> set[int]:
    ids = {config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id,
           config.vision_token_id}
    return {int(i) for i in ids if i is not None and i >= 0}


def _text_tokens(config: models.Qwen2_5_VLConfig, count: int, rng: np.random.Generator) -> np.ndarray:
    special = _special_ids(config)
    allowed = np.setdiff1d(np.arange(config.text_config.vocab_size), np.fromiter(special, np.int64))
    return rng.choice(allowed, size=count).astype(np.int32)


def _example_tokens(config: models.Qwen2_5_VLConfig, shape: ExampleShape, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input_ids, pixel_values, image_grid_thw) of one synthetic example of `shape`."""
    vision = config.vision_config
    if shape.image_grid is None:
        image_ids = np.zeros((0,), np.int32)
        pixels = np.zeros((0, vision.patch_dim), np.float32)
        grid = np.zeros((0, 3), np.int64)
    else:
        grid = np.asarray([shape.image_grid], np.int64)
        patches = int(np.prod(grid))
        image_ids = np.asarray([config.vision_start_token_id] + [config.image_token_id] * (patches // vision.merge_unit)
                               + [config.vision_end_token_id], np.int32)
        pixels = rng.standard_normal((patches, vision.patch_dim)).astype(np.float32)
    text = shape.sequence_tokens - len(image_ids)
    if text < max(1, shape.target_tokens):
        raise ValueError(f"a synthetic example of {shape.sequence_tokens} tokens cannot hold its image "
                         f"({len(image_ids)} tokens) and {shape.target_tokens} target tokens")
    head = _text_tokens(config, 1, rng)
    ids = np.concatenate([head, image_ids, _text_tokens(config, text - 1, rng)]).astype(np.int32)
    return ids, pixels, grid


def synthetic_train_examples(config: models.Qwen2_5_VLConfig, shape: ExampleShape, count: int, *, seed: int = 0
                             ) -> list[TrainExample]:
    """`count` SFT examples of `shape` with random text tokens and random image patches."""
    rng = np.random.default_rng(seed)
    examples = []
    for index in range(count):
        ids, pixels, grid = _example_tokens(config, shape, rng)
        label_mask = np.zeros(len(ids), np.float32)
        label_mask[len(ids) - shape.target_tokens:] = 1.0
        examples.append(TrainExample(id=f"synthetic-{index}", input_ids=ids, label_mask=label_mask,
                                     pixel_values=pixels, image_grid_thw=grid,
                                     prompt_length=len(ids) - shape.target_tokens, truncated=False))
    return examples


@dataclasses.dataclass(frozen=True)
class _SyntheticPrompt:
    """The fields `batching.collate_prompts` reads."""

    id: str
    input_ids: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray

    @property
    def num_patches(self) -> int:
        return int(self.pixel_values.shape[0])


def synthetic_prompts(config: models.Qwen2_5_VLConfig, shape: ExampleShape, count: int, *, seed: int = 0
                      ) -> list[_SyntheticPrompt]:
    rng = np.random.default_rng(seed)
    prompts = []
    for index in range(count):
        ids, pixels, grid = _example_tokens(config, dataclasses.replace(shape, target_tokens=0), rng)
        prompts.append(_SyntheticPrompt(f"prompt-{index}", ids, pixels, grid))
    return prompts


def synthetic_sft_batch(config: models.Qwen2_5_VLConfig, shape: ExampleShape, *, num_micro_batches: int,
                        micro_batch_size: int, max_length: int, pad_id: int = 0, seed: int = 0) -> dict:
    """An SFT optimiser batch (device arrays only) built by `data.batching.SFTCollator`."""
    examples = synthetic_train_examples(config, shape, num_micro_batches * micro_batch_size, seed=seed)
    collate = batching.SFTCollator(model_config=config, num_micro_batches=num_micro_batches, max_length=max_length,
                                   pad_id=pad_id)
    return batching.split_info(collate(examples))[0]


def synthetic_grpo_batch(config: models.Qwen2_5_VLConfig, shape: ExampleShape, *, num_prompts: int,
                         num_generations: int, completion_tokens: int, num_micro_batches: int,
                         with_old_log_probs: bool, with_ref_log_probs: bool, pad_id: int = 0, seed: int = 0,
                         share_prompts: bool = True, reference_loss_inputs: bool = False) -> tuple[dict, dict]:
    """(collated prompts, GRPO training batch) for `num_prompts` x `num_generations` random completions,
    built by `collate_prompts` and `train.grpo_batch.training_batch` (the rollout's path to the step).
    reference_loss_inputs: add the think mask and sample weights of `grpo.loss_variant = "facial_r1_code"`."""
    from facialr1_jax.train.grpo_batch import training_batch

    rng = np.random.default_rng(seed + 1)
    prompts = synthetic_prompts(config, shape, num_prompts, seed=seed)
    collated = batching.collate_prompts(prompts, config, pad_id=pad_id, max_length=shape.sequence_tokens)
    rows = num_prompts * num_generations
    tokens = _text_tokens(config, rows * completion_tokens, rng).reshape(rows, completion_tokens)
    lengths = rng.integers(1, completion_tokens + 1, size=rows)
    mask = (np.arange(completion_tokens)[None, :] < lengths[:, None]).astype(np.float32)
    advantages = rng.standard_normal(rows).astype(np.float32)
    log_probs = lambda: (-rng.uniform(0.01, 3.0, size=(rows, completion_tokens)) * mask).astype(np.float32)
    batch = training_batch(collated, [p.pixel_values for p in prompts], [p.image_grid_thw for p in prompts],
                           tokens, mask, advantages, num_generations=num_generations,
                           num_micro_batches=num_micro_batches, model_config=config, pad_id=pad_id,
                           old_log_probs=log_probs() if with_old_log_probs else None,
                           ref_log_probs=log_probs() if with_ref_log_probs else None,
                           share_prompts=share_prompts,
                           think_mask=mask * (np.arange(completion_tokens)[None, :] % 2) if reference_loss_inputs else None,
                           sample_weights=np.ones(rows, np.float32) if reference_loss_inputs else None)
    return collated, batch


def widen_micro_axis(batch: dict, num_micro_batches: int) -> dict:
    """ShapeDtypeStructs of a one-micro-batch batch with the leading axis set to `num_micro_batches`
    (every micro-batch of a synthetic batch has the same padded shapes, so one is collated)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((num_micro_batches,) + tuple(x.shape[1:]), x.dtype), batch)


# --------------------------------------------------------------------------------------------------
# plans
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ProgramPlan:
    """One compiled program, per device unless named otherwise."""

    name: str
    executions_per_step: float  # how often one optimiser step runs it
    compile_seconds: float
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    program_bytes: int  # argument + output + temp - alias: the program's own peak
    resident_bytes: int  # other arrays alive on the device meanwhile (not arguments of this program)
    hardware_flops: float | None  # per execution, per device, from the HLO (loops multiplied out); CPU only
    model_flops: float  # per execution, global, from the forward jaxpr (x3 for a train step)
    xla_cost_analysis_flops: float  # per execution, per device, `cost_analysis()` (loop bodies once)
    collective_bytes: dict[str, float]  # per execution, per device

    @property
    def peak_bytes(self) -> int:
        return self.program_bytes + self.resident_bytes


def _program_plan(name: str, compiled: Any, seconds: float, *, executions: float, resident_bytes: int,
                  model_flops: float, unknown_trip_counts: Sequence[int] = ()) -> ProgramPlan:
    """`unknown_trip_counts`: the trip count of each loop the compiler cannot bound, in the order they
    run; the program must have exactly that many such loops."""
    memory = compiled.memory_analysis()
    expected = len(unknown_trip_counts)
    try:
        counts = count_hlo(compiled.as_text(), unknown_trip_count=tuple(unknown_trip_counts))
    except ValueError:
        counts = None
    if counts is None or counts.unknown_trip_count_loops != expected:
        found = f"more than {expected}" if counts is None else counts.unknown_trip_count_loops
        raise RuntimeError(f"{name}: found {found} loops without a known trip count, expected {expected}; "
                           f"the FLOP count would be wrong")
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    program = memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes \
        - memory.alias_size_in_bytes
    return ProgramPlan(
        name=name, executions_per_step=float(executions), compile_seconds=round(seconds, 1),
        argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
        program_bytes=int(program), resident_bytes=int(resident_bytes),
        # Off CPU, matmuls become library calls or convolutions the HLO counter does not read.
        hardware_flops=counts.matmul_flops if jax.default_backend() == "cpu" else None,
        model_flops=float(model_flops),
        xla_cost_analysis_flops=float(cost.get("flops", 0.0)) if cost else 0.0,
        collective_bytes=counts.collective_bytes)


@dataclasses.dataclass
class StagePlan:
    """All programs one optimiser step of a stage runs."""

    stage: str
    preset: str
    mesh: dict[str, int]
    num_devices: int
    num_params: int
    state_bytes: int  # per device: parameters, optimiser moments, step and RNG (TrainState)
    shapes: dict[str, Any]
    programs: list[ProgramPlan]
    notes: list[str]

    @property
    def per_device_bytes(self) -> int:
        return max(p.peak_bytes for p in self.programs)

    @property
    def flops_per_step(self) -> float:
        """Model FLOPs of one optimiser step (global): the MFU numerator."""
        return sum(p.model_flops * p.executions_per_step for p in self.programs)

    @property
    def hardware_flops_per_step(self) -> float | None:
        """FLOPs all devices execute in one step (recomputation and replicated work included)."""
        if any(p.hardware_flops is None for p in self.programs):
            return None
        return self.num_devices * sum(p.hardware_flops * p.executions_per_step for p in self.programs)

    def collective_bytes_per_step(self) -> float:
        """Bytes of collective results per device per step."""
        return sum(sum(p.collective_bytes.values()) * p.executions_per_step for p in self.programs)

    def utilisation(self, step_seconds: float, peak_flops_per_device: float) -> dict[str, float]:
        """MFU and HFU at a measured step time, and the step time that 100% MFU would take."""
        capacity = self.num_devices * peak_flops_per_device
        out = {"seconds_per_step_at_full_mfu": self.flops_per_step / capacity}
        if step_seconds > 0:
            out["mfu"] = self.flops_per_step / (step_seconds * capacity)
            if self.hardware_flops_per_step is not None:
                out["hfu"] = self.hardware_flops_per_step / (step_seconds * capacity)
        return out

    def to_dict(self, step_seconds: float = 0.0, peak_flops_per_device: float = 0.0) -> dict:
        row = {
            "stage": self.stage, "preset": self.preset, "devices": self.num_devices, "mesh": self.mesh,
            "num_params": self.num_params, "state_bytes_per_device": self.state_bytes, "shapes": self.shapes,
            "per_device_bytes": self.per_device_bytes, "flops_per_step": self.flops_per_step,
            "hardware_flops_per_step": self.hardware_flops_per_step,
            "collective_bytes_per_device_per_step": self.collective_bytes_per_step(),
            "programs": [dict(dataclasses.asdict(p), peak_bytes=p.peak_bytes) for p in self.programs],
            "notes": self.notes,
        }
        if peak_flops_per_device > 0:
            row.update(self.utilisation(step_seconds, peak_flops_per_device))
        return row


def compiler_options() -> dict | None:
    """On CPU, skip LLVM's optimisation passes: the plan reads the HLO and its buffer assignment, which
    come before code generation and do not change, and the compile takes half the time."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


def _compile(jitted: Any, *args: Any, mesh: Mesh | None = None, rules=None, **static: Any) -> tuple[Any, Any, float]:
    """(lowered, compiled, seconds); with `mesh` and `rules`, the model's activation constraints apply
    while tracing, as they do in training."""
    start = time.perf_counter()
    if mesh is not None and rules is not None:
        with activation_sharding(mesh, rules):
            lowered = jitted.lower(*args, **static)
    else:
        lowered = jitted.lower(*args, **static)
    compiled = lowered.compile(compiler_options=compiler_options())
    return lowered, compiled, time.perf_counter() - start


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def mesh_for(config: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The run's mesh (`config.mesh`) over `devices` (default all)."""
    return make_mesh({axis: int(config.mesh[axis]) for axis in MESH_AXES}, devices=devices)


def model_config_for(config: Any) -> models.Qwen2_5_VLConfig:
    overrides = json.loads(config.model.preset_overrides) if config.model.preset_overrides else {}
    return models.get_preset(config.model.preset, **overrides)


@dataclasses.dataclass
class AbstractTraining:
    """What a stage's training code holds, as shapes with shardings."""

    model_def: Any
    state: Any  # TrainState of ShapeDtypeStructs (with shardings)
    shardings: Any  # TrainState of NamedShardings
    tx: Any
    schedule: Any
    num_params: int


def abstract_training(config: Any, model_config: models.Qwen2_5_VLConfig, mesh: Mesh, *, total_steps: int
                      ) -> AbstractTraining:
    """The model and TrainState of `train.state.create_train_state`, built without allocating."""
    from facialr1_jax.train import optim
    from facialr1_jax.train import state as state_lib

    m = config.model
    abstract_model = nnx.eval_shape(lambda: models.Qwen2_5_VL(
        model_config, dtype=_DTYPES[m.dtype], param_dtype=_DTYPES[m.param_dtype], remat=bool(m.remat),
        rngs=nnx.Rngs(0)))
    model_def, params = state_lib.split_model(abstract_model)
    params_sharding = state_shardings(params, mesh, TRAINING_RULES)
    tx, schedule = optim.make_optimizer(config.optimizer, total_steps)

    def init(p):
        return state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=p, opt_state=tx.init(p),
                                    rng=jax.random.PRNGKey(0))

    abstract_state = jax.eval_shape(init, params)
    shardings = state_lib.train_state_shardings(abstract_state, params_sharding, tx, mesh)
    state = state_lib.abstract_train_state(abstract_state, shardings)
    num_params = int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
    return AbstractTraining(model_def, state, shardings, tx, schedule, num_params)


def _micro_rows(batch_size: int, micro_batch_size: int) -> tuple[int, int]:
    micro = int(micro_batch_size) or int(batch_size)
    if batch_size % micro:
        raise ValueError(f"batch size {batch_size} is not a multiple of the micro-batch size {micro}")
    return batch_size // micro, micro


def _batch_split_note(rows: int, mesh: Mesh, what: str) -> list[str]:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if rows % shards:
        return [f"{what}: {rows} rows per micro-batch do not split over data x fsdp = {shards} devices, so the "
                f"batch is REPLICATED (every device computes every row); use a multiple of {shards}"]
    return []


# The planner's CPU devices stand in for accelerators: its programs compile with XLA's default options
# (compiler_options=None), not the CPU-only ones (parallel/xla_options.py) that CPU training runs get.
def plan_sft(config: Any, mesh: Mesh) -> StagePlan:
    """The SFT train step of `config` (an SFT config) on `mesh`."""
    from facialr1_jax.train import sft as sft_lib
    from facialr1_jax.train import step as step_lib

    model_config = model_config_for(config)
    num_micro, micro_rows = _micro_rows(int(config.sft.batch_size), int(config.sft.micro_batch_size))
    max_length = int(config.data.max_prompt_tokens) + int(config.data.max_target_tokens)
    shape = ExampleShape(sequence_tokens=max_length, target_tokens=int(config.data.max_target_tokens),
                         image_grid=planned_image_grid(config, model_config))
    one_micro = synthetic_sft_batch(model_config, shape, num_micro_batches=1, micro_batch_size=micro_rows,
                                    max_length=max_length)
    batch = widen_micro_axis(one_micro, num_micro)
    training = abstract_training(config, model_config, mesh, total_steps=1000)
    train_step = step_lib.TrainStep(training.model_def, sft_lib.sft_loss, training.tx, training.schedule,
                                    training.shardings, mesh, rules=TRAINING_RULES, compiler_options=None)
    jitted = train_step.compiled(batch)
    _, compiled, seconds = _compile(jitted, training.state,
                                    abstract_like(batch, step_lib.batch_shardings(batch, mesh)),
                                    mesh=mesh, rules=TRAINING_RULES)
    micro = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), batch)
    forward = forward_flops(lambda p, b: sft_lib.sft_loss(training.model_def.merge(p), b, None)[0],
                            training.state.params, micro)
    program = _program_plan("sft_step", compiled, seconds, executions=1, resident_bytes=0,
                            model_flops=3.0 * forward * num_micro)
    return StagePlan(
        stage="sft", preset=config.model.preset, mesh=dict(mesh.shape), num_devices=mesh.size,
        num_params=training.num_params, state_bytes=per_device_bytes(training.state),
        shapes={"batch_size": int(config.sft.batch_size), "micro_batches": num_micro, "micro_batch_rows": micro_rows,
                "sequence_length": int(batch["input_ids"].shape[-1]), "image_grid": list(shape.image_grid),
                "image_patches_per_micro_batch": int(batch["vision"]["pixel_values"].shape[1]),
                "dtype": config.model.dtype, "param_dtype": config.model.param_dtype,
                "remat": bool(config.model.remat)},
        programs=[program], notes=_batch_split_note(micro_rows, mesh, "sft step"))


def plan_grpo(config: Any, mesh: Mesh) -> StagePlan:
    """One GRPO step of `config` on `mesh`: rollout (prefill + decode), the reference (and, with
    mu > 1, old-policy) log-probs, and mu policy updates, as `train.grpo_loop.run_grpo` runs them."""
    from facialr1_jax.sampling.engine import completion_window_steps
    from facialr1_jax.train import grpo_loop
    from facialr1_jax.train import step as step_lib

    g = config.grpo
    model_config = model_config_for(config)
    num_generations, prompts, mu = int(g.num_generations), int(g.prompts_per_step), int(g.mu)
    completion = int(g.max_new_tokens)
    rows = prompts * num_generations
    num_micro, micro_rows = _micro_rows(rows, int(g.micro_batch_size))
    beta = float(g.beta)
    shape = ExampleShape(sequence_tokens=int(config.data.max_prompt_tokens), target_tokens=0,
                         image_grid=planned_image_grid(config, model_config))
    training = abstract_training(config, model_config, mesh, total_steps=max(1, int(g.num_steps) * mu))
    notes = _batch_split_note(micro_rows, mesh, "grpo step")

    # ---- the training batch: one micro-batch collated (whole prompt groups when they fit), then widened
    if micro_rows % num_generations == 0:
        built_prompts, built_micro = micro_rows // num_generations, 1
    else:
        built_prompts, built_micro = prompts, num_micro
    collated, built = synthetic_grpo_batch(model_config, shape, num_prompts=built_prompts,
                                           num_generations=num_generations, completion_tokens=completion,
                                           num_micro_batches=built_micro, with_old_log_probs=False,
                                           with_ref_log_probs=False, share_prompts=bool(g.share_prompts),
                                           reference_loss_inputs=g.get("loss_variant", "standard") == "facial_r1_code")
    policy_batch = widen_micro_axis(jax.tree.map(lambda x: x[:1], built), num_micro)
    log_prob_shape = jax.ShapeDtypeStruct(policy_batch["completion_mask"].shape, jnp.float32)
    update_batch = dict(policy_batch)
    if mu > 1:
        update_batch["old_log_probs"] = log_prob_shape
    if beta > 0:
        update_batch["ref_log_probs"] = log_prob_shape

    # ---- rollout: prefill + decode programs of the engine run_grpo builds (parameters in their
    # training shardings, as run_grpo passes them)
    rollout, rollout_notes = _compile_rollout(config, model_config, training, mesh, shape)
    notes.extend(rollout_notes)
    engine = rollout["engine"]

    state_bytes = per_device_bytes(training.state)
    params_bytes = per_device_bytes(training.state.params)
    reference_bytes = params_bytes if beta > 0 else 0
    # The sampling copy of the parameters is the rollout programs' argument; the whole train state
    # (its FSDP parameters included) and the reference stay resident meanwhile.
    resident_during_rollout = state_bytes + reference_bytes
    settings, params_arg = rollout["settings"], rollout["params"]
    prefill_forward = forward_flops(
        lambda p, b, r, k: engine._prefill(p, b, r, k, rollout["stops"], rollout["suppressed"], settings),
        params_arg, *_unsharded(rollout["prefill_args"]))
    # One while_loop per completion window, each counted at the most steps it can run.
    window_steps = completion_window_steps(completion, settings.completion_windows)
    decode_forward = forward_flops(lambda p, s: engine._decode(p, s, None, settings), params_arg,
                                   _unsharded(rollout["decode_state"]), unknown_trip_count=window_steps)
    programs = [
        _program_plan("rollout_prefill", rollout["prefill"], rollout["prefill_seconds"], executions=1,
                      resident_bytes=resident_during_rollout, model_flops=prefill_forward),
        _program_plan("rollout_decode", rollout["decode"], rollout["decode_seconds"], executions=1,
                      resident_bytes=resident_during_rollout, model_flops=decode_forward,
                      unknown_trip_counts=window_steps),
    ]

    # ---- log-probs of the frozen reference (beta > 0) and of the sampling policy (mu > 1)
    micro = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), update_batch)
    loss_fn = grpo_loop.make_grpo_loss(grpo_loop._loss_settings(config), use_stored_old_log_probs=mu > 1)
    forward = forward_flops(lambda p, b: loss_fn(training.model_def.merge(p), b, None)[0], training.state.params,
                            micro)
    log_prob_passes = (1 if beta > 0 else 0) + (1 if mu > 1 else 0)
    if log_prob_passes:
        # run_grpo's own log-prob program, lowered from shapes
        batch_arg = abstract_like(policy_batch, step_lib.batch_shardings(policy_batch, mesh))
        log_prob_fn = grpo_loop.make_log_prob_fn(step_lib.forward_only(training.model_def, training.state.params),
                                                 training.shardings.params, mesh, completion, compiler_options=None)
        _, compiled, seconds = _compile(log_prob_fn.program(batch_arg), training.state.params, batch_arg)
        programs.append(_program_plan("policy_log_probs", compiled, seconds, executions=log_prob_passes,
                                      resident_bytes=state_bytes - params_bytes + reference_bytes,
                                      model_flops=forward * num_micro))

    # ---- the policy update (mu per step)
    train_step = step_lib.TrainStep(training.model_def, loss_fn, training.tx, training.schedule, training.shardings,
                                    mesh, rules=TRAINING_RULES, compiler_options=None)
    _, compiled, seconds = _compile(train_step.compiled(update_batch), training.state,
                                 abstract_like(update_batch, step_lib.batch_shardings(update_batch, mesh)),
                                 mesh=mesh, rules=TRAINING_RULES)
    programs.append(_program_plan("grpo_step", compiled, seconds, executions=mu, resident_bytes=reference_bytes,
                                  model_flops=3.0 * forward * num_micro))
    return StagePlan(
        stage="grpo", preset=config.model.preset, mesh=dict(mesh.shape), num_devices=mesh.size,
        num_params=training.num_params, state_bytes=per_device_bytes(training.state),
        shapes={"prompts_per_step": prompts, "num_generations": num_generations, "completion_rows": rows,
                "micro_batches": num_micro, "micro_batch_rows": micro_rows, "mu": mu, "beta": beta,
                "prompt_length": int(collated["input_ids"].shape[1]), "max_new_tokens": completion,
                "sequence_length": int(collated["input_ids"].shape[1]) + completion,
                "shared_prompt_layout": "prompt_ids" in policy_batch, "image_grid": list(shape.image_grid),
                "image_patches_per_micro_batch": int(policy_batch["vision"]["pixel_values"].shape[1]),
                "dtype": config.model.dtype, "param_dtype": config.model.param_dtype, "remat": bool(config.model.remat),
                "kv_cache_dtype": engine.cache_dtype.name, "completion_windows": list(settings.completion_windows)},
        programs=programs, notes=notes)


def _compile_rollout(config: Any, model_config: models.Qwen2_5_VLConfig, training: AbstractTraining, mesh: Mesh,
                     shape: ExampleShape) -> tuple[dict, list[str]]:
    """Compiles the engine's prefill and decode for one rollout batch; returns the programs, their
    abstract arguments and notes. The KV cache is bfloat16, the engine's default on accelerators.

    As in `run_grpo`: the engine runs the model without remat (`step.forward_only`) on parameters
    resharded for sampling (`Engine.place_params`, SAMPLING_RULES), a copy held beside the train state
    during the rollout."""
    from facialr1_jax.sampling import Engine
    from facialr1_jax.sampling.batch import PromptBatch
    from facialr1_jax.sampling.engine import (_Settings, batch_bucket, default_stop_token_ids,
                                              grown_cache_warnings_ignored, token_id_array)
    from facialr1_jax.sampling.samplers import SamplingConfig
    from facialr1_jax.train import step as step_lib

    g = config.grpo
    notes = []
    prompts, completion = int(g.prompts_per_step), int(g.max_new_tokens)
    graphdef = step_lib.forward_only(training.model_def, training.state.params).graphdef
    # As on the accelerators it plans for (its fake devices are CPUs): no CPU decode kernels.
    engine = Engine(graphdef, model_config, mesh=mesh, cache_dtype=jnp.bfloat16, decode_kernels=False)
    prompt_batch = PromptBatch.from_collated(batching.collate_prompts(
        synthetic_prompts(model_config, shape, prompts), model_config, pad_id=0, max_length=shape.sequence_tokens))
    padded_prompts = batch_bucket(prompts)
    if padded_prompts != prompts:
        notes.append(f"rollout: the engine pads {prompts} prompts to {padded_prompts} rows")
    prompt_batch = prompt_batch.with_rows(padded_prompts, engine._filler_token_id())
    placed, real_prompts = engine._place(prompt_batch, np.arange(padded_prompts) < prompts)
    settings = _Settings(num_samples=int(g.num_generations), max_new_tokens=completion,
                         sampling=SamplingConfig.create(float(g.temperature), int(g.top_k), float(g.top_p), False),
                         pad_token_id=engine.pad_token_id, cache_dtype=engine.cache_dtype.name, return_logits=False)
    vocab = model_config.text_config.vocab_size
    stops = token_id_array(default_stop_token_ids(model_config), "stop_token_ids", vocab)
    suppressed = token_id_array(engine.placeholder_token_ids, "suppress_token_ids", vocab)
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    sampling_params = abstract_like(training.state.params,
                                    state_shardings(training.state.params, mesh, engine.rules))
    params = (sampling_params, training.model_def.frozen)
    prefill_args = (abstract_like(placed), abstract_like(real_prompts), rng)
    prefill_lowered, prefill, prefill_seconds = _compile(
        engine._prefill_program, params, *prefill_args, stops, suppressed, mesh=mesh, rules=engine.rules,
        settings=settings)
    decode_state = abstract_like(prefill_lowered.out_info, prefill.output_shardings)
    with grown_cache_warnings_ignored(settings):
        _, decode, decode_seconds = _compile(engine._decode_program, params, decode_state, None, mesh=mesh,
                                             rules=engine.rules, settings=settings)
    return {"engine": engine, "settings": settings, "params": params, "stops": stops, "suppressed": suppressed,
            "prefill_args": prefill_args, "prefill": prefill, "prefill_seconds": prefill_seconds,
            "decode_state": decode_state, "decode": decode, "decode_seconds": decode_seconds}, notes


def _unsharded(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


# --------------------------------------------------------------------------------------------------
# the whole plan of a run config
# --------------------------------------------------------------------------------------------------
CAVEATS = (
    "on CPU devices, memory is XLA:CPU's buffer assignment for the same sharded program: it computes bf16 "
    "matmuls in float32 (gathered weights and their gradients at up to twice their accelerator size) and "
    "fuses differently; plan on the target (--devices=0) to confirm",
    "attention is the model's dense implementation: [heads, L, L] float32 scores per layer are materialised",
    "rollout decode is counted at max_new_tokens - 1 steps (no early stop), over its completion windows",
)


@dataclasses.dataclass
class RunPlan:
    config_stage: str
    stages: list[StagePlan]

    @property
    def main(self) -> StagePlan:
        """The plan of the config's own stage (GRPO configs also plan their SFT warm start)."""
        return next(s for s in self.stages if s.stage == self.config_stage)

    def to_dict(self, step_seconds: float = 0.0, peak_flops_per_device: float = 0.0) -> dict:
        main = self.main.to_dict(step_seconds, peak_flops_per_device)
        return {"stage": self.config_stage, "devices": main["devices"], "mesh": main["mesh"],
                "per_device_bytes": main["per_device_bytes"], "flops_per_step": main["flops_per_step"],
                "hardware_flops_per_step": main["hardware_flops_per_step"],
                **{k: main[k] for k in ("mfu", "hfu", "seconds_per_step_at_full_mfu") if k in main},
                "stages": {s.stage: s.to_dict(step_seconds, peak_flops_per_device) for s in self.stages},
                "caveats": list(CAVEATS)}


def plan_config(config: Any, devices: Sequence[jax.Device] | None = None, *, stages: Iterable[str] | None = None
                ) -> RunPlan:
    """Plans the stage `config` names (sft or grpo) on the config's mesh over `devices` (default: all).

    A GRPO config also plans its SFT warm start (`config.warm_start`) unless `stages` excludes "sft".
    """
    stage = config.stage
    if stage not in ("sft", "grpo"):
        raise ValueError(f"plans exist for the sft and grpo stages, not {stage!r}")
    wanted = set(stages) if stages is not None else {"sft", "grpo"}
    plans = []
    if stage == "sft":
        plans.append(plan_sft(config, mesh_for(config, devices)))
    else:
        if "sft" in wanted and "warm_start" in config:
            plans.append(plan_sft(config.warm_start, mesh_for(config.warm_start, devices)))
        plans.append(plan_grpo(config, mesh_for(config, devices)))
    return RunPlan(config_stage=stage, stages=plans)


def format_bytes(count: float) -> str:
    return f"{count / 2**30:.2f} GiB"


def _tera(flops: float | None) -> str:
    return "n/a" if flops is None else f"{flops / 1e12:.2f}"


def format_table(plan: RunPlan, step_seconds: float = 0.0, peak_flops_per_device: float = 0.0) -> str:
    """A console table: one row per program, then the stage totals."""
    lines = []
    for stage in plan.stages:
        lines.append(f"== {stage.stage} | preset {stage.preset} | {stage.num_params / 1e9:.2f}B params | "
                     f"{stage.num_devices} devices, mesh {stage.mesh}")
        lines.append(f"   shapes: {json.dumps(stage.shapes)}")
        lines.append(f"   {'program':<18} {'x/step':>6} {'program mem':>12} {'+resident':>11} {'peak':>11} "
                     f"{'HW TFLOP/dev':>13} {'model TFLOP':>12} {'coll. GiB/dev':>14} {'compile s':>10}")
        for p in stage.programs:
            lines.append(f"   {p.name:<18} {p.executions_per_step:>6g} {format_bytes(p.program_bytes):>12} "
                         f"{format_bytes(p.resident_bytes):>11} {format_bytes(p.peak_bytes):>11} "
                         f"{_tera(p.hardware_flops):>13} {p.model_flops / 1e12:>12.2f} "
                         f"{sum(p.collective_bytes.values()) / 2**30:>14.2f} {p.compile_seconds:>10.1f}")
        lines.append(f"   per-device peak {format_bytes(stage.per_device_bytes)} (train state "
                     f"{format_bytes(stage.state_bytes)}); TFLOPs per step: model {_tera(stage.flops_per_step)}, "
                     f"hardware {_tera(stage.hardware_flops_per_step)}")
        if peak_flops_per_device > 0:
            u = stage.utilisation(step_seconds, peak_flops_per_device)
            text = (f"   at {peak_flops_per_device / 1e12:g} TFLOP/s per device: "
                    f"{u['seconds_per_step_at_full_mfu']:.3g} s per step at 100% MFU")
            if "mfu" in u:
                text += f"; at {step_seconds:g} s per step MFU {u['mfu']:.1%}"
                text += f", HFU {u['hfu']:.1%}" if "hfu" in u else ""
            lines.append(text)
        lines.extend(f"   note: {note}" for note in stage.notes)
    lines.extend(f"caveat: {caveat}" for caveat in CAVEATS)
    return "\n".join(lines)
