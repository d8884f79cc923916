"""SFT examples with the stage 3 synthesis prompt (`sft.synthesis_prompt_share`): which examples get
it, what the prompt holds, that the reply is unchanged, and that the draw is reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from facialr1_jax import config_validation, models
from facialr1_jax.data import batching, pipeline
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.data.examples import EncodingConfig, default_instruction, synthesis_instruction
from facialr1_jax.train import sft

GROUND_TRUTH_HEADER = "Ground truth for this image"
TOKENIZER = tokenizer_lib.load_tokenizer()
USER_TURN_END = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def stage1(small_demo_sft_config, tmp_path_factory):
    config = small_demo_sft_config(8, 2, 4)
    config.data.max_prompt_tokens = 352  # synthesis prompts are longer than the task prompt
    _, split = sft.load_stage1_splits(config, str(tmp_path_factory.mktemp("work")), "description")
    return config, split


def _rows(config, split, share, epochs=3):
    """(record id, decoded prompt, reply token ids) of every example of `epochs` epochs."""
    config = config.copy_and_resolve_references()
    config.sft.synthesis_prompt_share = share
    encoding = EncodingConfig.from_config(config)
    dataset = pipeline.sft_dataset(split.source, TOKENIZER, encoding, models.get_preset("demo"), seed=3,
                                   batch_size=4, shuffle=True)
    rows = []
    for index in range(epochs * len(split) // 4):
        arrays, info = batching.split_info(dataset[index])
        for row, record_id in enumerate(info["ids"][0]):
            ids = arrays["input_ids"][0, row]
            first_trained = int(np.argmax(arrays["loss_mask"][0, row] > 0))  # predicts the reply's first token
            prompt = TOKENIZER.decode(ids[: first_trained + 1])
            reply = arrays["target_ids"][0, row][arrays["target_mask"][0, row] > 0]
            rows.append((record_id, prompt, tuple(reply.tolist())))
    return rows


def test_a_share_of_examples_carries_the_record_ground_truth(stage1):
    config, split = stage1
    by_id = {record.id: record for record in split.records}
    rows = _rows(config, split, 0.5)
    task_rows = {record_id: reply for record_id, prompt, reply in _rows(config, split, 0.0)}
    hinted = [(record_id, prompt) for record_id, prompt, _ in rows if GROUND_TRUTH_HEADER in prompt]
    assert 0.2 <= len(hinted) / len(rows) <= 0.8, f"{len(hinted)} of {len(rows)} examples with the synthesis prompt"
    shown = set()
    for record_id, prompt in hinted:
        record = by_id[record_id]
        # Both labels, only the AUs or only the emotion, as stage 2's sources have them.
        variants = {(aus, label): synthesis_instruction(record, "compact", show_aus=aus, show_label=label)
                    for aus, label in ((True, True), (True, False), (False, True))}
        matching = [kind for kind, text in variants.items() if prompt.endswith(text + USER_TURN_END)]
        assert matching, prompt
        shown.update(matching)
    assert shown == {(True, True), (True, False), (False, True)}
    for record_id, prompt, reply in rows:
        if GROUND_TRUTH_HEADER not in prompt:
            assert prompt.endswith(default_instruction(by_id[record_id], "compact") + USER_TURN_END)
        assert reply == task_rows[record_id]  # the reply does not depend on the prompt
    # Drawn per example and epoch: some record is seen with both prompts.
    kinds = {}
    for record_id, prompt, _ in rows:
        kinds.setdefault(record_id, set()).add(GROUND_TRUTH_HEADER in prompt)
    assert any(len(seen) == 2 for seen in kinds.values())
    # ... and reproducibly: the same seed gives the same examples.
    assert [(r, p) for r, p, _ in _rows(config, split, 0.5)] == [(r, p) for r, p, _ in rows]


@pytest.mark.parametrize("share,expected", [(0.0, 0.0), (1.0, 1.0)])
def test_share_zero_and_one(stage1, share, expected):
    config, split = stage1
    rows = _rows(config, split, share, epochs=1)
    assert np.mean([GROUND_TRUTH_HEADER in prompt for _, prompt, _ in rows]) == expected


def test_the_share_is_validated(stage1):
    config, _ = stage1
    config = config.copy_and_resolve_references()
    config.sft.synthesis_prompt_share = 1.5
    with pytest.raises(config_validation.ConfigError, match=r"config.sft.synthesis_prompt_share = 1.5 must be in \[0, 1\]"):
        config_validation.validate(config)
    with pytest.raises(ValueError, match="synthesis_prompt_share 1.5 is not within"):
        EncodingConfig(synthesis_prompt_share=1.5)
