"""ModelGenerator on a small random model: candidates per prompt, cut-off flag, reproducible keys."""

import pytest
from flax import nnx

from facialr1_jax import models
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.synth.attempts import RecordJob
from facialr1_jax.synth.generation import ModelGenerator
from tests.synth import scripted

SMALL_MODEL = dict(
    text_config={"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                 "num_key_value_heads": 1, "mrope_section": [2, 3, 3]},
    vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 64, "num_heads": 1, "out_hidden_size": 32,
                   "fullatt_block_indexes": [0]},
)


@pytest.fixture(scope="module")
def setup():
    model = models.Qwen2_5_VL(models.get_preset("demo", **SMALL_MODEL), rngs=nnx.Rngs(5))
    encoder = scripted.encoder(max_prompt_tokens=512)
    records = scripted.make_records(3)
    jobs = [RecordJob(index=i, record=r, images=scripted.record_images(i)) for i, r in enumerate(records)]
    prompts = [encoder.encode(job, job.base_instruction("compact")) for job in jobs]
    return model, tokenizer_lib.load_tokenizer(), prompts


def test_greedy_and_sampled_candidates(setup):
    model, tokenizer, prompts = setup
    greedy = ModelGenerator(model, tokenizer, batch_size=4, max_new_tokens=5, max_prompt_tokens=512)
    out = greedy(prompts, (1, 0, 1, 0))
    assert [len(candidates) for candidates in out] == [1, 1, 1]
    assert greedy(prompts, (9, 9, 9, 9)) == out  # greedy ignores the key
    # A random model almost never emits <|im_end|> within 5 tokens: every candidate is cut off.
    assert all(not c.finished for candidates in out for c in candidates)

    sampled = ModelGenerator(model, tokenizer, batch_size=4, max_new_tokens=5, max_prompt_tokens=512,
                             num_candidates=2, temperature=1.5, seed=3)
    first = sampled(prompts, (1, 0, 1, 0))
    assert [len(candidates) for candidates in first] == [2, 2, 2]
    assert sampled(prompts, (1, 0, 1, 0)) == first  # the key path fixes the draw
    texts = {c.text for candidates in first for c in candidates}
    other = {c.text for candidates in sampled(prompts, (1, 0, 2, 0)) for c in candidates}
    assert len(texts) > 1 and texts != other


def test_a_batch_larger_than_batch_size_is_an_error(setup):
    model, tokenizer, prompts = setup
    generator = ModelGenerator(model, tokenizer, batch_size=2, max_new_tokens=2, max_prompt_tokens=512)
    with pytest.raises(ValueError, match="3 prompts do not fit one batch of 2"):
        generator(prompts, (0,))


def test_stop_token_marks_a_finished_candidate(setup, monkeypatch):
    import facialr1_jax.sampling as sampling

    model, tokenizer, prompts = setup
    generator = ModelGenerator(model, tokenizer, batch_size=4, max_new_tokens=3, max_prompt_tokens=512)
    stops = {int(t) for t in generator.stop_ids}
    others = [t for t in range(model.config.text_config.vocab_size) if t not in stops]
    real_generate = sampling.generate
    # Only the stop ids may be drawn: each candidate ends at once, with an empty text.
    monkeypatch.setattr(sampling, "generate", lambda *a, **k: real_generate(*a, **k, suppress_token_ids=others))
    out = generator(prompts, (0,))
    assert [[(c.text, c.finished) for c in candidates] for candidates in out] == [[("", True)]] * 3
