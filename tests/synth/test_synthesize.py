"""The stage 3 loop with a scripted model: attempts, feedback, candidates, de-duplication, shards,
statistics, and a killed run that resumes to exactly the files of an uninterrupted one."""

import json
import os

import pytest
from PIL import Image

from facialr1_jax.fea.answers import check_synthesis
from facialr1_jax.fea.prompts import feedback_for_answer
from facialr1_jax.fea.records import read_jsonl
from facialr1_jax.synth import checks
from facialr1_jax.synth.run import SynthesisInputs, Taken, synthesize
from facialr1_jax.synth.settings import SynthSettings
from facialr1_jax.synth.shards import MANIFEST_FILE, ManifestMismatchError, read_accepted, shard_files
from tests.synth import scripted

PLAN = {0: 1, 1: 2, 2: 3, 3: None}  # input index % 4 -> the attempt that passes (None: never)


def plan(index):
    return PLAN[index % 4]


def _settings(**overrides):
    values = dict(batch_size=3, shard_size=4, max_attempts=3, dedup_descriptions=False)
    values.update(overrides)
    return SynthSettings(**values)


def _run(workdir, source, records, settings, *, taken=None, encoder=None, plot=False):
    return synthesize(
        SynthesisInputs(tuple(records), scripted.record_images), generate=source,
        encoder=encoder or scripted.encoder(), settings=settings, workdir=str(workdir),
        model_fingerprint={"path": "scripted", "step": 0},
        provenance={"round": settings.round, "checkpoint": "scripted", "checkpoint_step": 0, "decoding": "greedy"},
        taken=taken or Taken(), plot=plot)


def _outputs(workdir):
    accepted = [r for path in shard_files(workdir, "accepted") for r in read_jsonl(path).records]
    rejected = [r for path in shard_files(workdir, "rejected") for r in read_jsonl(path).records]
    return accepted, rejected


def test_each_record_is_accepted_at_its_planned_attempt_and_passes_the_oracle(tmp_path):
    records = scripted.make_records(10)
    stats = _run(tmp_path, scripted.ScriptedSource(plan), records, _settings())
    accepted, rejected = _outputs(tmp_path)
    expected_accepted = [r.id for i, r in enumerate(records) if plan(i) is not None]
    assert [r.id for r in accepted] == expected_accepted
    assert [r.id for r in rejected] == [r.id for i, r in enumerate(records) if plan(i) is None]
    by_id = {r.id: i for i, r in enumerate(records)}
    for record in accepted:
        provenance = record.meta_info["synthesis"]
        assert provenance["attempt"] == plan(by_id[record.id])
        assert provenance["candidate"] == 0 and provenance["round"] == 1 and provenance["checkpoint"] == "scripted"
        assert record.meta_info["source_index"] == by_id[record.id]  # the input's meta_info is kept
        assert check_synthesis(record.description, record.aus, record.label) == []  # the oracle agrees
        source = records[by_id[record.id]]
        assert record.replace(description="", meta_info=source.meta_info) == source  # nothing else changed
    for record in rejected:
        history = record.meta_info["synthesis"]["attempts"]
        assert [a["attempt"] for a in history] == [1, 2, 3]
        for attempt in history:
            assert attempt["problems"] == check_synthesis(attempt["answer"], record.aus, record.label)
        assert record.description == ""
    assert stats["accepted"] == len(expected_accepted) and stats["rejected"] == len(rejected)
    assert read_accepted(str(tmp_path)) == accepted


def test_retry_prompts_carry_cumulative_feedback(tmp_path):
    records = scripted.make_records(4)
    source = scripted.ScriptedSource(plan)
    _run(tmp_path, source, records, _settings())
    prompts = {}  # (record id, attempt) -> instruction
    for (round_number, block, attempt, batch), rows in source.calls:
        assert (round_number, block) == (1, 0)
        for record_id, instruction in rows:
            assert (record_id, attempt) not in prompts, "a record is asked once per attempt"
            prompts[record_id, attempt] = instruction
    assert sorted(prompts) == [("rec-000", 1), ("rec-001", 1), ("rec-001", 2), ("rec-002", 1), ("rec-002", 2),
                               ("rec-002", 3), ("rec-003", 1), ("rec-003", 2), ("rec-003", 3)]
    record = records[2]
    first_feedback = feedback_for_answer(scripted.wrong_answer(record, 1), record.aus, record.label)
    second_feedback = feedback_for_answer(scripted.wrong_answer(record, 2), record.aus, record.label)
    assert prompts["rec-002", 2] == prompts["rec-002", 1] + "\n\n" + first_feedback
    assert prompts["rec-002", 3] == prompts["rec-002", 2] + "\n\n" + second_feedback


