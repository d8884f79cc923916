"""Benchmark metrics against values computed by hand (docs/METHOD.md section 9)."""

import pytest

from facialr1_jax.eval import metrics as em
from facialr1_jax.fea.profiles import get_profile
from facialr1_jax.fea.records import FEARecord


def record(id, dataset="RAF-DB", labels=(), aus=(), description=""):
    return FEARecord(
        id=id,
        dataset=dataset,
        images=(f"{id}.png",),
        labels=tuple(labels),
        aus=tuple(aus),
        description=description,
    )


# ------------------------------------------------------------------------------------ emotion
EMOTION_CASES = [
    # (text, label, correct when normalised, predicted class)
    ("<think>lip corners up (AU12)</think><answer>Happy.</answer>", "happiness", True, "happiness"),
    ("<answer>sad, maybe angry</answer>", "sadness", True, "sadness"),
    # The FIRST answer counts for evaluation (the reward takes the last one).
    ("<think>x</think><answer>happiness</answer><answer>anger</answer>", "anger", False, "happiness"),
    # No answer tag: the whole output, split on whitespace: first token "I".
    ("I think it is joy", "happiness", False, "other"),
]


def emotion_benchmark(normalize=True):
    texts = [case[0] for case in EMOTION_CASES] + ["<think>a</think><answer>fear</answer>"]
    records = [record(f"r{i}", labels=[case[1]]) for i, case in enumerate(EMOTION_CASES)]
    records.append(record("unlabelled"))  # no label: skipped, not wrong
    return em.score_benchmark(texts, records, get_profile("RAF-DB"), normalize=normalize)


def test_emotion_accuracy_per_class_and_unlabelled_records():
    metrics, scores = emotion_benchmark()
    assert metrics.num_examples == 5
    assert metrics.num_labelled == 4
    assert metrics.emotion_accuracy == pytest.approx(50.0, abs=1e-9)  # 2 of 4
    assert metrics.per_class_accuracy["happiness"] == pytest.approx(50.0, abs=1e-9)
    assert metrics.per_class_accuracy["sadness"] == pytest.approx(100.0, abs=1e-9)
    assert metrics.per_class_accuracy["anger"] == pytest.approx(0.0, abs=1e-9)
    assert metrics.per_class_accuracy["fear"] is None  # no support
    assert metrics.emotion_mean_class_accuracy == pytest.approx(50.0, abs=1e-9)
    assert [s.emotion_correct for s in scores] == [True, True, False, False, None]
    assert [s.predicted_class for s in scores[:4]] == [c[3] for c in EMOTION_CASES]


def test_exact_mode_compares_the_token_as_written():
    metrics, _ = emotion_benchmark(normalize=False)
    # "Happy." != "happiness", "sad" != "sadness": nothing is right without normalisation.
    assert metrics.emotion_accuracy == pytest.approx(0.0, abs=1e-9)


def test_both_readings_are_reported_whichever_one_is_selected():
    for normalize in (True, False):
        metrics, scores = emotion_benchmark(normalize=normalize)
        assert metrics.emotion_comparison == ("normalized" if normalize else "exact")
        assert metrics.emotion_accuracy_normalized == pytest.approx(50.0, abs=1e-9)
        assert metrics.emotion_accuracy_exact == pytest.approx(0.0, abs=1e-9)
        assert metrics.emotion_accuracy == (metrics.emotion_accuracy_normalized if normalize
                                            else metrics.emotion_accuracy_exact)
        assert [s.emotion_correct_exact for s in scores] == [False, False, False, False, None]
        assert [s.emotion_correct_normalized for s in scores] == [True, True, False, False, None]
    # Exactly as written counts for both readings.
    exact, _ = em.score_benchmark(["<answer>anger</answer>", "<answer>Anger</answer>"],
                                  [record("a", labels=["anger"]), record("b", labels=["anger"])],
                                  get_profile("RAF-DB"), normalize=False)
    assert (exact.emotion_accuracy_exact, exact.emotion_accuracy_normalized) == (50.0, 100.0)
    document = exact.to_json()
    assert document["emotion_comparison"] == "exact" and document["emotion_accuracy"] == 50.0


