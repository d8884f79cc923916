"""What SFT trains on for each `data.target`: the training records (`sft.load_training_split`) and the
replies in the batches the training pipeline builds from them."""

from __future__ import annotations

import numpy as np
import pytest

import configs.sft
from facialr1_jax import models
from facialr1_jax.data import batching, datasets, pipeline
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.data.examples import EncodingConfig, compact_target
from facialr1_jax.train import sft


@pytest.fixture(scope="module")
def demo_config(tmp_path_factory):
    config = configs.sft.get_config()
    config.data.builtin_dir = str(tmp_path_factory.mktemp("demo"))
    config.data.builtin_num_sft, config.data.builtin_num_rl, config.data.builtin_num_test = 8, 40, 4
    return config


def test_compact_records_are_labelled_faces_with_an_annotated_au_set(demo_config, tmp_path):
    config = demo_config.copy_and_resolve_references()
    description = sft.load_training_split(config, str(tmp_path))
    assert len(description) == 8 and all(r.description for r in description.records)

    config.data.target = "compact"
    stage1_only = sft.load_training_split(config, str(tmp_path))
    assert [r.id for r in stage1_only.records] == [r.id for r in description.records]

    config.sft.compact_records = "sft+rl"
    both = sft.load_training_split(config, str(tmp_path))
    rl_records = datasets.load_split(config, "rl").records
    # The demo's emotion-only records belong to a dataset without AU annotation (an empty list there
    # means "not annotated"); its neutral faces of the AU-annotated set keep their empty AU set.
    usable_rl = [r for r in rl_records if r.label is not None and (r.aus or r.dataset == "synthface")]
    assert len(usable_rl) < len(rl_records)  # the demo mix holds AU-only and emotion-only records
    assert [r.id for r in both.records] == [r.id for r in description.records] + [r.id for r in usable_rl]
    assert len(both) == len(both.source) == len({r.id for r in both.records})
    for index in (0, len(both) - 1):
        assert both.source[index]["record"] == both.records[index]
        assert both.source[index]["image_bytes"]


@pytest.mark.parametrize("target", ["description", "compact"])
def test_training_batches_carry_the_configured_reply(demo_config, tmp_path, target):
    config = demo_config.copy_and_resolve_references()
    config.data.target = target
    config.sft.compact_records = "sft+rl"
    split = sft.load_training_split(config, str(tmp_path))
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