def test_batches_hold_at_most_batch_size_prompts_of_open_records(tmp_path):
    records = scripted.make_records(8)
    source = scripted.ScriptedSource(plan)
    _run(tmp_path, source, records, _settings(batch_size=3, shard_size=8))
    per_attempt = {}
    for (_, _, attempt, batch), rows in source.calls:
        assert 1 <= len(rows) <= 3
        per_attempt.setdefault(attempt, []).extend(record_id for record_id, _ in rows)
    assert per_attempt[1] == [r.id for r in records]
    assert per_attempt[2] == [r.id for i, r in enumerate(records) if plan(i) != 1]
    assert per_attempt[3] == [r.id for i, r in enumerate(records) if plan(i) not in (1, 2)]


@pytest.mark.parametrize("kill_after_calls", [1, 5, 9])
def test_killed_run_resumes_to_the_uninterrupted_files(tmp_path, kill_after_calls):
    records = scripted.make_records(11)  # blocks of 4: 4 + 4 + 3 records
    settings = _settings(dedup_descriptions=True)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    reference_stats = _run(reference, scripted.ScriptedSource(plan), records, settings)

    killed = scripted.ScriptedSource(plan, fail_after_calls=kill_after_calls)
    with pytest.raises(KeyboardInterrupt):
        _run(resumed, killed, records, settings)
    manifest = json.loads((resumed / MANIFEST_FILE).read_text())
    done = sorted(int(b) for b in manifest["blocks"])
    assert done == list(range(len(done))) and len(done) < 3, "the kill must leave work undone"
    # A kill between the shard writes and the manifest leaves a stray shard of an unfinished block.
    (resumed / f"accepted-{len(done):05d}.jsonl").write_text("half-written garbage\n")

    again = scripted.ScriptedSource(plan)
    resumed_stats = _run(resumed, again, records, settings)
    assert min(block for (_, block, _, _), _ in again.calls) == len(done), "finished blocks are not redone"
    names = sorted(os.listdir(reference))
    assert sorted(os.listdir(resumed)) == names
    for name in names:
        if name.endswith(".jsonl"):
            assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
    accepted, rejected = _outputs(resumed)
    ids = [r.id for r in accepted + rejected]
    assert len(ids) == len(set(ids)) == len(records)
    for key in ("accepted", "rejected", "by_emotion", "by_dataset", "by_attempt", "rejection_reasons"):
        assert resumed_stats[key] == reference_stats[key]


def test_a_finished_run_does_nothing_when_started_again(tmp_path):
    records = scripted.make_records(5)
    _run(tmp_path, scripted.ScriptedSource(plan), records, _settings())
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path) if name.endswith(".jsonl")}
    again = scripted.ScriptedSource(plan)
    _run(tmp_path, again, records, _settings())
    assert again.calls == []
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_other_settings_or_foreign_shards_refuse_the_workdir(tmp_path):
    records = scripted.make_records(4)
    _run(tmp_path / "a", scripted.ScriptedSource(plan), records, _settings())
    with pytest.raises(ManifestMismatchError, match="max_attempts"):
        _run(tmp_path / "a", scripted.ScriptedSource(plan), records, _settings(max_attempts=4))
    with pytest.raises(ManifestMismatchError, match="inputs"):
        _run(tmp_path / "a", scripted.ScriptedSource(plan), records[:3], _settings())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "accepted-00000.jsonl").write_text("")
    with pytest.raises(ManifestMismatchError, match="no synth_manifest.json"):
        _run(tmp_path / "b", scripted.ScriptedSource(plan), records, _settings())


def test_duplicate_descriptions_are_retried_and_known_ids_skipped(tmp_path):
    records = scripted.make_records(6)
    # rec-005 gets the id digits, ground truth and dataset of rec-000, so its correct answer is the same text.
    twin = records[0].replace(id="twin-000")
    inputs = [records[0], twin, *records[1:]]
    known = Taken()
    known.add(records[4].replace(description="<think>anything</think><answer>disgust</answer>"))
    source = scripted.ScriptedSource(lambda i: 1)
    stats = _run(tmp_path, source, inputs, _settings(dedup_descriptions=True, shard_size=8), taken=known)
    accepted, rejected = _outputs(tmp_path)
    assert rejected == []
    attempts = {r.id: r.meta_info["synthesis"]["attempt"] for r in accepted}
    assert "rec-004" not in attempts and stats["skipped"] == 1
    assert attempts["rec-000"] == 1 and attempts["twin-000"] == 2
    texts = [checks.description_key(r.description) for r in accepted]
    assert len(texts) == len(set(texts))
    retry = [text for (_, _, attempt, _), rows in source.calls for record_id, text in rows
             if record_id == "twin-000" and attempt == 2]
    assert len(retry) == 1 and "repeats word for word the one already kept for another image (rec-000)" in retry[0]

    # Without de-duplication the twin keeps the same text at attempt 1.
    plain = _run(tmp_path / "plain", scripted.ScriptedSource(lambda i: 1), inputs, _settings(shard_size=8))
    assert plain["by_attempt"][0]["accepted"] == len(inputs)