def test_confusion_matrix_rows_true_columns_predicted_with_other():
    metrics, _ = emotion_benchmark()
    assert metrics.confusion_rows == get_profile("RAF-DB").labels
    assert metrics.confusion_columns == (*get_profile("RAF-DB").labels, "other")
    table = {row: dict(zip(metrics.confusion_columns, counts))
             for row, counts in zip(metrics.confusion_rows, metrics.confusion)}
    assert table["happiness"]["happiness"] == 1 and table["happiness"]["other"] == 1
    assert table["sadness"]["sadness"] == 1
    assert table["anger"]["happiness"] == 1
    assert sum(map(sum, metrics.confusion)) == metrics.num_labelled
    # The diagonal is exactly the correct predictions.
    diagonal = sum(metrics.confusion[i][i] for i in range(len(metrics.confusion_rows)))
    assert diagonal == 2
    assert metrics.num_emotion_other == 1


def test_labels_outside_the_profile_get_their_own_row():
    records = [record("a", labels=["contempt"]), record("b", labels=["fear"])]
    metrics, _ = em.score_benchmark(
        ["<answer>contempt</answer>", "<answer>contempt</answer>"], records, get_profile("FER2013")
    )
    assert metrics.confusion_rows[-1] == "contempt"
    assert "contempt" not in get_profile("FER2013").labels
    assert metrics.emotion_accuracy == pytest.approx(50.0, abs=1e-9)
    # For the fear row, a contempt answer is a real class column now, not "other".
    fear = dict(zip(metrics.confusion_columns, metrics.confusion[metrics.confusion_rows.index("fear")]))
    assert fear["contempt"] == 1


@pytest.mark.parametrize(
    "text,label,correct",
    [
        ("<answer> fear;anger </answer>", "fear", True),  # split on semicolons
        ("<answer>\n\nsurprise\n</answer>", "surprise", True),  # leading whitespace skipped
        ("<answer>,happy</answer>", "happiness", True),  # empty first token skipped
        ("<answer>happiness and surprise</answer>", "surprise", False),  # first token only
        ("<ANSWER>fear</ANSWER>", "fear", False),  # tags are case-sensitive: whole text is read
        ("<answer></answer>", "neutral", False),  # nothing left: never correct
        ("", "neutral", False),
        # The first "<answer>" pairs with the first "</answer>": one token "fear<answer>anger".
        ("<answer>fear<answer>anger</answer>", "fear", False),
    ],
)
def test_method_section6_emotion_parsing_edge_cases(text, label, correct):
    metrics, scores = em.score_benchmark([text], [record("x", labels=[label])], get_profile("RAF-DB"))
    assert scores[0].emotion_correct is correct
    assert metrics.emotion_accuracy == pytest.approx(100.0 if correct else 0.0, abs=1e-9)


# ------------------------------------------------------------------------------------- AU F1
DISFA_TEXTS = [
    "<think>AU1 AU4</think><answer>x</answer>",
    "<think>au12, AU25 and AU15</think><answer>x</answer>",
    "no think block, but AU6 is named",  # falls back to the whole output
    "<think>AU5</think><think>AU12</think><answer>x</answer>",  # first think only
]
DISFA_TRUTH = [["AU1", "AU2"], ["AU12", "AU25"], [], ["AU5", "AU12"]]


def test_au_f1_macro_and_micro_by_hand():
    records = [record(f"d{i}", dataset="DISFA", aus=aus) for i, aus in enumerate(DISFA_TRUTH)]
    metrics, scores = em.score_benchmark(DISFA_TEXTS, records, get_profile("DISFA"))
    assert metrics.num_au_scored == 4  # the record with no active AU is a valid negative
    # DISFA's 8 AUs: AU1 F1 1, AU12 2/3 (1 TP, 1 FN), AU25 1; AU2, AU4, AU6, AU9, AU26 are 0.
    assert metrics.au_f1_macro == pytest.approx(100 * (1 + 2 / 3 + 1) / 8, abs=1e-9)
    # Pooled: TP 3 (AU1, AU12, AU25), FP 2 (AU4, AU6), FN 2 (AU2, AU12 of the last record).
    assert metrics.au_f1_micro == pytest.approx(100 * 6 / 10, abs=1e-9)
    assert metrics.au_eval.per_au["AU12"] == pytest.approx(100 * 2 / 3, abs=1e-9)
    assert metrics.au_eval.support["AU12"] == 2
    # Over all ground-truth AUs {1, 2, 5, 12, 25}: AU5 now counts (1 TP); AU4/AU6 are outside.
    assert metrics.au_all.au_list == ("AU1", "AU2", "AU5", "AU12", "AU25")
    assert metrics.au_all.macro == pytest.approx(100 * (1 + 0 + 1 + 2 / 3 + 1) / 5, abs=1e-9)
    assert metrics.au_all.micro == pytest.approx(100 * 8 / 10, abs=1e-9)
    assert scores[1].predicted_aus == ("AU12", "AU15", "AU25")
    assert scores[3].predicted_aus == ("AU5",)
    assert metrics.emotion_accuracy is None  # DISFA has no emotion labels
    assert metrics.confusion_rows == ()


