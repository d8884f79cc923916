"""Hugging Face checkpoints <-> our Qwen2.5-VL: `from_pretrained` and `save_pretrained`.

Tensor names. transformers 5 keeps `model.visual.*`, `model.language_model.*` and `lm_head.weight` in
memory but writes the published naming to disk (`visual.*`, `model.*`, `lm_head.weight`); both are
accepted on import and the published naming is written on export, so transformers 4 and 5 both read
our exports.

Layouts. A PyTorch Linear stores (out, in); our kernels are (in..., out...) with attention heads kept
as separate dimensions, so import transposes and reshapes, export does the reverse. The vision patch
embedding is a Conv3d whose kernel equals its stride, i.e. a Linear over the flattened patch, and is
stored as such.

Import streams: the model is built abstractly (`nnx.eval_shape`, no memory), then each parameter is
read from its memory-mapped safetensors file, converted, and placed directly with its final sharding
(`jax.make_array_from_callback` hands every device only its own slice), so no host ever holds more
than one full tensor. Export gathers one parameter at a time and streams it into the shard files.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from facialr1_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from facialr1_jax.models.qwen2_5_vl.model import Qwen2_5_VL
from facialr1_jax.models.safetensors_io import SafetensorsFile, write_safetensors
from facialr1_jax.parallel.rules import Rules, TRAINING_RULES, variable_sharding

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
# Buffers some exporters include; they are recomputed from the config, never loaded.
_IGNORED_TENSORS = re.compile(r".*rotary_emb\.inv_freq$|.*rotary_pos_emb\.inv_freq$")

Path = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One parameter: where it lives in our model, its Hugging Face name, and how the layouts relate."""

    path: Path
    hf_name: str
    kind: str  # "linear_kernel", "linear_bias", "conv_kernel" or "same"
    input_dims: int = 1  # leading kernel dims that are Linear inputs (linear_kernel only)


def _linear(path: Path, hf_prefix: str, bias: bool, input_dims: int = 1) -> list[TensorSpec]:
    specs = [TensorSpec(path + ("kernel",), f"{hf_prefix}.weight", "linear_kernel", input_dims)]
    if bias:
        specs.append(TensorSpec(path + ("bias",), f"{hf_prefix}.bias", "linear_bias"))
    return specs


def tensor_specs(config: Qwen2_5_VLConfig) -> list[TensorSpec]:
    """Every parameter of `Qwen2_5_VL(config)`, in the published checkpoint naming."""
    specs = [TensorSpec(("visual", "patch_embed", "kernel"), "visual.patch_embed.proj.weight", "conv_kernel")]
    for i in range(config.vision_config.depth):
        ours, hf = ("visual", "blocks", i), f"visual.blocks.{i}"
        specs += [TensorSpec(ours + ("norm1", "weight"), f"{hf}.norm1.weight", "same"),
                  TensorSpec(ours + ("norm2", "weight"), f"{hf}.norm2.weight", "same")]
        specs += _linear(ours + ("attn", "qkv"), f"{hf}.attn.qkv", bias=True)
        specs += _linear(ours + ("attn", "proj"), f"{hf}.attn.proj", bias=True, input_dims=2)
        for name in ("gate_proj", "up_proj", "down_proj"):
            specs += _linear(ours + ("mlp", name), f"{hf}.mlp.{name}", bias=True)
    specs.append(TensorSpec(("visual", "merger", "ln_q", "weight"), "visual.merger.ln_q.weight", "same"))
    specs += _linear(("visual", "merger", "mlp_in"), "visual.merger.mlp.0", bias=True)
    specs += _linear(("visual", "merger", "mlp_out"), "visual.merger.mlp.2", bias=True)

    specs.append(TensorSpec(("language_model", "embed_tokens"), "model.embed_tokens.weight", "same"))
    for i in range(config.text_config.num_hidden_layers):
        ours, hf = ("language_model", "layers", i), f"model.layers.{i}"
        specs += [TensorSpec(ours + ("input_layernorm", "weight"), f"{hf}.input_layernorm.weight", "same"),
                  TensorSpec(ours + ("post_attention_layernorm", "weight"), f"{hf}.post_attention_layernorm.weight",
                             "same")]
        for name in ("q_proj", "k_proj", "v_proj"):
            specs += _linear(ours + ("self_attn", name), f"{hf}.self_attn.{name}", bias=True)
        specs += _linear(ours + ("self_attn", "o_proj"), f"{hf}.self_attn.o_proj", bias=False, input_dims=2)
        for name in ("gate_proj", "up_proj", "down_proj"):
            specs += _linear(ours + ("mlp", name), f"{hf}.mlp.{name}", bias=False)
    specs.append(TensorSpec(("language_model", "norm", "weight"), "model.norm.weight", "same"))
    if not config.tie_word_embeddings:
        specs += _linear(("lm_head",), "lm_head", bias=False)
    return specs


