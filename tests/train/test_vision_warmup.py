"""The supervised vision warm-up: labels and masks, the per-image tower, what it trains, determinism,
and when run_sft runs it (fresh models only)."""

from __future__ import annotations

import io
import json
import types

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from facialr1_jax import models
from facialr1_jax.data import datasets
from facialr1_jax.data import images as image_lib
from facialr1_jax.fea.records import FEARecord
from facialr1_jax.models.qwen2_5_vl.vision import vision_plan
from facialr1_jax.train import pretrain
from facialr1_jax.train import vision_warmup as vw

IMAGE_CONFIG = image_lib.ImageConfig(min_pixels=56 * 56, max_pixels=112 * 112)


@pytest.fixture(scope="module")
def demo_config(small_demo_sft_config):
    return small_demo_sft_config(8, 24, 8)


@pytest.fixture(scope="module")
def splits(demo_config):
    return {name: datasets.load_split(demo_config, name) for name in ("sft", "rl", "test")}


@pytest.fixture(scope="module")
def train_faces(splits):
    return vw.LabelledFaces([splits["sft"], splits["rl"]])


def _tiny_model(seed=0):
    return models.Qwen2_5_VL(models.get_preset("tiny"), rngs=nnx.Rngs(seed))


def _params(module):
    return {"/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path): np.asarray(leaf)
            for path, leaf in
            jax.tree_util.tree_leaves_with_path(nnx.state(module, nnx.Param))}


def _record(record_id, dataset, aus=(), labels=()):
    return FEARecord(id=record_id, dataset=dataset, images=(f"{record_id}.png",), aus=tuple(aus), labels=tuple(labels))


def test_au_annotation_follows_the_dataset_profile():
    assert vw.has_au_annotation(_record("a", "synthface", aus=("AU12",)))
    assert vw.has_au_annotation(_record("b", "synthface", labels=("neutral",)))  # empty set, but annotated
    assert not vw.has_au_annotation(_record("c", "RAF-DB", labels=("anger",)))  # emotion-only profile
    assert not vw.has_au_annotation(_record("d", "some-unknown-set", labels=("anger",)))
    assert vw.has_au_annotation(_record("e", "some-unknown-set", aus=("AU4",)))


