"""The round loop with stand-in stages: what each stage is given, how the SFT set grows, the rounds
table, and resuming after a failure part-way through a round."""

import importlib
import json
import os

import pytest
from PIL import Image

from facialr1_jax.fea.records import read_jsonl
from facialr1_jax.synth import pipeline
from facialr1_jax.synth.run import SynthesisInputs, read_known, synthesize
from facialr1_jax.synth.settings import SynthSettings
from tests.synth import scripted

POOL = scripted.make_records(12)  # the stage 2 records the stand-in synthesis annotates


class FakeStages:
    """Records every call; synthesis is the real loop with a scripted model over POOL, so the
    pipeline reads real shards. `fail_on` = (stage, round) raises once, like a crash."""

    def __init__(self, fail_on=None):
        self.calls = []
        self.fail_on = fail_on

    def _round(self, workdir):
        return int(os.path.basename(os.path.dirname(workdir)).split("-")[1])

    def _maybe_fail(self, stage, round_number):
        if self.fail_on == (stage, round_number):
            self.fail_on = None
            raise RuntimeError(f"simulated crash in {stage} of round {round_number}")

    def sft(self, config, workdir):
        round_number = self._round(workdir)
        self.calls.append(("sft", round_number, config))
        self._maybe_fail("sft", round_number)
        records = read_jsonl(config.data.train_jsonl).records if config.data.source == "jsonl" else ()
        return {"status": "completed", "step": 7, "train_records": len(records) or 4}

    def grpo(self, config, workdir):
        round_number = self._round(workdir)
        self.calls.append(("grpo", round_number, config))
        self._maybe_fail("grpo", round_number)
        return {"status": "completed", "step": 3}

    def evaluate(self, config, checkpoint, workdir):
        round_number = self._round(workdir)
        self.calls.append(("eval", round_number, checkpoint))
        return {"emotion_accuracy": 40.0 + 10 * round_number, "format_valid": 90.0, "au_f1_macro": 30.0}

    def synth(self, config, workdir):
        round_number = self._round(workdir)
        self.calls.append(("synth", round_number, config))
        self._maybe_fail("synth", round_number)
        settings = SynthSettings.from_config(config)
        # Record i passes from attempt 2 in round 1 and never again afterwards, except every third one.
        plan = (lambda i: 2 if i % 2 == 0 else None) if round_number == 1 else (lambda i: 1 if i % 3 == 0 else None)
        return synthesize(SynthesisInputs(tuple(POOL), scripted.record_images), generate=scripted.ScriptedSource(plan),
                          encoder=scripted.encoder(), settings=settings, workdir=workdir,
                          model_fingerprint={"path": settings.checkpoint, "step": 0},
                          provenance={"round": settings.round, "checkpoint": settings.checkpoint},
                          taken=read_known(settings.known_jsonl), plot=False)

    def stages(self):
        return pipeline.Stages(sft=self.sft, grpo=self.grpo, synth=self.synth, evaluate=self.evaluate)

    def of(self, stage, round_number):
        return [args for name, number, args in self.calls if (name, number) == (stage, round_number)]


def _config(tmp_path, **pipeline_overrides):
    config = importlib.import_module("configs.pipeline").get_config()
    config.data.builtin_dir = str(tmp_path / "cache")
    config.data.builtin_num_sft = 4
    config.data.builtin_num_rl = 4
    config.data.builtin_num_test = 4
    config.synth.max_attempts = 2
    config.synth.batch_size = 4
    config.synth.shard_size = 5
    config.pipeline.rounds = 3
    for key, value in pipeline_overrides.items():
        config.pipeline[key] = value
    return config


