"""Batching: bucketed padding, shifted targets, micro-batch layout, vision packing, prompt batches."""

import numpy as np
import pytest

from facialr1_jax.data import batching
from facialr1_jax.data.examples import PromptExample, TrainExample
from facialr1_jax.fea.records import FEARecord
from facialr1_jax.models import get_preset, multimodal_position_ids, vision_plan

CONFIG = get_preset("tiny")
PAD = 0
IMAGE = CONFIG.image_token_id


def _example(name, text_before, image_grid, text_after, reply, seed=0):
    """A TrainExample whose prompt is [text_before, image placeholders, text_after] and target `reply`."""
    rs = np.random.RandomState(seed)
    grid = np.array([image_grid], np.int64)
    tokens = int(np.prod(image_grid)) // 4
    prompt = list(text_before) + [IMAGE] * tokens + list(text_after)
    ids = np.array(prompt + list(reply), np.int32)
    label = np.zeros(len(ids), np.float32)
    label[len(prompt):] = 1.0
    patches = rs.randn(int(np.prod(image_grid)), CONFIG.vision_config.patch_dim).astype(np.float32)
    return TrainExample(id=name, input_ids=ids, label_mask=label, pixel_values=patches, image_grid_thw=grid,
                        prompt_length=len(prompt), truncated=False)


def test_length_and_patch_buckets():
    lengths = (1, 32, 33, 40, 41, 100, 256, 257, 280, 385, 400, 416)
    assert [batching.length_bucket(n, 416) for n in lengths] == [32, 32, 40, 40, 48, 112, 256, 320, 320, 416, 416, 416]
    assert batching.length_bucket(600, 2048) == 640
    assert batching.length_bucket(1100, 2048) == 1280
    # Few shapes: every length up to 2048 lands in one of 4 buckets per power of two.
    assert len({batching.length_bucket(n, 2048) for n in range(1, 2049)}) <= 4 * 6 + 1
    for n in range(1, 2049):
        bucket = batching.length_bucket(n, 2048)
        assert n <= bucket <= max(32, 1.25 * n + 8)
    with pytest.raises(ValueError, match="exceeds the maximum sequence length 416"):
        batching.length_bucket(417, 416)
    assert batching.patch_bucket(64, 4) == 64
    assert batching.patch_bucket(65, 4) == 128
    assert batching.patch_bucket(2, 4) == 4


def test_collator_layout_targets_and_masks():
    examples = [
        _example("a", [3, 4], (1, 4, 4), [5], [20, 21, 22], seed=1),
        _example("b", [3], (1, 4, 6), [5, 6, 7], [30], seed=2),
        _example("c", [3, 4, 4], (1, 2, 2), [5], [40, 41], seed=3),
        _example("d", [3], (1, 4, 4), [], [50, 51, 52, 53], seed=4),
    ]
    collate = batching.SFTCollator(model_config=CONFIG, num_micro_batches=2, max_length=100, pad_id=PAD)
    batch, info = batching.split_info(collate(examples))
    assert info["ids"] == [["a", "b"], ["c", "d"]]
    assert info["tokens"] == sum(len(e.input_ids) for e in examples)
    assert info["target_tokens"] == 3 + 1 + 2 + 4
    assert batch["input_ids"].shape == (2, 2, 32)
    assert batch["position_ids"].shape == (2, 2, 3, 32)

    for micro in range(2):
        for row in range(2):
            example = examples[2 * micro + row]
            n = len(example.input_ids)
            ids = batch["input_ids"][micro, row]
            np.testing.assert_array_equal(ids[:n], example.input_ids)
            assert (ids[n:] == PAD).all()
            assert batch["attention_mask"][micro, row].sum() == n
            # Position t predicts token t + 1; exactly the reply tokens are targets.
            trained = np.flatnonzero(batch["loss_mask"][micro, row])
            np.testing.assert_array_equal(batch["targets"][micro, row][trained], example.input_ids[example.prompt_length:])
            assert trained[0] == example.prompt_length - 1

    # Position ids and the vision plan equal what the model helpers compute for the micro-batch alone.
    second = examples[2:]
    grids = np.concatenate([e.image_grid_thw for e in second])
    expected_positions, _ = multimodal_position_ids(
        batch["input_ids"][1], grids, batch["attention_mask"][1], CONFIG)
    np.testing.assert_array_equal(batch["position_ids"][1], expected_positions.transpose(1, 0, 2))
    real = sum(e.num_patches for e in second)  # 4 + 16 = 20 patches; the micro-batch maximum (16 + 24 = 40) sets the bucket
    assert batch["vision"]["pixel_values"].shape == (2, 64, CONFIG.vision_config.patch_dim)
    np.testing.assert_array_equal(batch["vision"]["pixel_values"][1, :real],
                                  np.concatenate([e.pixel_values for e in second]))
    assert (batch["vision"]["pixel_values"][1, real:] == 0).all()
    plan = vision_plan(grids, CONFIG.vision_config, pad_to=64)
    np.testing.assert_array_equal(batch["vision"]["patch_order"][1], plan.patch_order)
    np.testing.assert_array_equal(batch["vision"]["merged_restore"][1], plan.merged_restore)


