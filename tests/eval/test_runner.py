"""The evaluation stage end to end on the built-in test split, and `evaluate_records`' plumbing."""

import json

import numpy as np
import pytest
from PIL import Image

from facialr1_jax.data import demo
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.eval import runner
from facialr1_jax.fea.records import read_jsonl

NUM_TEST = 6


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    return folder, demo.ensure_demo(folder, num_sft=2, num_rl=2, num_test=NUM_TEST, image_size=56, seed=3,
                                    progress=False)


class OracleGenerator:
    """Stands in for greedy generation: answers each prompt with its record's reference text, after
    checking that the prompt holds the image and the benchmark's instruction."""

    def __init__(self, tokenizer, encoding):
        self.special = tokenizer_lib.special_token_ids(tokenizer)
        self.encoding = encoding
        self.seen = []

    def generate_texts(self, model, prompts):
        for prompt in prompts:
            image_tokens = int(np.sum(prompt.input_ids == self.special.image_pad))
            assert image_tokens == int(np.prod(prompt.image_grid_thw)) // 4 > 0
            assert prompt.pixel_values.shape[0] == int(np.prod(prompt.image_grid_thw))
            assert "<answer>" in prompt.instruction
            self.seen.append(prompt.id)
        return [prompt.record.description for prompt in prompts]


def test_evaluate_records_scores_what_the_generator_says(demo_set, monkeypatch, tmp_path):
    _, paths = demo_set
    records = read_jsonl(paths.test).records
    tokenizer = tokenizer_lib.load_tokenizer()
    made = []

    def oracle(tokenizer, encoding, model, *, max_new_tokens, batch_size):
        made.append((max_new_tokens, batch_size))
        made.append(OracleGenerator(tokenizer, encoding))
        return made[-1]

    monkeypatch.setattr(runner, "greedy_generator", oracle)
    progress = []
    result = runner.evaluate_records(
        None, tokenizer, records, paths.images, "synthface", batch_size=4, max_new_tokens=9,
        predictions_path=tmp_path / "predictions.jsonl", progress=lambda done, total: progress.append((done, total)),
    )
    assert made[0] == (9, 4)
    assert made[1].seen == [record.id for record in records]
    assert progress == [(4, NUM_TEST), (NUM_TEST, NUM_TEST)]  # two batches
    metrics = result.metrics
    # The reference answers are right by construction: every score is perfect, except AU macro F1
    # over the fixed 20-AU list, where AUs absent from these few faces score 0.
    assert metrics.num_examples == NUM_TEST
    assert metrics.emotion_accuracy == pytest.approx(100.0, abs=1e-9)
    assert metrics.format_valid == pytest.approx(100.0, abs=1e-9)
    assert metrics.rouge_l == pytest.approx(100.0, abs=1e-9)
    assert metrics.au_f1_micro == pytest.approx(100.0, abs=1e-9)
    assert metrics.au_all.macro == pytest.approx(100.0, abs=1e-9)
    present = sum(1 for au in metrics.au_eval.au_list if metrics.au_eval.support[au])
    assert metrics.au_f1_macro == pytest.approx(100.0 * present / len(metrics.au_eval.au_list), abs=1e-9)
    lines = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [record.id for record in records]
    assert all(line["prediction"] == record.description for line, record in zip(lines, records))
    assert all(line["emotion_correct"] for line in lines)


def test_evaluate_records_rejects_bad_arguments(demo_set):
    _, paths = demo_set
    records = read_jsonl(paths.test).records
    with pytest.raises(ValueError, match="batch_size"):
        runner.evaluate_records(None, None, records, paths.images, "synthface", batch_size=0)
    with pytest.raises(ValueError, match="2 image lists for 6 records"):
        runner.evaluate_records(None, None, records, paths.images, "synthface", images=[[], []])


def test_encoding_follows_the_checkpoint_then_the_config():
    import ml_collections

    data = ml_collections.ConfigDict(dict(prompt_variant="full", min_pixels=56 * 56, max_pixels=224 * 224,
                                          max_prompt_tokens=1024))
    trained = {"meta": {"config": {"data": dict(prompt_variant="compact", min_pixels=28 * 28,
                                                max_pixels=112 * 112, max_prompt_tokens=300)}}}
    from_checkpoint = runner.encoding_for(trained, data)
    assert (from_checkpoint.prompt_variant, from_checkpoint.image.max_pixels,
            from_checkpoint.max_prompt_tokens) == ("compact", 112 * 112, 300)
    from_config = runner.encoding_for(trained, data, use_checkpoint=False)
    assert (from_config.prompt_variant, from_config.image.max_pixels) == ("full", 224 * 224)
    assert runner.encoding_for({"kind": "hf"}, data).prompt_variant == "full"