def test_au01_is_not_au1():
    records = [record("d", dataset="DISFA", aus=["AU1"])]
    metrics, _ = em.score_benchmark(["<think>AU01</think>"], records, get_profile("DISFA"))
    assert metrics.au_eval.per_au["AU1"] == pytest.approx(0.0, abs=1e-9)


def test_mixed_benchmark_scores_aus_only_on_au_annotated_records():
    records = [
        record("fer", dataset="FER2013", labels=["anger"]),  # emotion-only: no AU annotation
        record("bp4d", dataset="BP4D", aus=["AU4"]),
        record("bp4d-none", dataset="BP4D"),  # AU dataset, nothing active: a negative
        record("custom", dataset="my-set", aus=["AU9"]),  # unknown source that lists AUs
        record("custom-none", dataset="my-set"),  # unknown source without AUs: not annotated
    ]
    texts = ["<think>AU4</think>", "<think>AU4</think>", "<think>AU4</think>",
             "<think>AU9</think>", "<think>AU9</think>"]
    metrics, scores = em.score_benchmark(texts, records, get_profile("FEA-20K"))
    assert [s.au_scored for s in scores] == [False, True, True, True, False]
    # FEA-20K scores the AUs present in the (scored) ground truth: AU4 and AU9.
    assert metrics.au_eval.au_list == ("AU4", "AU9")
    # AU4: TP 1, FP 1 (bp4d-none) -> 2/3; AU9: TP 1 -> 1.
    assert metrics.au_f1_macro == pytest.approx(100 * (2 / 3 + 1) / 2, abs=1e-9)
    assert metrics.au_f1_micro == pytest.approx(100 * 4 / 5, abs=1e-9)


def test_reference_scoring_counts_every_record_over_the_files_ground_truth_aus():
    """The authors' evaluation: every record of the file (an emotion-only row's empty AU list is a
    negative), binarised over the union of the ground-truth AUs, macro over AUs with a positive."""
    records = [
        record("fer", dataset="FER2013", labels=["anger"]),
        record("bp4d", dataset="BP4D", aus=["AU4"]),
        record("bp4d-none", dataset="BP4D"),
        record("custom", dataset="my-set", aus=["AU9"]),
        record("custom-none", dataset="my-set"),
    ]
    texts = ["<think>AU4</think>", "<think>AU4</think>", "<think>AU4 AU12</think>",
             "<think>AU9</think>", "<think>AU9</think>"]
    metrics, _ = em.score_benchmark(texts, records, get_profile("FEA-20K"))
    assert metrics.au_reference.au_list == ("AU4", "AU9")  # AU12 is in no ground truth: ignored
    # AU4: TP 1, FP 2 (fer and bp4d-none) -> 2 / 4; AU9: TP 1, FP 1 (custom-none) -> 2 / 3.
    assert metrics.au_f1_macro_reference == pytest.approx(100 * (1 / 2 + 2 / 3) / 2, abs=1e-9)
    assert metrics.au_f1_micro_reference == pytest.approx(100 * 4 / 7, abs=1e-9)
    # Our fixed reading leaves the rows without AU annotation out: AU4 2/3, AU9 1.
    assert metrics.au_f1_macro == pytest.approx(100 * (2 / 3 + 1) / 2, abs=1e-9)
    document = metrics.to_json()
    assert document["au_f1_macro_reference"] == metrics.au_f1_macro_reference
    assert document["au_reference_scoring"]["macro_over"] == ["AU4", "AU9"]
    # No ground-truth AU anywhere: no reference AU score.
    none, _ = em.score_benchmark(["<think>AU4</think>"], [record("x", labels=["anger"])], get_profile("RAF-DB"))
    assert none.au_reference is None and none.au_f1_macro_reference is None