def test_rounds_chain_models_and_grow_the_sft_set(tmp_path):
    config = _config(tmp_path)
    fake = FakeStages()
    workdir = tmp_path / "run"
    result = pipeline.run_pipeline(config, str(workdir), stages=fake.stages())
    files = pipeline.data_files(config)
    seed = read_jsonl(files.seed).records

    # Round 1: SFT from scratch on the built-in seed split, GRPO from it.
    (sft1,) = fake.of("sft", 1)
    assert sft1.data.source == "builtin" and sft1.model.checkpoint == "" and sft1.data.builtin_num_rl == 4
    (grpo1,) = fake.of("grpo", 1)
    assert grpo1.grpo.init_from == str(workdir / "round-1" / "sft") and grpo1.grpo.num_steps == config.grpo.num_steps
    assert fake.of("eval", 1) == [str(workdir / "round-1" / "grpo")]
    (synth1,) = fake.of("synth", 1)
    assert synth1.synth.checkpoint == str(workdir / "round-1" / "grpo") and synth1.synth.round == 1
    assert synth1.synth.known_jsonl == files.seed

    # Round 1 accepts the even records (at attempt 2); round 2 only new ones (every third, if not taken).
    round1 = {r.id for r in read_jsonl(workdir / "round-1" / "synth" / "accepted-00000.jsonl").records} | {
        r.id for r in read_jsonl(workdir / "round-1" / "synth" / "accepted-00001.jsonl").records} | {
        r.id for r in read_jsonl(workdir / "round-1" / "synth" / "accepted-00002.jsonl").records}
    assert round1 == {POOL[i].id for i in range(0, 12, 2)}

    # Round 2: SFT on seed + round 1's records, from round 1's model, with the per-round knobs.
    (sft2,) = fake.of("sft", 2)
    assert sft2.model.checkpoint == str(workdir / "round-1" / "grpo")
    assert sft2.data.source == "jsonl" and sft2.data.train_jsonl == str(workdir / "round-2" / "train.jsonl")
    assert sft2.data.eval_jsonl == files.test and sft2.data.image_root == files.image_root
    assert sft2.sft.num_steps == config.pipeline.sft_steps_per_round and sft2.optimizer.lr == config.pipeline.sft_lr
    # Both rounds' SFT trains the demo model on synthesis prompts too (round 1 with warm_start's share, later
    # rounds with the per-round one), with their longer prompt budget.
    assert 0 < config.pipeline.sft_synthesis_prompt_share < config.warm_start.sft.synthesis_prompt_share
    assert sft1.sft.synthesis_prompt_share == config.warm_start.sft.synthesis_prompt_share
    assert sft2.sft.synthesis_prompt_share == config.pipeline.sft_synthesis_prompt_share
    assert sft1.data.max_prompt_tokens == sft2.data.max_prompt_tokens == config.data.max_prompt_tokens
    train2 = read_jsonl(workdir / "round-2" / "train.jsonl").records
    assert [r.id for r in train2] == [r.id for r in seed] + sorted(round1)
    assert all(r.description for r in train2)
    (grpo2,) = fake.of("grpo", 2)
    assert grpo2.grpo.init_from == str(workdir / "round-2" / "sft")
    assert grpo2.grpo.num_steps == config.pipeline.grpo_steps_per_round
    (synth2,) = fake.of("synth", 2)
    assert synth2.synth.known_jsonl == str(workdir / "round-2" / "train.jsonl") and synth2.synth.round == 2

    # Round 2's synthesis skipped round 1's records and accepted the others its plan allows.
    stats2 = result["rounds"][1]["synthesis"]
    expected2 = {POOL[i].id for i in range(12) if i % 3 == 0} - round1
    assert stats2["skipped"] == len(round1) and stats2["accepted"] == len(expected2)
    train3 = read_jsonl(workdir / "round-3" / "train.jsonl").records
    assert {r.id for r in train3} == {r.id for r in seed} | round1 | expected2
    assert [r.meta_info["synthesis"]["round"] for r in train3[len(seed):]] == [1] * len(round1) + [2] * len(expected2)

    # The table: one row per round, accuracy change against the previous round.
    saved = json.loads((workdir / "rounds.json").read_text())["rounds"]
    assert [row["round"] for row in saved] == [1, 2, 3]
    assert [row["sft_records"] for row in saved] == [4, len(seed) + len(round1), len(train3)]
    markdown = (workdir / "rounds.md").read_text()
    assert markdown.count("| +10.0 |") == 2 and f"| {len(round1)} of 12 |" in markdown
    with Image.open(workdir / "rounds.png") as image:
        assert image.size[0] > 400


def test_a_crash_resumes_inside_the_round_and_skips_finished_work(tmp_path):
    config = _config(tmp_path, rounds=2)
    workdir = str(tmp_path / "run")
    crashing = FakeStages(fail_on=("grpo", 2))
    with pytest.raises(RuntimeError, match="simulated crash in grpo of round 2"):
        pipeline.run_pipeline(config, workdir, stages=crashing.stages())
    assert os.path.exists(os.path.join(workdir, "round-1", "round.json"))
    assert not os.path.exists(os.path.join(workdir, "round-2", "round.json"))

    again = FakeStages()
    result = pipeline.run_pipeline(config, workdir, stages=again.stages())
    assert [(name, number) for name, number, _ in again.calls] == [("grpo", 2), ("eval", 2), ("synth", 2)]

    reference_dir = str(tmp_path / "reference")
    reference = pipeline.run_pipeline(config, reference_dir, stages=FakeStages().stages())
    assert [row["synthesis"]["accepted"] for row in result["rounds"]] == [
        row["synthesis"]["accepted"] for row in reference["rounds"]]
    for name in ("train.jsonl", "synth/accepted-00000.jsonl", "synth/rejected-00002.jsonl"):
        ours = open(os.path.join(workdir, "round-2", name), "rb").read()
        theirs = open(os.path.join(reference_dir, "round-2", name), "rb").read()
        assert ours.replace(workdir.encode(), b"W") == theirs.replace(reference_dir.encode(), b"W"), name


