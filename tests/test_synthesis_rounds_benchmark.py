"""benchmarks/synthesis_rounds.py: the issue's three criteria read from a pipeline workdir, including a
last round that did not synthesise (pipeline.final_synthesis = False)."""

import json

import pytest

from facialr1_jax.synth import verify


def _round(workdir, number, accuracy, synthesis):
    folder = workdir / f"round-{number}"
    folder.mkdir(parents=True)
    row = {"round": number, "model": str(folder / "grpo"), "sft_records": 300,
           "eval": {"emotion_accuracy": accuracy}, "synthesis": synthesis}
    (folder / "round.json").write_text(json.dumps(row))


@pytest.mark.parametrize("accuracy2,accepted,oracle_ok", [(16.4, 1718, True), (12.0, 1718, True),
                                                          (16.4, 999, True), (16.4, 1718, False)])
def test_criteria_from_the_rounds(tmp_path, monkeypatch, load_benchmark, accuracy2, accepted, oracle_ok):
    checked = []

    def fake_reverify(path):
        checked.append(path)
        return verify.VerifyReport(accepted=accepted, rejected=4000 - accepted,
                                   failures=() if oracle_ok else ("a record fails",))

    monkeypatch.setattr(verify, "reverify", fake_reverify)
    _round(tmp_path, 1, 14.2, {"annotated": 4000, "accepted": accepted, "yield": accepted / 4000})
    _round(tmp_path, 2, accuracy2, None)  # the last round did not synthesise
    summary = load_benchmark("synthesis_rounds").summarize(str(tmp_path), 1000)
    assert checked == [str(tmp_path / "round-1" / "synth")]  # round 2 has no shards to check
    assert [row["oracle_ok"] for row in summary["rounds"]] == [oracle_ok, None]
    assert summary["criteria"] == {"round1_accepts_enough": accepted >= 1000, "all_accepted_pass_oracle": oracle_ok,
                                   "round2_at_least_as_accurate": accuracy2 >= 14.2}
