"""Converts Qwen2.5-VL weights between Hugging Face folders and this project's orbax checkpoints.

    # Hugging Face (PyTorch safetensors) -> an orbax checkpoint usable as --config.model.checkpoint
    python launch/convert.py --to=orbax --src=HF_DIR --dst=WORKDIR [--param_dtype=bfloat16]
    # a training workdir / step folder (or another HF folder) -> a Hugging Face folder
    python launch/convert.py --to=hf --src=WORKDIR_OR_STEP --dst=HF_OUT [--param_dtype=bfloat16]
                             [--max_shard_size=5GB]

The Hugging Face export holds config.json, generation_config.json, safetensors (sharded with an
index above --max_shard_size) and, when the source knows its tokenizer, the tokenizer files, so
`transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(HF_OUT)` loads it directly. The orbax
output is WORKDIR/checkpoints/0/{params,meta} in the layout of facialr1_jax.train.checkpoint.
With several devices the weights are sharded over all of them (an fsdp mesh) while converting.
"""

import json
import os
import sys

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from facialr1_jax import launch_support  # noqa: E402

_TO = flags.DEFINE_enum("to", None, ["hf", "orbax"], "Output format: a Hugging Face folder or an orbax checkpoint.")
_SRC = flags.DEFINE_string("src", None, "Source: a Hugging Face folder, a training workdir or a step folder.")
_DST = flags.DEFINE_string("dst", None, "Output folder (HF folder for --to=hf, workdir for --to=orbax).")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", None, ["float32", "bfloat16"],
                                 "Stored weight dtype of the output (default: the source's).")
_MAX_SHARD_SIZE = flags.DEFINE_string("max_shard_size", "5GB", "Largest safetensors file for --to=hf, e.g. 5GB.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Allow --dst to exist and already hold files.")


def _check_flags() -> None:
    for flag, name in ((_TO, "to"), (_SRC, "src"), (_DST, "dst")):
        if not flag.value:
            launch_support.fail(f"--{name} is required")
    if not os.path.isdir(_SRC.value):
        launch_support.fail(f"--src {_SRC.value} is not a folder")
    if os.path.abspath(_SRC.value) == os.path.abspath(_DST.value):
        launch_support.fail("--dst must differ from --src")
    if os.path.isdir(_DST.value) and os.listdir(_DST.value) and not _OVERWRITE.value:
        launch_support.fail(f"--dst {_DST.value} is not empty (pass --overwrite to write into it)")
    if _TO.value == "hf":
        from facialr1_jax.models.hf_io import parse_size

        try:
            parse_size(_MAX_SHARD_SIZE.value)
        except ValueError as error:
            launch_support.fail(f"--max_shard_size: {error}")


def _mesh():
    import jax

    from facialr1_jax.parallel import make_mesh

    return make_mesh({"fsdp": -1}) if jax.device_count() > 1 else None


def _dtype(name):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _hf_stored_dtype(directory: str) -> str:
    """The weight dtype a Hugging Face folder declares (config.json dtype / torch_dtype), float32 otherwise."""
    import json

    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    declared = raw.get("dtype") or raw.get("torch_dtype")
    return declared if declared in ("float32", "bfloat16") else "float32"


def to_hf() -> list[str]:
    from facialr1_jax import models
    from facialr1_jax.train import checkpoint

    kind, _, _ = checkpoint.resolve_checkpoint(_SRC.value)
    storage = _PARAM_DTYPE.value
    if kind == "hf":
        storage = storage or _hf_stored_dtype(_SRC.value)
        model = models.from_pretrained(_SRC.value, dtype=_dtype(storage), mesh=_mesh())
        tokenizer = None
        if any(os.path.isfile(os.path.join(_SRC.value, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(_SRC.value)
    else:
        model, tokenizer, info = checkpoint.load_model(_SRC.value, mesh=_mesh(), param_dtype=storage)
    written = models.save_pretrained(model, _DST.value, max_shard_size=_MAX_SHARD_SIZE.value)
    import jax

    if tokenizer is not None and hasattr(tokenizer, "save_pretrained") and jax.process_index() == 0:
        written += list(tokenizer.save_pretrained(_DST.value))
    if kind == "orbax" and jax.process_index() == 0:
        written += _model_card(info)
    return written


def _model_card(info: dict) -> list[str]:
    """A stage 0 (perception pretraining) workdir exports with its model card (README.md)."""
    from configs import pretrain as pretrain_config
    from facialr1_jax.train import pretrain

    run_config = info["meta"].get("config") or {}
    if run_config.get("stage") != "pretrain":
        return []
    default = json.loads(pretrain_config.get_config().to_json_best_effort())
    card = pretrain.write_model_card(_SRC.value, _DST.value, run_config=run_config, default_config=default)
    return [card] if card else []


def to_orbax() -> list[str]:
    import orbax.checkpoint as ocp
    from flax import nnx

    from facialr1_jax import models
    from facialr1_jax.train import checkpoint

    kind, where, _ = checkpoint.resolve_checkpoint(_SRC.value)
    if kind != "hf":
        launch_support.fail(f"--to=orbax needs a Hugging Face folder as --src; {_SRC.value} is already orbax")
    storage = _PARAM_DTYPE.value or _hf_stored_dtype(where)
    model = models.from_pretrained(where, dtype=_dtype(storage), mesh=_mesh())
    has_tokenizer = any(os.path.isfile(os.path.join(where, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
    meta = checkpoint.model_meta(model.config, preset="", dtype=storage, param_dtype=storage,
                                 tokenizer=where if has_tokenizer else "")
    directory = os.path.join(os.path.abspath(_DST.value), checkpoint.CHECKPOINT_SUBDIR)
    manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=True))
    try:
        manager.save(0, args=ocp.args.Composite(
            params=ocp.args.StandardSave(nnx.state(model, nnx.Param)),
            meta=ocp.args.JsonSave({**meta, "format": checkpoint.META_FORMAT, "step": 0, "converted_from": where})),
            force=True)
        manager.wait_until_finished()
    finally:
        manager.close()
    return [os.path.join(directory, "0")]


def main(argv):
    if len(argv) > 1:
        launch_support.fail(f"unexpected positional arguments: {' '.join(argv[1:])}")
    _check_flags()
    launch_support.initialize_distributed()
    try:
        written = to_hf() if _TO.value == "hf" else to_orbax()
    except (FileNotFoundError, KeyError, ValueError) as error:
        launch_support.fail(f"conversion failed: {error}", exit_code=1)
    import jax

    if jax.process_index() == 0:
        for path in written:
            print(path)


if __name__ == "__main__":
    app.run(main, flags_parser=launch_support.parse_flags_or_fail)