def test_stage_that_stops_early_stops_the_pipeline(tmp_path):
    config = _config(tmp_path, rounds=1)
    fake = FakeStages()
    stages = fake.stages()
    stages = pipeline.Stages(sft=lambda c, w: {"status": "preempted", "step": 2}, grpo=stages.grpo,
                             synth=stages.synth, evaluate=stages.evaluate)
    result = pipeline.run_pipeline(config, str(tmp_path / "run"), stages=stages)
    assert (result["status"], result["round"], result["step"]) == ("preempted", 1, "sft")
    assert fake.calls == []  # nothing after the stopped stage ran
    assert not os.path.exists(tmp_path / "run" / "round-1" / "steps.json")


def test_initial_checkpoint_replaces_round_one_training(tmp_path):
    model = tmp_path / "hf-model"  # what resolve_checkpoint takes for a Hugging Face folder
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"")
    config = _config(tmp_path, rounds=2, initial_checkpoint=str(model))
    fake = FakeStages()
    result = pipeline.run_pipeline(config, str(tmp_path / "run"), stages=fake.stages())
    assert fake.of("sft", 1) == [] and fake.of("grpo", 1) == []
    assert fake.of("eval", 1) == [str(model)]
    assert fake.of("synth", 1)[0].synth.checkpoint == str(model)
    assert fake.of("sft", 2)[0].model.checkpoint == str(model)
    assert result["rounds"][0]["sft_records"] is None


@pytest.mark.parametrize(
    "section,key,value,message",
    [
        ("pipeline", "sft_steps_per_round", 0, "config.pipeline.sft_steps_per_round = 0 must be >= 1"),
        ("pipeline", "sft_lr", -1.0, "config.pipeline.sft_lr = -1.0 must be >= 0"),
        ("pipeline", "sft_synthesis_prompt_share", 1.5, "config.pipeline.sft_synthesis_prompt_share = 1.5 must be in [0, 1]"),
        ("pipeline", "initial_checkpoint", "/no/such/model", "config.pipeline.initial_checkpoint: checkpoint path"),
        ("synth", "check_aus", "most", "config.synth.check_aus = 'most' is not one of exact, f1, off"),
        ("data", "source", "tfds", "data.source must be builtin or jsonl"),
    ],
)
def test_bad_settings_fail_before_any_stage_runs(tmp_path, section, key, value, message):
    from facialr1_jax.config_validation import ConfigError

    config = _config(tmp_path)
    config[section][key] = value
    fake = FakeStages()
    with pytest.raises(ConfigError) as info:
        pipeline.run_pipeline(config, str(tmp_path / "run"), stages=fake.stages())
    assert message in str(info.value)
    assert fake.calls == []


def test_final_synthesis_can_be_skipped(tmp_path):
    config = _config(tmp_path, rounds=2, final_synthesis=False)
    fake = FakeStages()
    result = pipeline.run_pipeline(config, str(tmp_path / "run"), stages=fake.stages())
    assert len(fake.of("synth", 1)) == 1 and fake.of("synth", 2) == []
    assert fake.of("eval", 2) == [str(tmp_path / "run" / "round-2" / "grpo")]
    assert result["rounds"][1]["synthesis"] is None
    assert "| 2 | " in (tmp_path / "run" / "rounds.md").read_text()


def test_later_rounds_take_warm_start_share_when_none_is_set(tmp_path):
    config = _config(tmp_path)
    config.pipeline.sft_synthesis_prompt_share = -1.0
    files = pipeline.data_files(config)
    later = pipeline.sft_config(config, 2, previous_model="m", files=files, train_file="t.jsonl")
    assert later.sft.synthesis_prompt_share == config.warm_start.sft.synthesis_prompt_share
    config.pipeline.sft_synthesis_prompt_share = 0.0
    assert pipeline.sft_config(config, 2, previous_model="m", files=files,
                               train_file="t.jsonl").sft.synthesis_prompt_share == 0.0
