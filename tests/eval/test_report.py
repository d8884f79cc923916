"""metrics.json, report.md, the confusion PNG and the paper-layout console tables."""

import json

import pytest
from PIL import Image

from facialr1_jax.eval import metrics as em
from facialr1_jax.eval import paper, report
from facialr1_jax.fea.profiles import get_profile
from facialr1_jax.fea.records import FEARecord


def _record(id, dataset, labels=(), aus=(), description=""):
    return FEARecord(id=id, dataset=dataset, images=("x.png",), labels=tuple(labels),
                     aus=tuple(aus), description=description)


@pytest.fixture(scope="module")
def results():
    rafdb, _ = em.score_benchmark(
        ["<think>AU12</think><answer>happiness</answer>", "<answer>fear</answer>", "junk"],
        [_record("a", "RAF-DB", ["happiness"]), _record("b", "RAF-DB", ["sadness"]),
         _record("c", "RAF-DB", ["anger"])],
        get_profile("RAF-DB"),
    )
    disfa, _ = em.score_benchmark(
        ["<think>AU1 AU2</think>", "<think>AU4</think>"],
        [_record("d", "DISFA", aus=["AU1"]), _record("e", "DISFA", aus=["AU4", "AU6"])],
        get_profile("DISFA"),
    )
    synth, _ = em.score_benchmark(
        ["<think>AU12</think><answer>happiness</answer>"],
        [_record("s", "synthface", ["happiness"], ["AU6", "AU12"],
                 "<think>cheeks (AU6), lips (AU12)</think><answer>happiness</answer>")],
        get_profile("synthface"),
        benchmark="synthface",
    )
    return {"rafdb": rafdb, "disfa": disfa, "synthface": synth}


def test_write_report_files(tmp_path, results):
    written = report.write_report(tmp_path, results, run_info={"checkpoint": "ckpt/7"})
    document = json.loads((tmp_path / "metrics.json").read_text())
    assert set(document["benchmarks"]) == {"rafdb", "disfa", "synthface"}
    rafdb = document["benchmarks"]["rafdb"]
    assert rafdb["emotion_accuracy"] == pytest.approx(100 / 3, abs=1e-9)
    assert rafdb["au_f1_macro"] is None
    assert rafdb["num_examples"] == 3 and rafdb["num_unparseable"] == 1
    assert document["benchmarks"]["disfa"]["au_f1_micro"] == pytest.approx(
        results["disfa"].au_f1_micro, abs=1e-12)
    assert document["run"] == {"checkpoint": "ckpt/7"}
    # One PNG per benchmark with emotion labels (DISFA has none).
    assert set(k for k in written if k.startswith("confusion/")) == {
        "confusion/rafdb", "confusion/synthface"}
    with Image.open(written["confusion/rafdb"]) as png:
        assert png.format == "PNG" and png.width > 100 and png.height > 100
    text = (tmp_path / "report.md").read_text()
    assert "![confusion matrix of rafdb](confusion-rafdb.png)" in text
    assert "| happiness | 1 | 100.0 |" in text  # per-class table: support 1, accuracy 100%
    assert "ckpt/7" in text


def test_console_table_sets_paper_numbers_beside_ours(results):
    text = report.console_report(results, model_name="ours")
    lines = text.splitlines()
    emotion = lines.index("Emotion recognition: accuracy (%)")
    header, _, zero_shot, facial_r1, ours = lines[emotion + 1: emotion + 6]
    assert header.split()[1:] == ["FER2013", "AffectNet", "RAF-DB", "FABA", "synthface"]
    assert facial_r1.split()[-5:] == ["69.8", "65.2", "92.1", "67.8", "-"]
    assert zero_shot.split()[-5:] == ["24.3", "-", "34.3", "-", "-"]
    assert ours.split() == ["ours", "-", "-", "33.3", "-", "100.0"]
    au = lines.index("AU recognition: F1 (%)")
    au_ours = lines[au + 5].split()
    # DISFA macro over its 8 AUs: AU1 and AU4 are found exactly (F1 1); AU2 is a false
    # positive, AU6 a miss, the rest never occur (F1 0): 2 / 8.
    assert results["disfa"].au_f1_macro == pytest.approx(25.0, abs=1e-9)
    assert au_ours[:2] == ["ours", "25.0"]
    # No FABA / FEA-20K benchmark here: the REGE table is left out; synthface has ROUGE-L.
    assert "Reasoning: REGE (FABA-Bench)" not in text
    assert "Reasoning: ROUGE-L (FEA-20K)" in text


def test_every_paper_number_is_a_known_metric_and_profile():
    metric_names = set(em.BenchmarkMetrics.__dataclass_fields__) | {
        "au_f1_macro", "au_f1_micro", "rege_emotion", "rege_au", "gpt_score"}
    for row in paper.PAPER_ROWS:
        for metric, profile in row.values:
            assert metric in metric_names
            get_profile(profile)  # raises for an unknown benchmark name
    for table in paper.PAPER_TABLES:
        for profile in table.profiles:
            get_profile(profile)
    assert paper.paper_value(paper.FACIAL_R1, "au_f1_macro", "DISFA") == 73.1