def test_collator_rejects_uneven_micro_batches():
    examples = [_example(str(i), [3], (1, 2, 2), [5], [6]) for i in range(3)]
    collate = batching.SFTCollator(model_config=CONFIG, num_micro_batches=2, max_length=64, pad_id=PAD)
    with pytest.raises(ValueError, match="does not split into 2 micro-batches"):
        collate(examples)


def _prompt(name, before, grid, after):
    tokens = int(np.prod(grid)) // 4
    ids = np.array(list(before) + [IMAGE] * tokens + list(after), np.int32)
    record = FEARecord(id=name, dataset="synthface", images=(f"{name}.png",))
    patches = np.ones((int(np.prod(grid)), CONFIG.vision_config.patch_dim), np.float32)
    return PromptExample(id=name, input_ids=ids, pixel_values=patches, image_grid_thw=np.array([grid]),
                         record=record, instruction="q")


def test_prompt_batches_are_left_padded_with_rope_deltas():
    prompts = [_prompt("a", [3, 4], (1, 4, 4), [5, 6]), _prompt("b", [3], (1, 2, 2), [5])]
    batch = batching.collate_prompts(prompts, CONFIG, pad_id=PAD, max_length=64, batch_size=4)
    assert batch["num_real"] == 2 and batch["ids"] == ["a", "b", "b", "b"]
    assert batch["input_ids"].shape == (4, 32)
    lengths = [len(p.input_ids) for p in prompts]
    np.testing.assert_array_equal(batch["prompt_lengths"], [lengths[0], lengths[1], lengths[1], lengths[1]])
    np.testing.assert_array_equal(batch["input_ids"][0, -lengths[0]:], prompts[0].input_ids)
    assert not batch["attention_mask"][0, : 32 - lengths[0]].any()
    # The next token after row 0 sits at len + delta = max position + 1 in every stream.
    row0 = batch["position_ids"][:, 0][:, batch["attention_mask"][0]]
    assert lengths[0] + batch["rope_deltas"][0] == row0.max() + 1
    assert batch["vision"]["pixel_values"].shape[0] == batching.patch_bucket(16 + 3 * 4, 4)


