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
    header, _, zero_shot, facial_r1, exact, normalised = lines[emotion + 1: emotion + 7]
    assert header.split()[1:] == ["FER2013", "AffectNet", "RAF-DB", "FABA", "synthface"]
    assert facial_r1.split()[-5:] == ["69.8", "65.2", "92.1", "67.8", "-"]
    assert zero_shot.split()[-5:] == ["24.3", "-", "34.3", "-", "-"]
    # The paper's cells sit beside the exact reading; the normalised one follows, each row named.
    assert exact.split() == ["ours:", "emotion_accuracy_exact", "-", "-", "33.3", "-", "100.0"]
    assert normalised.split() == ["ours:", "emotion_accuracy_normalized", "-", "-", "33.3", "-", "100.0"]
    au = lines.index("AU recognition: F1 (%)")
    reference, fixed = lines[au + 5].split(), lines[au + 6].split()
    # The reference's scoring: the union of DISFA's ground truth here is AU1, AU4, AU6; AU1 and AU4
    # are found (F1 1), AU6 is missed (F1 0), the predicted AU2 is outside the list: 2 / 3.
    assert results["disfa"].au_f1_macro_reference == pytest.approx(200 / 3, abs=1e-9)
    assert results["disfa"].au_f1_micro_reference == pytest.approx(80.0, abs=1e-9)  # 2TP / (2TP + FN)
    assert reference[:3] == ["ours:", "au_f1_macro_reference", "66.7"]
    # Over DISFA's fixed 8 AUs: AU1 and AU4 exact (F1 1); AU2 a false positive, AU6 a miss, the rest
    # never occur (F1 0): 2 / 8.
    assert results["disfa"].au_f1_macro == pytest.approx(25.0, abs=1e-9)
    assert fixed[:3] == ["ours:", "au_f1_macro", "25.0"]
    # No FABA / FEA-20K benchmark here: the REGE table is left out; synthface has ROUGE-L.
    assert "Reasoning: REGE (FABA-Bench)" not in text
    assert "Reasoning: ROUGE-L (FEA-20K)" in text


def test_report_names_the_metric_beside_the_paper_and_why_cells_are_empty(tmp_path, results):
    report.write_report(tmp_path, results, plots=False)
    text = (tmp_path / "report.md").read_text()
    assert "| ours: au_f1_macro_reference | 66.7 |" in text.replace("this model", "ours")
    assert "Empty paper cells:" in text
    assert "Qwen2.5-VL-7B zero-shot (paper), emotion_accuracy on AffectNet: not stated" in text
    assert "AU F1 over the reference evaluation's scoring" in text
    document = json.loads((tmp_path / "metrics.json").read_text())["benchmarks"]
    assert document["disfa"]["au_f1_macro_reference"] == pytest.approx(200 / 3)
    assert document["disfa"]["au_reference_scoring"]["au_list"] == ["AU1", "AU4", "AU6"]
    assert document["rafdb"]["emotion_comparison"] == "normalized"
    assert document["rafdb"]["emotion_accuracy_exact"] == pytest.approx(100 / 3)


def test_every_paper_cell_names_the_metric_it_sits_beside():
    names = {(t.metric, p): t.our_metric(p) for t in paper.PAPER_TABLES for p in t.profiles}
    assert names[("au_f1_macro", "DISFA")] == "au_f1_macro_reference"
    assert names[("emotion_accuracy", "RAF-DB")] == "emotion_accuracy_exact"
    assert names[("rege_emotion", "FABA")] == "rege_emotion"
    assert names[("rouge_l", "FEA-20K")] == "rouge_l"
    metric_names = {name for name in dir(em.BenchmarkMetrics) if not name.startswith("_")} | set(
        em.BenchmarkMetrics.__dataclass_fields__)
    for table in paper.PAPER_TABLES:
        for name in (table.beside, *table.also):
            assert name in metric_names
    # Every cell the paper rows fill, or leave empty with a note, belongs to a table.
    for row in paper.PAPER_ROWS:
        for metric, profile in [*row.values, *row.notes]:
            if metric != "gpt_score":
                assert (metric, profile) in names, (row.model, metric, profile)
    with pytest.raises(KeyError, match="no column 'DISFA'"):
        paper.PAPER_TABLES[1].our_metric("DISFA")


def test_zero_shot_row_holds_only_the_confirmed_cells():
    assert paper.QWEN_ZERO_SHOT.values == {
        ("au_f1_macro", "DISFA"): 22.1, ("au_f1_macro", "BP4D"): 16.9,
        ("emotion_accuracy", "FER2013"): 24.3, ("emotion_accuracy", "RAF-DB"): 34.3}
    unknown = [("au_f1_macro", "RAF-AU"), ("au_f1_macro", "FABA"), ("emotion_accuracy", "AffectNet"),
               ("emotion_accuracy", "FABA"), ("rege_emotion", "FABA"), ("rouge_l", "FEA-20K")]
    for metric, profile in unknown:
        assert paper.paper_value(paper.QWEN_ZERO_SHOT, metric, profile) is None
        assert "left empty" in paper.paper_note(paper.QWEN_ZERO_SHOT, metric, profile)
    assert set(paper.QWEN_ZERO_SHOT.notes) == set(unknown)


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