def test_labels_masks_and_dedup():
    records = [_record("a", "synthface", aus=("AU12", "AU6"), labels=("happiness",)),
               _record("b", "synthface-emotion", labels=("anger",)),
               _record("c", "synthface-AU", aus=("AU4",)),
               _record("d", "synthface-emotion"),  # no label of either kind: left out
               _record("a", "synthface", aus=("AU12", "AU6"), labels=("happiness",))]  # same id again: once
    split = types.SimpleNamespace(records=records, source=[{"record": r, "image_bytes": (b"",)} for r in records])
    faces = vw.LabelledFaces([split])
    assert [r.id for r in faces.records] == ["a", "b", "c"]
    labels = faces.labels
    assert labels.au_vocabulary == ("AU4", "AU6", "AU12")  # numeric order
    np.testing.assert_array_equal(labels.aus, [[0, 1, 1], [0, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(labels.au_known, [True, False, True])
    assert labels.emotions[0] >= 0 and labels.emotions[1] >= 0 and labels.emotions[2] == -1


def test_masked_loss_ignores_missing_labels():
    rng = np.random.default_rng(0)
    au_logits, emotion_logits = rng.normal(size=(3, 5)), rng.normal(size=(3, 8))
    aus = (rng.random((3, 5)) < 0.5).astype(np.float32)
    known, emotions = np.array([True, False, True]), np.array([2, 5, -1])
    _, au_loss, emotion_loss = vw.warmup_loss(au_logits, emotion_logits, aus, known, emotions)
    # Changing the masked-out rows' logits changes nothing.
    au_logits2, emotion_logits2 = au_logits.copy(), emotion_logits.copy()
    au_logits2[1] += 10.0
    emotion_logits2[2] += rng.normal(size=8) * 10
    _, au_loss2, emotion_loss2 = vw.warmup_loss(au_logits2, emotion_logits2, aus, known, emotions)
    np.testing.assert_allclose([au_loss2, emotion_loss2], [au_loss, emotion_loss], rtol=1e-6)
    log_softmax = emotion_logits[0] - np.log(np.sum(np.exp(emotion_logits[0])))
    expected_emotion = -(log_softmax[2] + (emotion_logits[1, 5] - np.log(np.sum(np.exp(emotion_logits[1]))))) / 2
    np.testing.assert_allclose(emotion_loss, expected_emotion, rtol=1e-5)


def test_per_image_tower_matches_the_packed_model_call(train_faces):
    """The warm-up runs the tower image by image; the model packs images into one call. Same features."""
    model = _tiny_model()
    pixels = [IMAGE_CONFIG.preprocess(train_faces[i]["image"]) for i in range(3)]
    grids = np.stack([grid for _, grid in pixels])
    packed = model.encode_images(np.concatenate([p for p, _ in pixels]), vision_plan(grids, model.config.vision_config))
    plan = vision_plan(grids[:1], model.config.vision_config)
    single = jax.vmap(lambda p: model.visual(p, plan))(np.stack([p for p, _ in pixels]))
    np.testing.assert_allclose(np.asarray(single).reshape(packed.shape), np.asarray(packed), atol=1e-5, rtol=1e-5)


def _warm(train_faces, seed=0, steps=24, **options):
    model = _tiny_model()
    result = vw.run_vision_warmup(model, train_faces, steps=steps, batch_size=8, lr=3e-3, seed=seed,
                                  image_config=IMAGE_CONFIG, log_every=1, num_threads=1, **options)
    return model, result


def test_warmup_trains_the_vision_tower_only_and_the_loss_falls(train_faces, splits):
    before = _params(_tiny_model())
    steps = []
    model, result = _warm(train_faces, progress=lambda step, total, row: steps.append((step, total)))
    after = _params(model)
    assert steps[-1] == (24, 24) and len(steps) == 24
    for name, value in before.items():
        if name.startswith("visual"):
            assert not np.array_equal(value, after[name]), f"{name} did not train"
        else:
            np.testing.assert_array_equal(value, after[name], err_msg=f"{name} changed")
    losses = [row["loss"] for row in result["history"]]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    assert result["train_faces"] == len(train_faces) == 32
    assert result["au_vocabulary"] == list(train_faces.labels.au_vocabulary)


def test_warmup_is_deterministic_and_evaluates_held_out_faces(train_faces, splits):
    eval_faces = vw.LabelledFaces([splits["test"]], train_faces.labels.au_vocabulary)
    first, result = _warm(train_faces, steps=3, eval_faces=eval_faces)
    second, _ = _warm(train_faces, steps=3)
    other_seed, _ = _warm(train_faces, steps=3, seed=1)
    a, b, c = _params(first.visual), _params(second.visual), _params(other_seed.visual)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert any(not np.array_equal(a[name], c[name]) for name in a)
    assert result["eval"]["faces"] == 8
    assert 0.0 <= result["eval"]["emotion_accuracy"] <= 1.0 and 0.0 <= result["eval"]["au_micro_f1"] <= 1.0


def test_images_of_another_grid_are_an_error_naming_the_record():
    def png(size):
        buffer = io.BytesIO()
        Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(buffer, format="PNG")
        return buffer.getvalue()

    records = [_record(f"r{i}", "synthface", aus=("AU12",), labels=("happiness",)) for i in range(4)]
    sizes = [112, 112, 112, 56]
    split = types.SimpleNamespace(records=records, source=[{"record": r, "image_bytes": (png(s),)}
                                                           for r, s in zip(records, sizes)])
    with pytest.raises(ValueError, match=r"record 'r3'.*one grid"):
        vw.run_vision_warmup(_tiny_model(), vw.LabelledFaces([split]), steps=2, batch_size=4, lr=1e-3, seed=0,
                             image_config=IMAGE_CONFIG, num_threads=1)


def test_bad_settings_are_rejected(train_faces):
    with pytest.raises(ValueError, match="steps >= 1"):
        vw.run_vision_warmup(_tiny_model(), train_faces, steps=0, batch_size=4, lr=1e-3, seed=0,
                             image_config=IMAGE_CONFIG)


@pytest.mark.parametrize("case", ["off", "resuming", "checkpoint", "fresh"])
def test_pretraining_warms_up_fresh_models_only(case, tmp_path, splits, monkeypatch):
    import configs.pretrain

    config = configs.pretrain.get_config()
    config.pretrain.vision_warmup_steps = 0 if case == "off" else 2
    config.pretrain.vision_warmup_batch_size = 4
    config.logging.progress_bar = False
    if case == "checkpoint":
        config.model.checkpoint = "/some/pretrained/model"
    calls = []
    real = vw.run_vision_warmup
    monkeypatch.setattr(vw, "run_vision_warmup", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    workdir = tmp_path
    model = _tiny_model()
    before = _params(model.visual)
    result = pretrain.maybe_warm_up_vision(config, model, splits["rl"], splits["test"], workdir=str(workdir),
                                           mesh=None, resuming=case == "resuming", is_main=True)
    if case != "fresh":
        assert result is None and not calls
        assert not (workdir / vw.RESULT_FILE).exists()
        for name, value in _params(model.visual).items():
            np.testing.assert_array_equal(value, before[name])
        return
    assert len(calls) == 1 and result["steps"] == 2
    assert result["train_faces"] == 24  # the training split's faces, never the held-out ones
    written = json.loads((workdir / vw.RESULT_FILE).read_text())
    assert written["eval"]["faces"] == 8 and written["steps"] == 2


def test_warmup_on_a_mesh_matches_one_device_and_keeps_the_sharding(train_faces):
    """run_sft passes its mesh: the batch is split over the data axis, params keep their placement."""
    from facialr1_jax.parallel import TRAINING_RULES, make_mesh, shard_model

    mesh = make_mesh({"data": len(jax.devices())})
    sharded = shard_model(_tiny_model(), mesh, TRAINING_RULES)
    placed = {name: leaf.sharding for name, leaf in zip(_params(sharded.visual), jax.tree.leaves(
        nnx.state(sharded.visual, nnx.Param)))}
    vw.run_vision_warmup(sharded, train_faces, steps=3, batch_size=8, lr=3e-3, seed=0, image_config=IMAGE_CONFIG,
                         mesh=mesh, num_threads=1)
    alone, _ = _warm(train_faces, steps=3)
    for (name, value), leaf in zip(_params(sharded.visual).items(), jax.tree.leaves(nnx.state(sharded.visual,
                                                                                                nnx.Param))):
        assert leaf.sharding == placed[name], name
        np.testing.assert_allclose(value, _params(alone.visual)[name], atol=2e-5, rtol=1e-4, err_msg=name)