# ------------------------------------------------------------------------------- grain pipeline
def _write_fea_set(folder, count):
    """`count` FEA records with descriptions and small PNG faces; returns (jsonl path, image root)."""
    import io

    from PIL import Image

    from facialr1_jax.fea.records import write_jsonl

    images = folder / "images"
    images.mkdir(parents=True)
    records = []
    for index in range(count):
        pixels = np.random.default_rng(index).integers(0, 256, (56, 84, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        (images / f"{index}.png").write_bytes(buffer.getvalue())
        records.append(FEARecord(
            id=f"rec-{index:02d}", dataset="synthface", images=(f"{index}.png",), question="",
            aus=("AU6", "AU12"), labels=("happiness",),
            description="<think>cheeks raised (AU6), lip corners pulled (AU12)" + " and more" * (index % 4)
            + ".</think>\n<answer>happiness</answer>"))
    write_jsonl(records, folder / "train.jsonl")
    return str(folder / "train.jsonl"), str(images)


def _pipeline(tmp_path, count=10, batch_size=4, num_micro=2, seed=0):
    from facialr1_jax.data import images as image_lib
    from facialr1_jax.data import pipeline, sources, tokenizer as tokenizer_lib
    from facialr1_jax.data.examples import EncodingConfig

    jsonl, root = _write_fea_set(tmp_path, count)
    source = sources.FEAJsonlSource(jsonl, root, decode="bytes")
    encoding = EncodingConfig(image=image_lib.ImageConfig(min_pixels=56 * 56, max_pixels=56 * 84),
                              max_prompt_tokens=256, max_target_tokens=64)
    dataset = pipeline.sft_dataset(source, tokenizer_lib.load_tokenizer(), encoding, get_preset("demo"),
                                   seed=seed, batch_size=batch_size, num_micro_batches=num_micro)
    return dataset


def _ids(batch):
    return [i for group in batch["info"]["ids"] for i in group]


def test_epochs_are_permutations_and_differ(tmp_path):
    dataset = _pipeline(tmp_path, count=8, batch_size=4)
    order = [i for step in range(4) for i in _ids(dataset[step])]
    first, second = order[:8], order[8:]
    assert sorted(first) == sorted(second) == [f"rec-{i:02d}" for i in range(8)]
    assert first != second  # a fresh shuffle each epoch
    assert first != sorted(first)


def test_iterator_state_resumes_exactly(tmp_path):
    from facialr1_jax.data import pipeline

    dataset = _pipeline(tmp_path, count=10, batch_size=4)
    iterator = pipeline.make_iterator(dataset, num_threads=2)
    for _ in range(3):
        next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(3)]

    resumed = pipeline.make_iterator(dataset, num_threads=2)
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert _ids(got) == _ids(want)
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
        np.testing.assert_array_equal(got["loss_mask"], want["loss_mask"])
        np.testing.assert_array_equal(got["vision"]["pixel_values"], want["vision"]["pixel_values"])


def test_worker_processes_give_the_same_batches_and_resume(tmp_path):
    from facialr1_jax.data import pipeline

    dataset = _pipeline(tmp_path, count=6, batch_size=2, num_micro=1)
    in_process = [_ids(dataset[step]) for step in range(5)]
    iterator = pipeline.make_iterator(dataset, num_workers=1)
    assert [_ids(next(iterator)) for _ in range(2)] == in_process[:2]
    state = iterator.get_state()
    resumed = pipeline.make_iterator(dataset, num_workers=1)
    resumed.set_state(state)
    assert [_ids(next(resumed)) for _ in range(3)] == in_process[2:5]


def test_selected_targets_are_the_masked_targets_in_order():
    examples = [_example("a", [3, 4], (1, 4, 4), [5], [20, 21, 22], seed=1),
                _example("b", [3], (1, 2, 2), [5, 6], list(range(30, 41)), seed=2)]
    batch, _ = batching.split_info(
        batching.SFTCollator(model_config=CONFIG, num_micro_batches=1, max_length=100, pad_id=PAD)(examples))
    assert batch["target_positions"].shape == (1, 2, 12)  # 11 trained tokens at most -> bucket 12
    for row in range(2):
        trained = np.flatnonzero(batch["loss_mask"][0, row])
        count = len(trained)
        np.testing.assert_array_equal(batch["target_positions"][0, row, :count], trained)
        np.testing.assert_array_equal(batch["target_ids"][0, row, :count], batch["targets"][0, row, trained])
        assert batch["target_mask"][0, row].sum() == count