def test_first_passing_candidate_is_kept(tmp_path):
    records = scripted.make_records(4)
    source = scripted.ScriptedSource(lambda i: 1, candidates=3)  # two wrong candidates, then a right one
    stats = _run(tmp_path, source, records, _settings(num_candidates=3, temperature=1.0))
    accepted, _ = _outputs(tmp_path)
    assert [r.meta_info["synthesis"]["candidate"] for r in accepted] == [2, 2, 2, 2]
    assert stats["by_candidate"] == {"2": 4}


def test_task_mode_is_rejection_sampling_with_the_training_prompt(tmp_path):
    from facialr1_jax.data.examples import default_instruction

    records = scripted.make_records(8)
    source = scripted.ScriptedSource(plan)
    stats = _run(tmp_path, source, records, _settings(prompt_mode="task"))
    by_id = {r.id: r for r in records}
    for _, rows in source.calls:
        for record_id, instruction in rows:
            assert instruction == default_instruction(by_id[record_id], "compact")
    assert [row["accepted"] for row in stats["by_attempt"]] == [2, 2, 2]  # the plan, attempt by attempt


def test_prompts_over_budget_are_rejected_without_generation(tmp_path):
    records = scripted.make_records(3)
    source = scripted.ScriptedSource(plan)
    stats = _run(tmp_path, source, records, _settings(), encoder=scripted.encoder(max_prompt_tokens=64))
    assert source.calls == []
    _, rejected = _outputs(tmp_path)
    assert [r.meta_info["synthesis"]["category"] for r in rejected] == [checks.PROMPT_TOO_LONG] * 3
    assert stats["rejection_reasons"] == {checks.PROMPT_TOO_LONG: 3}


def test_yield_report(tmp_path):
    records = scripted.make_records(20)
    stats = _run(tmp_path, scripted.ScriptedSource(plan), records, _settings(round=2), plot=True)
    # Expected numbers counted from the plan and the records, independently of the report code.
    expected = {}
    for i, record in enumerate(records):
        row = expected.setdefault(record.label or "(AU only)", [0, 0])
        row[0] += 1
        row[1] += plan(i) is not None
    assert {k: (v["annotated"], v["accepted"]) for k, v in stats["by_emotion"].items()} == {
        k: tuple(v) for k, v in expected.items()}
    datasets = {}
    for i, record in enumerate(records):
        datasets.setdefault(record.dataset, [0, 0])
        datasets[record.dataset][0] += 1
        datasets[record.dataset][1] += plan(i) is not None
    assert {k: (v["annotated"], v["accepted"]) for k, v in stats["by_dataset"].items()} == {
        k: tuple(v) for k, v in datasets.items()}
    assert [row["accepted"] for row in stats["by_attempt"]] == [5, 5, 5]
    assert [row["cumulative_yield"] for row in stats["by_attempt"]] == pytest.approx([0.25, 0.5, 0.75], abs=1e-12)
    assert stats["yield"] == pytest.approx(0.75, abs=1e-12) and stats["round"] == 2
    # Never-passing records (inputs 3, 7, 11, 15, 19) end on attempt 3, where the scripted answer drops
    # an AU when the record has AUs and names another emotion when it has none (input 7).
    assert stats["rejection_reasons"] == {checks.MISSING_AUS: 4, checks.LABEL: 1}
    saved = json.loads((tmp_path / "synth_stats.json").read_text())
    assert saved["by_attempt"] == stats["by_attempt"]
    markdown = (tmp_path / "synth_stats.md").read_text()
    happy_total, happy_kept = expected["happiness"]
    assert f"| happiness | {happy_total} | {happy_kept} | {100 * happy_kept / happy_total:.1f}% |" in markdown
    assert "| 3 | 5 | 15 | 75.0% |" in markdown
    with Image.open(tmp_path / "synth_yield.png") as image:
        assert image.size[0] > 500 and image.size[1] > 400


def test_reverify_reads_the_settings_and_finds_tampering(tmp_path):
    from facialr1_jax.fea.records import write_jsonl
    from facialr1_jax.synth.verify import reverify

    records = scripted.make_records(8)
    _run(tmp_path, scripted.ScriptedSource(plan), records, _settings(dedup_descriptions=True))
    report = reverify(str(tmp_path))
    assert report.ok and (report.accepted, report.rejected) == (6, 2)

    path = shard_files(tmp_path, "accepted")[0]
    kept = list(read_jsonl(path).records)
    broken = kept[0].replace(description=kept[0].description.replace("</answer>", ""))
    write_jsonl([broken, *kept[1:], kept[1].replace(id="copy")], path)
    report = reverify(str(tmp_path))
    assert not report.ok
    assert any(line.startswith(f"{broken.id}: ") and "answer" in line for line in report.failures)
    assert any(line.startswith("copy: same description as") for line in report.failures)
