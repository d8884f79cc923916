"""Training checkpoints (orbax) and loading a model back from any checkpoint, workdir or HF folder.

Layout of a training workdir:

    WORKDIR/checkpoints/<step>/
        params/   trainable parameters (orbax StandardSave of an nnx.State; sharded arrays stay sharded)
        train/    optimiser state, step counter, RNG key
        data/     the data iterator state, one JSON file per process (`process_<i>-of-<n>.json`)
        meta/     JSON: model config (Hugging Face `config.json` dictionary), preset name, dtypes,
                  tokenizer path, stage and the run's whole config

`params` is a separate item so that evaluation, GRPO warm starts and export restore the weights
without touching optimiser moments (twice the size of the weights). `meta` holds what is needed to
rebuild the model without the run's config file: `load_model(path)` takes a workdir (its latest
step), one step folder, or a Hugging Face folder, and returns (model, tokenizer, info).

Saving is asynchronous (orbax writes in a background thread while training continues; arrays are
copied off the device first, so the donated state may be overwritten safely). The data iterator
state is captured synchronously at the call, so it always describes exactly the batches consumed
by the saved step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from facialr1_jax.parallel import files
from facialr1_jax.train.state import TrainState, abstract_train_state

_log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
# Checkpoints that ship inside the package, by name: `model.checkpoint=demo-base`, `FacialR1.load("demo-base")`.
# Each is a Hugging Face Qwen2.5-VL folder under facialr1_jax/assets/ with a model card (README.md).
ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
NAMED_CHECKPOINTS = {"demo-base": os.path.join(ASSETS_DIR, "demo-base")}
META_FORMAT = "facialr1_jax.train_checkpoint/1"
ITEMS = ("params", "train", "data", "meta")


# -------------------------------------------------------------------------- data iterator state
class DataStateHandler(ocp.CheckpointHandler):
    """Writes a JSON-serialisable iterator state per process (each host reads its own shard)."""

    @staticmethod
    def _file(directory: epath.Path) -> epath.Path:
        return directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory: epath.Path, args: "DataStateSave"):
        self._file(directory).write_text(json.dumps(args.state, indent=1, sort_keys=True))

    def restore(self, directory: epath.Path, args: "DataStateRestore" = None) -> Any:
        path = self._file(directory)
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is missing: the checkpoint was written by a run with a different process count"
            )
        return json.loads(path.read_text())

    def metadata(self, directory: epath.Path) -> None:
        return None

    def finalize(self, directory: epath.Path) -> None:
        pass

    def close(self) -> None:
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
    state: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
    pass


# ---------------------------------------------------------------------------------- checkpointer
@dataclasses.dataclass
class Restored:
    state: TrainState
    data_state: Any  # None when the checkpoint holds no iterator state
    meta: dict
    step: int


class Checkpointer:
    """A CheckpointManager over WORKDIR/checkpoints with the items of the module docstring."""

    def __init__(self, workdir: str | os.PathLike, *, max_to_keep: int = 2, async_save: bool = True):
        # A local folder (absolute) or a URL such as gs://bucket/run, which orbax writes to directly.
        self.directory = os.path.join(files.resolve(workdir), CHECKPOINT_SUBDIR)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, state: TrainState, *, meta: dict, data_state: Any = None) -> int:
        """Starts saving `state` at its own step; returns the step. Call `wait()` before exiting."""
        step = int(jax.device_get(state.step))
        items = {
            "params": ocp.args.StandardSave(state.params),
            "train": ocp.args.StandardSave({"opt_state": state.opt_state, "step": state.step, "rng": state.rng}),
            "meta": ocp.args.JsonSave({**meta, "format": META_FORMAT, "step": step}),
        }
        if data_state is not None:
            items["data"] = DataStateSave(data_state)
        if step in self.manager.all_steps():
            _log.info("checkpoint for step %d exists already; not saving it again", step)
            return step
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        return step

    def restore(self, step: int, target: TrainState, shardings: TrainState, *, with_data: bool = True) -> Restored:
        """Restores step `step` into the structure, dtypes and shardings of `target`."""
        abstract = abstract_train_state(target, shardings)
        items = {
            "params": ocp.args.StandardRestore(abstract.params),
            "train": ocp.args.StandardRestore(
                {"opt_state": abstract.opt_state, "step": abstract.step, "rng": abstract.rng}
            ),
            "meta": ocp.args.JsonRestore(),
        }
        has_data = with_data and files.as_path(self.directory).joinpath(str(step), "data").is_dir()
        if has_data:
            items["data"] = DataStateRestore()
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        train = restored["train"]
        state = TrainState(step=train["step"], params=restored["params"], opt_state=train["opt_state"],
                           rng=train["rng"])
        return Restored(state=state, data_state=restored["data"] if has_data else None,
                        meta=dict(restored["meta"]), step=int(jax.device_get(train["step"])))

    def reached_preemption(self, step: int) -> bool:
        """True on every host once a multi-host preemption notice arrived (always False on one host)."""
        return bool(self.manager.reached_preemption(step))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ---------------------------------------------------------------------------------- model loading
def model_meta(model_config: Any, *, preset: str, dtype: str, param_dtype: str, tokenizer: str) -> dict:
    """The `meta.model` / `meta.tokenizer` entries that let `load_model` rebuild the model."""
    return {
        "model": {
            "preset": preset,
            "hf_config": model_config.to_hf_dict(dtype=param_dtype),
            "dtype": dtype,
            "param_dtype": param_dtype,
        },
        "tokenizer": tokenizer,
    }


def _is_hf_dir(path: str) -> bool:
    folder = files.as_path(path)
    return (folder / "config.json").is_file() and any(child.name.endswith(".safetensors") for child in folder.iterdir())


def _is_step_dir(path: str) -> bool:
    folder = files.as_path(path)
    return (folder / "params").is_dir() and (folder / "meta").is_dir()


def _numeric_subdirs(path: str) -> list[int]:
    return sorted(int(child.name) for child in files.as_path(path).iterdir()
                  if re.fullmatch(r"\d+", child.name) and _is_step_dir(os.path.join(path, child.name)))


def named_checkpoint_path(path: str | os.PathLike) -> str:
    """The folder of a named checkpoint (`NAMED_CHECKPOINTS`), or `path` unchanged. A local folder of the
    same name in the working directory wins, so a user's own `demo-base/` is never shadowed."""
    name = os.fspath(path)
    if name in NAMED_CHECKPOINTS and not os.path.exists(name):
        folder = NAMED_CHECKPOINTS[name]
        if not (os.path.isdir(folder) and _is_hf_dir(folder)):
            raise FileNotFoundError(f"the named checkpoint {name!r} is not installed: {folder} holds no Hugging Face "
                                    f"folder (reinstall the package, or rebuild it: configs/pretrain.py)")
        return folder
    return name


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, str, int | None]:
    """Classifies `path`: ("hf", dir, None) or ("orbax", manager_dir, step).

    Accepted: a Hugging Face folder (config.json + safetensors); a training workdir (its latest
    checkpoint); a `checkpoints/` folder (its latest step); one step folder (`.../checkpoints/120`);
    the name of a checkpoint shipped with the package (`NAMED_CHECKPOINTS`, e.g. "demo-base").
    """
    path = named_checkpoint_path(path)
    path = files.resolve(path).rstrip("/")
    if not files.exists(path):
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    if not files.as_path(path).is_dir():
        raise ValueError(f"checkpoint path {path} is a file; give a workdir, a step folder or a Hugging Face folder")
    if _is_hf_dir(path):
        return "hf", path, None
    if _is_step_dir(path):
        name = os.path.basename(path)
        if not re.fullmatch(r"\d+", name):
            raise ValueError(f"checkpoint step folder {path} is not named by its step number")
        return "orbax", os.path.dirname(path), int(name)
    for manager_dir in (os.path.join(path, CHECKPOINT_SUBDIR), path):
        if files.as_path(manager_dir).is_dir():
            steps = _numeric_subdirs(manager_dir)
            if steps:
                return "orbax", manager_dir, steps[-1]
    raise FileNotFoundError(
        f"{path} holds no checkpoint: expected a training workdir with {CHECKPOINT_SUBDIR}/<step>/, "
        f"a step folder, or a Hugging Face folder with config.json and *.safetensors"
    )


