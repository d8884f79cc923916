"""The compiled decode step reads the KV cache as it lies: no transpose of a cache-sized array.

Both parts of the decode cache (`SharedPromptCache`: the prompt part, one row per prompt, and the
completion part, one row per sample) are stored head-major, values (rows, kv_heads, slots, head_dim)
and keys dimension-major (rows, kv_heads, head_dim, slots), which is the operand order the attention's
batched matmuls need. Stored any other way, XLA transposes every layer's whole cache on every decode
step (about a fifth of a CPU decode step at the `small` preset) or runs its slow contraction of two
minor dims;
this reads the optimised HLO of the engine's decode program and fails if such a transpose (or a
layout-changing copy, the other form XLA gives a transpose) comes back. It also checks from the
program's arguments that the prompt part is stored once per prompt, not once per sample.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from facialr1_jax.sampling import Engine
from tests.sampling.prompts import image_prompts, prompt_batch

# `%name = f32[8,2,40,16]{3,2,1,0} transpose(...)`, inside fusions too; copies are caught when their
# layout differs from their operand's (a physical transpose) by comparing against the operand below.
_INSTRUCTION = re.compile(r"%(?P<name>[\w.\-]+) = (?P<dtype>\w+)\[(?P<dims>[\d,]*)\]\{(?P<layout>[\d,]*)\}\s+"
                          r"(?P<op>transpose|copy)\((?P<operand>[^)]*)\)")
_SHAPE = re.compile(r"%(?P<name>[\w.\-]+) = \w+\[(?P<dims>[\d,]*)\]\{(?P<layout>[\d,]*)\}")


def rearranged_arrays(hlo_text: str, min_elements: int) -> list[str]:
    """Transposes, and copies that change layout, producing arrays of at least `min_elements`."""
    layouts = {m["name"]: (m["dims"], m["layout"]) for m in _SHAPE.finditer(hlo_text)}
    found = []
    for m in _INSTRUCTION.finditer(hlo_text):
        dims = [int(d) for d in m["dims"].split(",") if d]
        if int(np.prod(dims, dtype=np.int64)) < min_elements:
            continue
        if m["op"] == "copy":
            operand = m["operand"].strip().lstrip("%").split(",")[0]
            if layouts.get(operand) == (m["dims"], m["layout"]):
                continue  # same shape and layout: a plain copy, not a transpose
        found.append(m.group(0))
    return found


def _cache_elements(config, rows: int, slots: int) -> int:
    text = config.text_config
    return rows * text.num_key_value_heads * slots * text.head_dim


def test_the_detector_sees_a_transposed_cache():
    # Guards the regex against HLO format changes: the old sequence-major contraction must be caught.
    rows, slots, kv, dim = 8, 40, 2, 16
    query = jnp.zeros((rows, 1, kv, 2, dim), jnp.float32)
    cache = jnp.zeros((rows, slots, kv, dim), jnp.float32)
    text = jax.jit(lambda q, c: jnp.einsum("blkgd,bskd->bkgls", q, c)).lower(query, cache).compile().as_text()
    assert rearranged_arrays(text, rows * slots * kv * dim), "a cache-sized transpose was not detected"


def _cache_argument_shapes(hlo_text: str, part: str) -> list[str]:
    """Shapes of the decode program's layer-0 `part` arguments (e.g. "prompt_keys"), as HLO writes them."""
    return re.findall(rf"state_cache_{part}_0_[.\w]*: (\w+\[[\d,]+\])", hlo_text)


def test_compiled_decode_step_never_transposes_the_cache(tiny_model, tiny_config):
    # Image prompts fanned out to 2 samples: the decode program generate really runs (4 prompt rows in
    # the bucket, 8 sample rows; prompt slots = the prompt bucket, completion slots = new tokens).
    batch = prompt_batch(tiny_config, image_prompts(tiny_config))
    new_tokens, samples = 8, 2
    engine = Engine.for_model(tiny_model)
    text = engine.compiled_decode_text(nnx.state(tiny_model), batch, max_new_tokens=new_tokens,
                                       num_samples=samples, temperature=1.0, rng=jax.random.key(0))
    prompts = 4  # three prompts round up to a bucket of four
    rows = prompts * samples
    text_config = tiny_config.text_config
    kv, dim = text_config.num_key_value_heads, text_config.head_dim
    expected = {"prompt_keys": f"f32[{prompts},{kv},{dim},{batch.prompt_length}]",
                "prompt_values": f"f32[{prompts},{kv},{batch.prompt_length},{dim}]",
                "completion_keys": f"f32[{rows},{kv},{dim},{new_tokens}]",
                "completion_values": f"f32[{rows},{kv},{new_tokens},{dim}]"}
    for part, shape in expected.items():
        shapes = _cache_argument_shapes(text, part)
        assert shapes, f"the decode program has no {part} argument to check"
        # Head-major (keys dimension-major), and the prompt part has one row per prompt (not per sample).
        assert shapes[0] == shape, f"{part} is stored as {shapes[0]}, expected {shape}"
    # The smaller of the two cache parts: anything that large rearranged per step is a cache transpose.
    smallest_part = min(_cache_elements(tiny_config, prompts, batch.prompt_length),
                        _cache_elements(tiny_config, rows, new_tokens))
    offenders = rearranged_arrays(text, smallest_part)
    assert not offenders, f"the decode step rearranges cache-sized arrays: {offenders}"
