"""The reasoning writer and the built-in demo set (FEA JSONL + images, cached builds)."""

from __future__ import annotations

import json
import os
import re
import resource
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from facialr1_jax.data import demo, expressions, reasoning
from facialr1_jax.fea import answers
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.fea.records import read_jsonl

SMALL = dict(num_sft=24, num_rl=80, num_test=16, image_size=112, seed=3)


# --------------------------------------------------------------------------- reasoning writer
def test_descriptions_earn_every_reward_against_their_own_labels():
    rng = np.random.default_rng(0)
    words = []
    for _ in range(2500):
        face = expressions.sample_expression(rng)
        text = reasoning.write_description(face.emotion, face.aus, rng, intensities=face.intensities)
        assert answers.format_reward(text) == 1.0, text
        assert answers.accuracy_reward(text, face.emotion, mode="exact") == 1.0, text
        assert answers.eval_emotion(text) == face.emotion
        assert answers.eval_aus(text) == frozenset(face.aus), text
        if face.aus:
            assert answers.au_reward(text, face.aus) == 1.0, text
        think = answers.extract_think_first(text)
        assert think and not reasoning.BANNED_PATTERN.search(think), think
        for au in face.aus:  # "feature (AU4)": the number in parentheses after its phrase
            assert re.search(rf"[a-z] \({au}\)", think), (au, think)
        assert text.endswith(f"</think>\n<answer>{face.emotion}</answer>")
        words.append(len(text.split()))
    words = np.array(words)
    assert 38 <= np.median(words) <= 70, np.median(words)
    assert words.max() <= 90 and np.percentile(words, 5) >= 20


def test_phrasing_varies_for_the_same_face():
    texts = {
        reasoning.write_description("surprise", ("AU1", "AU2", "AU5", "AU26"), np.random.default_rng(seed))
        for seed in range(60)
    }
    assert len(texts) >= 20
    for au, clauses in reasoning.AU_CLAUSES.items():
        assert len(clauses) >= 3, au
        for clause in clauses:
            assert not reasoning.BANNED_PATTERN.search(clause), clause


def test_one_sided_aus_are_described_as_one_sided():
    text = reasoning.write_description(
        "contempt", ("AU12", "AU14"), np.random.default_rng(0), intensities={"R12": 0.5, "R14": 0.5}
    )
    assert "one" in text and "(AU12)" in text and "(AU14)" in text


def test_writer_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown emotion"):
        reasoning.write_description("joy", (), rng)
    with pytest.raises(ValueError, match="AU13"):
        reasoning.write_description("anger", ("AU13",), rng)
    with pytest.raises(ValueError, match="repeats"):
        reasoning.write_description("anger", ("AU4", "AU4"), rng)


def test_banned_pattern_catches_negations():
    for text in ("there is no smile", "Not raised", "without tension", "maybe fear", "isn't open"):
        assert reasoning.BANNED_PATTERN.search(text), text
    for text in ("the nose wrinkles", "notable knots", "another noted nostril"):
        assert not reasoning.BANNED_PATTERN.search(text), text


# ------------------------------------------------------------------------------------ demo set
@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "set"
    paths = demo.build_demo(out, workers=0, **SMALL)
    return paths


def test_records_validate_against_the_schema(small_demo):
    counts = {"sft": SMALL["num_sft"], "rl": SMALL["num_rl"], "test": SMALL["num_test"]}
    for split, count in counts.items():
        result = read_jsonl(small_demo[split], on_error="raise", image_root=small_demo.images)
        assert len(result.records) == count and not result.problems
        for record in result.records:
            image = Image.open(small_demo.images / record.image)
            assert image.size == (112, 112) and image.mode == "RGB"
            truth = record.meta_info
            assert truth["emotion"] in EMOTIONS
            if split == "rl":
                assert record.description == ""
            else:
                assert record.dataset == demo.DATASET_BOTH
                assert record.labels == (truth["emotion"],) and record.aus == tuple(truth["true_aus"])
                assert answers.format_reward(record.description) == 1.0
                assert answers.accuracy_reward(record.description, record.label) == 1.0
                if record.aus:
                    assert answers.au_reward(record.description, record.aus) == 1.0


def test_stage2_mixes_the_three_kinds_of_source(small_demo):
    records = read_jsonl(small_demo.rl).records
    datasets = Counter(record.dataset for record in records)
    assert set(datasets) == {demo.DATASET_BOTH, demo.DATASET_AU_ONLY, demo.DATASET_EMOTION_ONLY}
    for record in records:
        truth = record.meta_info
        if record.dataset == demo.DATASET_AU_ONLY:
            assert record.labels == () and record.aus == tuple(truth["true_aus"])
        elif record.dataset == demo.DATASET_EMOTION_ONLY:
            assert record.aus == () and record.labels == (truth["emotion"],)
        else:
            assert record.labels == (truth["emotion"],) and record.aus == tuple(truth["true_aus"])
    raw = [json.loads(line) for line in open(small_demo.rl, encoding="utf-8")]
    assert set(raw[0]) >= {"id", "dataset", "image", "question", "AUs", "labels", "description", "meta_info"}
    assert not os.path.isabs(raw[0]["image"])