def _dtype(name: str):
    import jax.numpy as jnp

    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def _load_tokenizer(path: str):
    from facialr1_jax.data import tokenizer as tokenizer_lib

    return tokenizer_lib.load_tokenizer(path or None)


def load_model(
    path: str | os.PathLike,
    *,
    mesh: jax.sharding.Mesh | None = None,
    dtype: str | None = None,
    param_dtype: str | None = None,
    remat: bool = False,
) -> tuple[nnx.Module, Any, dict]:
    """(model, tokenizer, info) from a workdir, a step folder or a Hugging Face folder.

    dtype / param_dtype override the compute / storage dtypes the checkpoint was trained with;
    remat builds the model with rematerialised layers (for training it further). With
    `mesh`, parameters are restored directly into their training shardings. `info` holds: kind
    ("orbax" or "hf"), path, step (None for HF), preset, tokenizer path, and for orbax the run meta.
    """
    from facialr1_jax import models
    from facialr1_jax.parallel import TRAINING_RULES, state_shardings

    kind, where, step = resolve_checkpoint(path)
    if kind == "hf":
        storage = param_dtype or "float32"
        model = models.from_pretrained(
            where, dtype=_dtype(storage), compute_dtype=_dtype(dtype or storage), mesh=mesh, remat=remat
        )
        has_tokenizer = any(os.path.isfile(os.path.join(where, f)) for f in ("tokenizer.json", "tokenizer_config.json"))
        tokenizer_path = where if has_tokenizer else ""
        if not has_tokenizer:
            _log.warning("%s ships no tokenizer; using the bundled demo tokenizer", where)
        info = {"kind": "hf", "path": where, "step": None, "preset": "", "tokenizer": tokenizer_path}
        return model, _load_tokenizer(tokenizer_path), info

    manager = ocp.CheckpointManager(where)
    try:
        meta = dict(manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        if meta.get("format") != META_FORMAT:
            raise ValueError(f"{where}/{step}/meta has format {meta.get('format')!r}, expected {META_FORMAT!r}")
        model_info = meta["model"]
        config = models.Qwen2_5_VLConfig.from_hf_dict(model_info["hf_config"])
        compute = _dtype(dtype or model_info["dtype"])
        storage = _dtype(param_dtype or model_info["param_dtype"])
        abstract_model = nnx.eval_shape(
            lambda: models.Qwen2_5_VL(config, dtype=compute, param_dtype=storage, remat=remat, rngs=nnx.Rngs(0))
        )
        graphdef, abstract_params, frozen = nnx.split(abstract_model, nnx.Param, ...)
        if mesh is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            shardings = jax.tree.map(lambda _: device, abstract_params)
        else:
            shardings = state_shardings(abstract_params, mesh, TRAINING_RULES)
        target = jax.tree.map(
            lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
            abstract_params, shardings,
        )
        params = manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))["params"]
    finally:
        manager.close()
    model = nnx.merge(graphdef, params, frozen)
    tokenizer_path = meta.get("tokenizer", "")
    info = {"kind": "orbax", "path": os.path.join(where, str(step)), "step": step,
            "preset": model_info.get("preset", ""), "tokenizer": tokenizer_path, "meta": meta}
    return model, _load_tokenizer(tokenizer_path), info
