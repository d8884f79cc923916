"""Stage 0: the shipped demo base model perceives, its card states how it was made, and a short
pretraining run trains, evaluates, resumes and exports."""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from configs import pretrain as pretrain_config
from facialr1_jax.data import datasets, perception, sources
from facialr1_jax.data import images as image_lib
from facialr1_jax.data.examples import EncodingConfig
from facialr1_jax.train import checkpoint as checkpoint_lib
from facialr1_jax.train import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_DIR = checkpoint_lib.NAMED_CHECKPOINTS["demo-base"]
# Held-out faces the fast test scores: the first of the corpus's eval stream (new identities).
FAST_FACES = 64


def _default_config() -> dict:
    return json.loads(pretrain_config.get_config().to_json_best_effort())


def _apply_flags(config: dict, flags: list[str]) -> dict:
    config = json.loads(json.dumps(config))
    for flag in flags:
        key, value = flag[len("--config."):].split("=", 1)
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value == "True"
    return config


def test_config_overrides_round_trip():
    default = _default_config()
    run = _apply_flags(default, ["--config.pretrain.num_steps=7", "--config.optimizer.lr=0.5"])
    flags = pretrain.config_overrides(run, default)
    assert sorted(flags) == ["--config.optimizer.lr=0.5", "--config.pretrain.num_steps=7"]
    assert _apply_flags(default, flags) == run


def test_the_shipped_card_states_the_command_the_config_runs():
    card = open(os.path.join(BASE_DIR, "README.md"), encoding="utf-8").read()
    command = next(line for line in card.splitlines() if line.startswith(pretrain.TRAIN_COMMAND))
    flags = [arg for arg in shlex.split(command) if arg.startswith("--config.")]
    run_config = json.loads(card.split("```json", 1)[1].split("```", 1)[0])
    expected = _apply_flags(_default_config(), flags)
    for section in ("logging",):  # cosmetic, left out of the card's command
        run_config.pop(section), expected.pop(section)
    run_config["pretrain"].pop("corpus_dir"), expected["pretrain"].pop("corpus_dir")
    assert run_config == expected
    assert re.search(r"commit `[0-9a-f]{7,}", card)


def _held_out_split(tmp_path, count: int) -> datasets.LoadedSplit:
    paths = perception.ensure_corpus(tmp_path, num_train=0, num_eval=count, workers=0, progress=False)
    source = sources.FEAJsonlSource(paths.eval, paths.images, decode="bytes", image_check="header",
                                    image_config=image_lib.ImageConfig(min_pixels=56 * 56, max_pixels=112 * 112))
    return datasets.LoadedSplit(name="eval", source=source, records=tuple(source.records),
                                image_root=str(paths.images), report_path=None, summary="")


def test_the_shipped_base_describes_unseen_faces(tmp_path):
    model, tokenizer, info = checkpoint_lib.load_model("demo-base")
    assert info["kind"] == "hf" and info["path"] == BASE_DIR
    split = _held_out_split(tmp_path, FAST_FACES)
    encoding = EncodingConfig(max_prompt_tokens=96, max_target_tokens=96)
    row = pretrain.perception_metrics(model, split, tokenizer, encoding, num_faces=FAST_FACES, batch_size=32,
                                      max_new_tokens=96, baselines=True)
    assert row["faces"] == FAST_FACES
    assert row["au_micro_f1"] >= 0.70, row
    assert row["blank_image_au_micro_f1"] < row["au_micro_f1"] - 0.2, row
    assert row["swapped_image_au_micro_f1"] < row["au_micro_f1"] - 0.2, row


def test_the_shipped_base_fits_the_size_budget():
    total = sum(os.path.getsize(os.path.join(BASE_DIR, name)) for name in os.listdir(BASE_DIR))
    assert total <= 25 * 2**20
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(os.listdir(BASE_DIR))


def test_an_unknown_or_missing_named_checkpoint_says_so(monkeypatch, tmp_path):
    monkeypatch.setitem(checkpoint_lib.NAMED_CHECKPOINTS, "demo-base", str(tmp_path / "absent"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="named checkpoint 'demo-base' is not installed"):
        checkpoint_lib.resolve_checkpoint("demo-base")


def test_micro_f1_counts_every_face():
    predicted = [frozenset({"AU4"}), frozenset(), frozenset({"AU12", "AU6"})]
    truth = [("AU4",), ("AU1",), ("AU12",)]
    # tp 2, fp 1 (AU6), fn 1 (AU1): 4 / 6
    assert pretrain.au_micro_f1(predicted, truth) == pytest.approx(4 / 6)
    assert pretrain.au_micro_f1([frozenset()], [()]) == 1.0


@pytest.mark.slow  # two launcher runs and an export: about two minutes of CPU
def test_a_short_pretraining_run_trains_resumes_and_exports(tmp_path):
    workdir, corpus = tmp_path / "w", tmp_path / "corpus"
    base = [sys.executable, "launch/train.py", "--config=configs/pretrain.py", f"--workdir={workdir}",
            f"--config.pretrain.corpus_dir={corpus}", "--config.pretrain.num_train_faces=256",
            "--config.pretrain.num_eval_faces=16", "--config.pretrain.vision_warmup_steps=2",
            "--config.pretrain.vision_warmup_batch_size=32", "--config.pretrain.batch_size=16",
            "--config.pretrain.eval_every_steps=0", "--config.pretrain.eval_max_new_tokens=16",
            "--config.checkpoint.every_steps=3", "--config.logging.progress_bar=False"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.run(base + ["--config.pretrain.num_steps=3"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((workdir / "pretrain_result.json").read_text())["step"] == 3
    second = subprocess.run(base + ["--config.pretrain.num_steps=6"], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads((workdir / "pretrain_result.json").read_text())
    assert result["step"] == 6 and result["vision_warmup"] is None  # resumed: no second warm-up
    assert {"au_micro_f1", "blank_image_au_micro_f1", "swapped_image_au_micro_f1"} <= set(result["eval"])
    steps = [json.loads(line)["step"] for line in (workdir / "batches.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    out = tmp_path / "hf"
    export = subprocess.run([sys.executable, "launch/convert.py", "--to=hf", f"--src={workdir}", f"--dst={out}"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    card = (out / "README.md").read_text()
    assert "--config.pretrain.num_steps=6" in card and "| the face |" in card
    model, _, info = checkpoint_lib.load_model(str(out))
    assert info["kind"] == "hf" and model.config.text_config.hidden_size == 256