def test_reference_macro_skips_aus_without_a_positive():
    scores = [em.score_example(text, record(f"d{i}", dataset="DISFA", aus=aus), classes=(), au_scored=True)
              for i, (text, aus) in enumerate([("<think>AU1 AU2</think>", ["AU1"]), ("<think>AU2</think>", [])])]
    skipping = em._au_scores(scores, ["AU1", "AU2", "AU4"], skip_without_positives=True)
    fixed = em._au_scores(scores, ["AU1", "AU2", "AU4"])
    assert skipping.macro_over == ("AU1",) and skipping.macro == pytest.approx(100.0)
    assert fixed.macro_over == ("AU1", "AU2", "AU4") and fixed.macro == pytest.approx(100 / 3)
    assert skipping.micro == fixed.micro == pytest.approx(100 * 2 / 4)  # TP 1, FP 2


def test_emotion_only_benchmark_has_no_au_metrics():
    metrics, _ = em.score_benchmark(
        ["<think>AU12</think><answer>happiness</answer>"],
        [record("x", dataset="FER2013", labels=["happiness"], aus=["AU12"])],
        get_profile("FER2013"),
    )
    assert metrics.au_eval is None and metrics.au_f1_macro is None and metrics.num_au_scored == 0


# ------------------------------------------------------------------------ form, ROUGE, REGE
def test_format_valid_and_unparseable_counts():
    texts = [
        "<think>a</think>\n<answer>fear</answer>",  # valid
        " <think>a</think><answer>fear</answer>",  # leading space: invalid format, parseable
        "<think>a</think>",  # no answer
        "fear",  # neither block: unparseable
    ]
    metrics, scores = em.score_benchmark(
        texts, [record(f"r{i}", labels=["fear"]) for i in range(4)], get_profile("RAF-DB")
    )
    assert metrics.format_valid == pytest.approx(25.0, abs=1e-9)
    assert metrics.num_format_invalid == 3
    assert metrics.num_unparseable == 1 and scores[3].unparseable
    assert metrics.num_missing_answer == 2
    assert metrics.num_missing_think == 1
    # "<think>a</think>" has no answer: the whole text's first token is "<think>a</think>".
    assert metrics.emotion_accuracy == pytest.approx(75.0, abs=1e-9)


def test_rouge_l_with_stemming_and_rege():
    records = [
        record("a", labels=["fear"], description="the cat sat on the mat"),
        record("b", labels=["fear"], description="cats running"),
        record("c", labels=["fear"]),  # no reference: not in the ROUGE mean
    ]
    texts = ["the cat on the mat", "cat run", "fear"]
    metrics, scores = em.score_benchmark(texts, records, get_profile("RAF-DB"))
    # LCS 5 of 5 predicted and 6 reference tokens: F = 2 * 1 * 5/6 / (1 + 5/6) = 10/11.
    assert scores[0].rouge_l == pytest.approx(100 * 10 / 11, abs=1e-9)
    assert scores[1].rouge_l == pytest.approx(100.0, abs=1e-9)  # Porter stemming
    assert scores[2].rouge_l is None
    assert metrics.num_with_reference == 2
    assert metrics.rouge_l == pytest.approx((100 * 10 / 11 + 100) / 2, abs=1e-9)
    # Only the third answer is right: accuracy 1/3.
    assert metrics.rege_emotion == pytest.approx(100 / 3 + metrics.rouge_l, abs=1e-9)
    assert metrics.rege_au is None


def test_rouge_off_or_without_references_is_none():
    recs = [record("a", labels=["fear"], description="fear")]
    metrics, _ = em.score_benchmark(["fear"], recs, get_profile("RAF-DB"), rouge=False)
    assert metrics.rouge_l is None and metrics.rege_emotion is None


def test_metrics_json_has_the_headline_keys():
    metrics, _ = emotion_benchmark()
    document = metrics.to_json()
    for key in ("emotion_accuracy", "au_f1_micro", "au_f1_macro", "format_valid", "rouge_l",
                "num_examples", "num_unparseable"):
        assert key in document
    assert document["num_examples"] == 5


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="2 predictions for 1 records"):
        em.score_benchmark(["a", "b"], [record("a")], get_profile("RAF-DB"))
    with pytest.raises(TypeError, match="prediction 0 is NoneType"):
        em.score_benchmark([None], [record("a")], get_profile("RAF-DB"))