def test_build_is_deterministic(small_demo, tmp_path):
    again = demo.build_demo(tmp_path / "again", workers=0, **SMALL)
    for split in ("sft", "rl", "test"):
        assert small_demo[split].read_bytes() == again[split].read_bytes()
    first = read_jsonl(small_demo.test).records[0].image
    assert (small_demo.images / first).read_bytes() == (again.images / first).read_bytes()
    other_seed = demo.plan_split("rl", 50, seed=SMALL["seed"] + 1)
    assert [face.expression for face in other_seed] != [face.expression for face in demo.plan_split("rl", 50, SMALL["seed"])]


def test_parallel_rendering_gives_the_same_images(small_demo, tmp_path):
    parallel = demo.build_demo(tmp_path / "parallel", workers=2, **{**SMALL, "num_rl": 240})
    sequential_faces = read_jsonl(small_demo.rl).records[:5]
    for record in sequential_faces:
        assert (small_demo.images / record.image).read_bytes() == (parallel.images / record.image).read_bytes()


def test_test_identities_are_new_people(small_demo):
    seeds = {split: {r.meta_info["identity_seed"] for r in read_jsonl(small_demo[split]).records} for split in ("sft", "rl", "test")}
    assert not seeds["test"] & (seeds["sft"] | seeds["rl"])


def test_build_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        demo.build_demo(tmp_path, workers=0, num_sft=1, num_rl=1, num_test=1)


def test_ensure_demo_builds_once_and_reuses(tmp_path, monkeypatch):
    sizes = dict(num_sft=3, num_rl=6, num_test=3, image_size=64, seed=0)
    calls = []
    real_build = demo.build_demo

    def counting_build(*args, **kwargs):
        calls.append(kwargs)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(demo, "build_demo", counting_build)
    first = demo.ensure_demo(tmp_path, progress=False, workers=0, **sizes)
    second = demo.ensure_demo(tmp_path, progress=False, workers=0, **sizes)
    assert first.root == second.root and len(calls) == 1
    assert json.loads((first.root / "stamp.json").read_text())["num_rl"] == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    other = demo.ensure_demo(tmp_path, progress=False, workers=0, **{**sizes, "seed": 1})
    assert other.root != first.root and len(calls) == 2
    (first.root / "stamp.json").write_text("{}")
    with pytest.raises(FileExistsError, match="stamp"):
        demo.ensure_demo(tmp_path, progress=False, workers=0, **sizes)


def test_ensure_demo_cleans_up_after_a_failed_build(tmp_path, monkeypatch):
    def failing_build(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(demo, "build_demo", failing_build)
    with pytest.raises(RuntimeError, match="disk full"):
        demo.ensure_demo(tmp_path, progress=False, num_sft=1, num_rl=1, num_test=1)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs, message",
    [({"num_sft": -1}, "num_sft"), ({"image_size": 8}, "image_size"), ({"num_rl": 2.5}, "num_rl")],
)
def test_bad_sizes_are_named(tmp_path, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        demo.build_demo(tmp_path / "x", workers=0, **{**dict(num_sft=1, num_rl=1, num_test=1), **kwargs})


def test_command_line(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "cli"), "--num_sft", "2", "--num_rl", "4", "--num_test", "2", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rl"]["records"] == 4 and (tmp_path / "cli" / "stage2_rl.jsonl").is_file()


@pytest.mark.slow
def test_default_build_takes_under_a_minute(tmp_path):
    """Timed in CPU seconds (this process and its render workers), which other jobs on a shared
    machine do not inflate; under 60 CPU-seconds means under a minute of wall time even on one core."""
    before_self, before_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    paths = demo.build_demo(tmp_path / "full")
    wall = time.perf_counter() - started
    after_self, after_children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(
        (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        for before, after in ((before_self, after_self), (before_children, after_children))
    )
    stats = json.loads(paths.stats.read_text())
    assert stats["rl"]["records"] == 4000 and stats["sft"]["records"] == 300 and stats["test"]["records"] == 500
    assert 0.80 <= stats["rl"]["au_set_ceiling"] <= 0.95
    assert cpu < 60, f"{cpu:.1f} CPU-seconds ({wall:.1f} s wall)"