def canonical_hf_name(name: str) -> str:
    """Maps transformers-5 in-memory names (`model.visual.*`, `model.language_model.*`) to the published ones."""
    if name.startswith("model.visual."):
        return "visual." + name[len("model.visual."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def hf_to_ours(spec: TensorSpec, tensor: np.ndarray, our_shape: tuple[int, ...]) -> np.ndarray:
    if spec.kind == "linear_kernel":
        return tensor.T.reshape(our_shape)
    if spec.kind == "conv_kernel":
        return tensor.reshape(tensor.shape[0], -1).T.reshape(our_shape)
    return tensor.reshape(our_shape)


def ours_to_hf(spec: TensorSpec, value: np.ndarray, config: Qwen2_5_VLConfig) -> np.ndarray:
    if spec.kind == "linear_kernel":
        inputs = math.prod(value.shape[:spec.input_dims])
        return value.reshape(inputs, -1).T
    if spec.kind == "linear_bias":
        return value.reshape(-1)
    if spec.kind == "conv_kernel":
        v = config.vision_config
        return value.T.reshape(v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return value


def hf_shape(spec: TensorSpec, our_shape: tuple[int, ...], config: Qwen2_5_VLConfig) -> tuple[int, ...]:
    if spec.kind == "linear_kernel":
        return (math.prod(our_shape[spec.input_dims:]), math.prod(our_shape[:spec.input_dims]))
    if spec.kind == "linear_bias":
        return (math.prod(our_shape),)
    if spec.kind == "conv_kernel":
        v = config.vision_config
        return (v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)
    return tuple(our_shape)


class CheckpointReader:
    """Tensor lookup over a checkpoint directory: one model.safetensors, or shards listed by an index."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        index_path = os.path.join(self.directory, INDEX_FILE)
        self._files: dict[str, SafetensorsFile] = {}
        self._location: dict[str, tuple[str, str]] = {}  # canonical name -> (file, name in file)
        if os.path.exists(index_path):
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index_path} has no weight_map")
            file_names = sorted(set(weight_map.values()))
        elif os.path.exists(os.path.join(self.directory, SINGLE_FILE)):
            file_names = [SINGLE_FILE]
        else:
            raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {self.directory}")
        for file_name in file_names:
            path = os.path.join(self.directory, file_name)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{index_path} lists {file_name}, which is missing")
            self._files[file_name] = SafetensorsFile(path)
            for name in self._files[file_name].keys():
                canonical = canonical_hf_name(name)
                if canonical in self._location:
                    raise ValueError(f"tensor {canonical!r} appears twice in {self.directory} "
                                     f"({self._location[canonical][0]} and {file_name})")
                self._location[canonical] = (file_name, name)

    def names(self) -> set[str]:
        return set(self._location)

    def get(self, canonical: str) -> np.ndarray:
        if canonical not in self._location:
            raise KeyError(f"checkpoint {self.directory} has no tensor {canonical!r}")
        file_name, name = self._location[canonical]
        return self._files[file_name].get(name)


def _abstract_model(config: Qwen2_5_VLConfig, dtype, compute_dtype, remat: bool) -> Qwen2_5_VL:
    return nnx.eval_shape(
        lambda: Qwen2_5_VL(config, dtype=compute_dtype, param_dtype=dtype, remat=remat, rngs=nnx.Rngs(0)))


def _variables_by_path(model: nnx.Module) -> dict[Path, nnx.Variable]:
    return {tuple(path): node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable)}


def from_pretrained(directory: str | os.PathLike, dtype=jnp.float32, compute_dtype=None, mesh: Mesh | None = None,
                    rules: Rules | None = None, remat: bool = False) -> Qwen2_5_VL:
    """Loads a Hugging Face Qwen2.5-VL checkpoint directory (config.json + safetensors).

    dtype: parameter storage dtype; compute_dtype: activation dtype (default: dtype). With `mesh`, every
    parameter is placed with the sharding its logical axes map to under `rules` (default TRAINING_RULES).
    remat: see `Qwen2_5_VL`.
    """
    config = Qwen2_5_VLConfig.from_pretrained_dir(directory)
    compute_dtype = dtype if compute_dtype is None else compute_dtype
    rules = TRAINING_RULES if rules is None else rules
    reader = CheckpointReader(directory)
    model = _abstract_model(config, dtype, compute_dtype, remat)
    variables = _variables_by_path(model)
    specs = tensor_specs(config)
    expected = {spec.path for spec in specs}
    if set(variables) != expected:
        raise AssertionError(f"tensor table out of sync with the model: {sorted(set(variables) ^ expected)}")

    available = reader.names()
    missing = [spec.hf_name for spec in specs if spec.hf_name not in available]
    if missing:
        raise KeyError(f"checkpoint {directory} lacks {len(missing)} tensors, e.g. {missing[:5]}")
    used = {spec.hf_name for spec in specs}
    if config.tie_word_embeddings:
        used.add("lm_head.weight")  # a tied checkpoint may still carry the (identical) head
    unexpected = sorted(name for name in available - used if not _IGNORED_TENSORS.match(name))
    if unexpected:
        raise KeyError(f"checkpoint {directory} has {len(unexpected)} tensors this model does not use, "
                       f"e.g. {unexpected[:5]} (is config.json from a different model?)")

    for spec in specs:
        variable = variables[spec.path]
        shape = tuple(variable.get_value().shape)
        tensor = reader.get(spec.hf_name)
        if tuple(tensor.shape) != hf_shape(spec, shape, config):
            raise ValueError(f"{directory}: tensor {spec.hf_name} has shape {tuple(tensor.shape)}, the config "
                             f"implies {hf_shape(spec, shape, config)}")
        host = np.ascontiguousarray(hf_to_ours(spec, tensor, shape).astype(dtype))
        if mesh is None:
            value = jax.device_put(host)
        else:
            sharding = variable_sharding(variable, mesh, rules)
            value = jax.make_array_from_callback(shape, sharding, lambda index, host=host: host[index])
        variable.set_value(value)
        del host
    return model


def _to_host(array: jax.Array) -> np.ndarray:
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as "5GB", "500MB", "2GiB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(size).upper())
    if not match:
        raise ValueError(f"cannot parse size {size!r} (use e.g. 5GB, 500MB or a byte count)")
    number, unit = float(match.group(1)), match.group(2).rstrip("B")
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
             "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
    return int(number * scale)


def save_pretrained(model: Qwen2_5_VL, directory: str | os.PathLike, max_shard_size: int | str = "5GB",
                    dtype=None) -> list[str]:
    """Writes config.json (+ generation_config.json) and safetensors in the published naming.

    Tensors go into one model.safetensors when they fit in `max_shard_size`, otherwise into
    model-0000i-of-0000n.safetensors shards plus model.safetensors.index.json. `dtype` converts the stored
    weights (default: each parameter's own dtype). Every process must call this (parameters sharded across
    hosts are gathered collectively); only process 0 writes. Returns the files written.
    """
    directory = os.fspath(directory)
    config: Qwen2_5_VLConfig = model.config
    limit = parse_size(max_shard_size)
    variables = _variables_by_path(model)
    entries = []  # (spec, hf shape, stored dtype)
    for spec in tensor_specs(config):
        value = variables[spec.path].get_value()
        stored = np.dtype(value.dtype if dtype is None else dtype)
        entries.append((spec, hf_shape(spec, tuple(value.shape), config), stored))

    shards: list[list] = [[]]
    shard_bytes = 0
    for entry in entries:
        nbytes = math.prod(entry[1]) * entry[2].itemsize
        if shards[-1] and shard_bytes + nbytes > limit:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(entry)
        shard_bytes += nbytes
    file_names = ([SINGLE_FILE] if len(shards) == 1 else
                  [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])

    is_writer = jax.process_index() == 0
    specs_by_name = {spec.hf_name: spec for spec, _, _ in entries}
    stored_dtype = {spec.hf_name: stored for spec, _, stored in entries}

    def fetch(name: str) -> np.ndarray:
        spec = specs_by_name[name]
        host = _to_host(variables[spec.path].get_value())
        return np.ascontiguousarray(ours_to_hf(spec, host, config).astype(stored_dtype[name]))

    if is_writer:
        os.makedirs(directory, exist_ok=True)
        weight_dtype = entries[0][2]
        with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config.to_hf_dict(dtype=_torch_dtype_name(weight_dtype)), f, indent=2, sort_keys=True)
            f.write("\n")
        text = config.text_config
        generation = {k: v for k, v in (("bos_token_id", text.bos_token_id), ("pad_token_id", text.pad_token_id),
                                        ("eos_token_id", list(text.eos_token_id) if isinstance(text.eos_token_id, tuple)
                                         else text.eos_token_id)) if v is not None}
        with open(os.path.join(directory, "generation_config.json"), "w", encoding="utf-8") as f:
            json.dump(generation, f, indent=2, sort_keys=True)
            f.write("\n")
        stale = [n for n in os.listdir(directory) if n.endswith(".safetensors") or n == INDEX_FILE]
        for name in stale:  # a previous export with another shard count must not leave files behind
            os.remove(os.path.join(directory, name))

    total = 0
    weight_map = {}
    for file_name, shard in zip(file_names, shards):
        listing = [(spec.hf_name, shape, stored) for spec, shape, stored in shard]
        if is_writer:
            total += write_safetensors(os.path.join(directory, file_name), listing, fetch, {"format": "pt"})
        else:
            for name, _, _ in listing:  # take part in the collective gathers, write nothing
                fetch(name)
        weight_map.update({name: file_name for name, _, _ in listing})
    written = ["config.json", "generation_config.json"] + file_names
    if is_writer and len(file_names) > 1:
        with open(os.path.join(directory, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2, sort_keys=True)
            f.write("\n")
        written.append(INDEX_FILE)
    return [os.path.join(directory, name) for name in written]


def _torch_dtype_name(dtype: np.dtype) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(np.dtype(dtype).name,
                                                                                    np.dtype(dtype).name)
