"""What SFT trains on for each `data.target`: the training records (`sft.load_stage1_splits`) and the
replies in the batches the training pipeline builds from them."""

from __future__ import annotations

import numpy as np
import pytest

from facialr1_jax import models
from facialr1_jax.data import batching, datasets, pipeline
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.data.examples import EncodingConfig, compact_target
from facialr1_jax.train import sft


@pytest.fixture(scope="module")
def demo_config(small_demo_sft_config):
    return small_demo_sft_config(8, 2, 4)


def test_compact_targets_train_on_the_labelled_stage1_records(demo_config, tmp_path, monkeypatch):
    config = demo_config.copy_and_resolve_references()
    stage1, description = sft.load_stage1_splits(config, str(tmp_path), "description")
    assert stage1 is description
    assert len(description) == 8 and all(r.description for r in description.records)

    config.data.target = "compact"
    _, compact = sft.load_stage1_splits(config, str(tmp_path), "compact")
    assert [r.id for r in compact.records] == [r.id for r in description.records]

    # Records without a label, or from an emotion-only data set (whose empty AU list means "not
    # annotated", not "no AU"), are left out: their compact target would be wrong.
    stage1 = datasets.load_split(config, "sft")
    unlabelled = stage1.records[2].replace(labels=())
    emotion_only = stage1.records[5].replace(dataset="FER2013", aus=())
    records = list(stage1.records)
    records[2], records[5] = unlabelled, emotion_only
    source = [{**stage1.source[i], "record": record} for i, record in enumerate(records)]
    real_load = datasets.load_split
    monkeypatch.setattr(datasets, "load_split", lambda *args, **kwargs: datasets.LoadedSplit(
        "sft", source, tuple(records), None, None, "8 records") if args[1] == "sft" else real_load(*args, **kwargs))
    whole, kept = sft.load_stage1_splits(config, str(tmp_path), "compact")
    assert list(whole.records) == records  # the vision warm-up still sees every stage 1 face
    assert [r.id for r in kept.records] == [r.id for i, r in enumerate(records) if i not in (2, 5)]
    assert [kept.source[i]["record"] for i in range(len(kept))] == list(kept.records)

    monkeypatch.setattr(datasets, "load_split", lambda *args, **kwargs: datasets.LoadedSplit(
        "sft", source[:1], (unlabelled.replace(id="x"),), None, None, "1 record"))
    with pytest.raises(ValueError, match="data.target = 'compact': the sft split .* holds no record"):
        sft.load_stage1_splits(config, str(tmp_path), "compact")


@pytest.mark.parametrize("target", ["description", "compact"])
def test_training_batches_carry_the_configured_reply(demo_config, tmp_path, target):
    config = demo_config.copy_and_resolve_references()
    config.data.target = target
    _, split = sft.load_stage1_splits(config, str(tmp_path), target)
    tokenizer = tokenizer_lib.load_tokenizer()
    encoding = EncodingConfig.from_config(config)
    dataset = pipeline.sft_dataset(split.source, tokenizer, encoding, models.get_preset("demo"), seed=0,
                                   batch_size=4, shuffle=True)
    arrays, info = batching.split_info(dataset[0])
    by_id = {record.id: record for record in split.records}
    eos = tokenizer_lib.special_token_ids(tokenizer).eos
    for row, record_id in enumerate(info["ids"][0]):
        record = by_id[record_id]
        reply = arrays["target_ids"][0, row][arrays["target_mask"][0, row] > 0]
        assert reply[-1] == eos
        expected = record.description if target == "description" else compact_target(record)
        assert tokenizer.decode(reply[:-1]) == expected
    if target == "compact":
        assert np.all(arrays["target_mask"].sum(axis=-1) < 40)  # a handful of tokens per reply