def test_run_eval_on_the_builtin_split_writes_the_report(demo_set, demo_workdir, tmp_path, capsys):
    import importlib

    folder, _ = demo_set
    config = importlib.import_module("configs.eval").get_config("demo")
    config.eval.checkpoint = demo_workdir  # a training workdir: its latest checkpoint is evaluated
    config.eval.batch_size = 4
    config.eval.max_new_tokens = 6
    config.data.builtin_dir = str(folder)
    config.data.builtin_num_sft, config.data.builtin_num_rl, config.data.builtin_num_test = 2, 2, NUM_TEST
    config.data.builtin_image_size = 56
    config.seed = 3
    workdir = tmp_path / "eval"
    summary = runner.run_eval(config, str(workdir))

    assert set(summary) == {"synthface"}
    document = json.loads((workdir / "metrics.json").read_text())
    entry = document["benchmarks"]["synthface"]
    assert entry["num_examples"] == NUM_TEST
    for key in ("emotion_accuracy", "au_f1_micro", "au_f1_macro", "format_valid"):
        assert 0.0 <= entry[key] <= 100.0
    assert entry["rouge_l"] is not None  # the test split carries reference descriptions
    assert document["run"]["decoding"] == "greedy" and document["run"]["checkpoint_kind"] == "orbax"
    assert document["run"]["step"] == 5
    predictions = (workdir / "predictions-synthface.jsonl").read_text().splitlines()
    assert len(predictions) == NUM_TEST
    # A random model's outputs are read and counted, whatever they are.
    assert sum(json.loads(line)["unparseable"] for line in predictions) == entry["num_unparseable"]
    with Image.open(workdir / "confusion-synthface.png") as png:
        assert png.format == "PNG"
    assert "## synthface (profile synthface)" in (workdir / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "Emotion recognition: accuracy (%)" in printed and "Facial-R1 (paper)" in printed


def test_a_pipeline_round_evaluates_the_test_split_and_each_filled_in_benchmark(demo_set, demo_workdir, tmp_path):
    """synth/pipeline.evaluate_checkpoint: the test split, then every benchmark with a jsonl (the pipeline's
    paper variants carry configs/eval.py:paper's), in one report; the round's row keeps the test numbers."""
    import ml_collections

    from configs import eval as eval_config
    from configs import pipeline
    from facialr1_jax.synth import pipeline as pipeline_lib

    folder, paths = demo_set
    config = pipeline.get_config("demo")
    config.data.builtin_dir = str(folder)
    config.data.builtin_num_sft, config.data.builtin_num_rl, config.data.builtin_num_test = 2, 2, NUM_TEST
    config.data.builtin_image_size = 56
    config.seed = 3
    config.eval.batch_size = 4
    config.eval.max_new_tokens = 6
    config.eval.normalize_emotions = False
    config.benchmarks = ml_collections.ConfigDict({
        "rafdb": eval_config._benchmark("RAF-DB", str(paths.test), str(paths.images)),
        "disfa": eval_config._benchmark("DISFA"),  # left empty: skipped
    })
    config.benchmarks.rafdb.max_examples = 3
    workdir = tmp_path / "eval"
    headline = pipeline_lib.evaluate_checkpoint(config, demo_workdir, str(workdir))
    assert headline["num_examples"] == NUM_TEST  # the test split's numbers stay at the top
    assert set(headline["benchmarks"]) == {"rafdb"}
    assert headline["benchmarks"]["rafdb"]["num_examples"] == 3
    assert headline["benchmarks"]["rafdb"]["emotion_comparison"] == "exact"
    document = json.loads((workdir / "metrics.json").read_text())
    assert set(document["benchmarks"]) == {"test", "rafdb"}
    assert document["run"]["emotion_comparison"] == "exact"
    assert len((workdir / "predictions-rafdb.jsonl").read_text().splitlines()) == 3
    assert "Emotion recognition: accuracy (%)" in (workdir / "report.md").read_text()
