"""FEA JSONL schema: validation errors with file/line/field, reading, reports, writing, paths."""

import dataclasses
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.fea.records import (
    FEARecord,
    ImagePathError,
    RecordError,
    RecordProblem,
    parse_record,
    read_jsonl,
    resolve_image_path,
    write_jsonl,
)


def row(**changes):
    base = {
        "id": "raf-0001",
        "dataset": "RAF-DB",
        "image": "raf/0001.jpg",
        "question": "<image>What emotion is shown?",
        "AUs": ["AU6", "AU12"],
        "labels": ["Happy"],
        "description": "<think>(AU6) (AU12)</think><answer>happiness</answer>",
        "meta_info": {"source": "test"},
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not _DROP}


_DROP = object()


def write_lines(path, lines):
    path.write_bytes(
        b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    )
    return path


# ------------------------------------------------------------------------------ parse_record
def test_parse_a_full_record():
    record = parse_record(row())
    assert record == FEARecord(
        id="raf-0001",
        dataset="RAF-DB",
        images=("raf/0001.jpg",),
        question="<image>What emotion is shown?",
        aus=("AU6", "AU12"),
        labels=("happiness",),
        description="<think>(AU6) (AU12)</think><answer>happiness</answer>",
        meta_info={"source": "test"},
        is_valid=True,
    )
    assert record.label == "happiness"
    assert record.image == "raf/0001.jpg"


def test_optional_fields_default_and_nulls_mean_empty():
    record = parse_record(
        row(question=_DROP, description=_DROP, meta_info=_DROP, AUs=None, labels=None)
    )
    assert record.question == "" and record.description == "" and record.meta_info == {}
    assert record.aus == () and record.labels == () and record.label is None
    assert record.is_valid is True
    assert parse_record(row(meta_info=None)).meta_info == {}


def test_weights_default_to_one_and_round_trip():
    assert parse_record(row()).weights == 1.0
    assert parse_record(row(weights=None)).weights == 1.0
    assert parse_record(row(weights=0)).weights == 0.0
    weighted = parse_record(row(weights=0.375))
    assert weighted.weights == 0.375
    # Written back only when it is not the default, so existing files (and their hashes) stay as they were.
    assert "weights" not in parse_record(row()).to_json()
    assert weighted.to_json()["weights"] == 0.375
    assert parse_record(weighted.to_json()) == weighted


def test_bad_weights_in_a_file_name_file_line_and_field(tmp_path):
    path = write_lines(tmp_path / "rl.jsonl", [json.dumps(row(id="a")), json.dumps(row(id="b", weights="high"))])
    with pytest.raises(RecordError) as caught:
        read_jsonl(path)
    assert str(caught.value).startswith(f"{path}:2: field 'weights': expected a number >= 0, got str")
    kept = read_jsonl(path, on_error="skip")
    assert [r.id for r in kept.records] == ["a"] and kept.problems[0].field == "weights"


def test_source_au_codes_and_label_spellings_are_canonicalised():
    record = parse_record(row(AUs=["12C", "L6", "AU06", "AU12"], labels=["SURPRISED.", "fear"]))
    assert record.aus == ("AU6", "AU12")
    assert record.labels == ("surprise", "fear")
    assert record.label == "surprise"


def test_multiple_images_round_trip_as_a_list():
    record = parse_record(row(image=["a.jpg", "b.jpg"]))
    assert record.images == ("a.jpg", "b.jpg")
    assert record.to_json()["image"] == ["a.jpg", "b.jpg"]
    assert parse_record(row()).to_json()["image"] == "raf/0001.jpg"


def test_to_json_round_trips_through_parse():
    record = parse_record(
        row(image=["x/1.png"], AUs=["AU1", "AU2"], labels=["surprise"], is_valid=False)
    )
    again = parse_record(json.loads(json.dumps(record.to_json())))
    assert again == record
    assert record.to_json()["AUs"] == ["AU1", "AU2"]


def test_records_are_frozen_and_replace_makes_a_copy():
    record = parse_record(row())
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.description = "x"
    changed = record.replace(description="new")
    assert changed.description == "new" and record.description != "new"


@pytest.mark.parametrize(
    "obj, field, fragment",
    [
        ([1, 2], None, "expected a JSON object, got list"),
        ("text", None, "expected a JSON object, got str"),
        (row(id=_DROP), "id", "missing required field"),
        (row(dataset=_DROP), "dataset", "missing required field"),
        (row(image=_DROP), "image", "missing required field"),
        (row(AUs=_DROP), "AUs", "missing required field"),
        (row(labels=_DROP), "labels", "missing required field"),
        (row(id=7), "id", "expected a string, got int"),
        (row(id="  "), "id", "empty id"),
        (row(dataset=None), "dataset", "expected a string, got null"),
        (row(image=3), "image", "expected a string or a list of strings, got int"),
        (row(image=[]), "image", "empty list"),
        (row(image=["a.jpg", 4]), "image", "item 1 is int"),
        (row(image=""), "image", "item 0 is an empty path"),
        (row(question=["q"]), "question", "expected a string, got list"),
        (row(AUs="AU1+AU2"), "AUs", "expected a list of AU codes, got str"),
        (row(AUs=[12]), "AUs", "item 0 is int"),
        (row(AUs=["AU1", "AUx"]), "AUs", "bad AU code 'AUx'"),
        (row(AUs=["AU3"]), "AUs", "'AU3'"),
        (row(labels="happy"), "labels", "expected a list of emotions, got str"),
        (row(labels=[None]), "labels", "item 0 is null"),
        (row(labels=["happyy"]), "labels", "unknown emotion 'happyy'"),
        (row(description=1.5), "description", "expected a string, got float"),
        (row(meta_info=[]), "meta_info", "expected an object, got list"),
        (row(is_valid="false"), "is_valid", "expected true or false, got str"),
        (row(is_valid=0), "is_valid", "expected true or false, got int"),
        (row(weights="0.5"), "weights", "expected a number >= 0, got str"),
        (row(weights=True), "weights", "expected a number >= 0, got bool"),
        (row(weights=[1.0]), "weights", "expected a number >= 0, got list"),
        (row(weights=-0.25), "weights", "expected a finite number >= 0, got -0.25"),
        (row(weights=float("nan")), "weights", "expected a finite number >= 0, got nan"),
        (row(weights=float("inf")), "weights", "expected a finite number >= 0, got inf"),
    ],
)
def test_parse_errors_name_field_and_reason(obj, field, fragment):
    with pytest.raises(RecordError) as caught:
        parse_record(obj, file="train.jsonl", line=17)
    problem = caught.value.problem
    assert (problem.file, problem.line, problem.field) == ("train.jsonl", 17, field)
    assert fragment in problem.reason
    assert str(caught.value) == str(problem)
    assert str(problem).startswith("train.jsonl:17: ")
    assert isinstance(caught.value, ValueError)


def test_problem_string_format():
    problem = RecordProblem("data.jsonl", 17, "labels", "unknown emotion 'happyy'")
    assert str(problem) == "data.jsonl:17: field 'labels': unknown emotion 'happyy'"
    assert str(RecordProblem("d.jsonl", 3, None, "malformed JSON")) == "d.jsonl:3: malformed JSON"
    assert "\n" not in str(problem)


def test_non_strict_labels_keep_unknown_classes_cleaned():
    record = parse_record(row(labels=["Happy", "  Confused. "]), strict_labels=False)
    assert record.labels == ("happiness", "confused")
    with pytest.raises(RecordError, match="empty label"):
        parse_record(row(labels=["..."]), strict_labels=False)


# --------------------------------------------------------------------------------- read_jsonl
@pytest.fixture
def messy_file(tmp_path):
    lines = [
        json.dumps(row(id="a")),  # 1 good
        "",  # 2 blank
        "   ",  # 3 blank
        '{"id": "b", "dataset": "RAF-DB"',  # 4 malformed JSON
        "[1, 2]",  # 5 not an object
        json.dumps(row(id="c", labels=["happyy"])),  # 6 unknown emotion
        json.dumps(row(id="d", AUs=["AU1", "x7"])),  # 7 junk AU
        b'{"id": "e", "dataset": "\xff\xfe"}',  # 8 not UTF-8
        json.dumps(row(id="a")),  # 9 duplicate id
        json.dumps(row(id="f", is_valid=False, labels=["bad"])),  # 10 skipped before validation
        json.dumps(row(id="g", is_valid=False)),  # 11 skipped, not an error
        json.dumps(row(id="h", image=_DROP)),  # 12 missing field
        json.dumps(row(id="i", AUs={"AU1": 1})),  # 13 wrong type
        json.dumps(row(id="j", labels=["Sad"], image=["x.jpg", "y.jpg"])),  # 14 good
    ]
    return write_lines(tmp_path / "data.jsonl", lines)


EXPECTED_PROBLEMS = [
    (4, None, "malformed JSON"),
    (5, None, "expected a JSON object, got list"),
    (6, "labels", "unknown emotion 'happyy'"),
    (7, "AUs", "'x7'"),
    (8, None, "not valid UTF-8: byte 0xff"),
    (9, "id", "duplicate id 'a' (first seen on line 1)"),
    (12, "image", "missing required field"),
    (13, "AUs", "expected a list of AU codes, got dict"),
]


def test_skip_mode_counts_every_row_and_writes_the_report(messy_file, tmp_path):
    report_path = tmp_path / "reports" / "read.json"
    result = read_jsonl(messy_file, on_error="skip", report_path=report_path)
    assert [record.id for record in result.records] == ["a", "j"]
    assert result.records[1].labels == ("sadness",)
    assert result.lines == 14
    assert result.blank_lines == 2
    assert result.skipped_invalid == 2 and result.invalid_lines == (10, 11)
    assert result.bad_rows == len(EXPECTED_PROBLEMS)
    assert (
        len(result.records) + result.blank_lines + result.skipped_invalid + result.bad_rows
        == result.lines
    )
    for problem, (line, field, fragment) in zip(result.problems, EXPECTED_PROBLEMS, strict=True):
        assert (problem.file, problem.line, problem.field) == (str(messy_file), line, field)
        assert fragment in problem.reason, (problem, fragment)

    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["bad_rows"] == len(EXPECTED_PROBLEMS) and report["records"] == 2
    assert (
        report["blank_lines"] == 2
        and report["skipped_invalid"] == 2
        and report["invalid_lines"] == [10, 11]
    )
    assert [p["line"] for p in report["problems"]] == [line for line, _, _ in EXPECTED_PROBLEMS]
    assert [p["field"] for p in report["problems"]] == [field for _, field, _ in EXPECTED_PROBLEMS]
    assert report["summary"] == result.summary()

    summary = result.summary()
    assert "\n" not in summary
    for fragment in (
        "14 lines",
        "2 records",
        "2 blank",
        "2 skipped",
        "8 bad rows",
        str(report_path),
    ):
        assert fragment in summary


def test_raise_mode_stops_at_the_first_problem_and_still_reports(messy_file, tmp_path):
    report_path = tmp_path / "read.json"
    with pytest.raises(RecordError) as caught:
        read_jsonl(messy_file, report_path=report_path)
    assert caught.value.problem.line == 4
    assert str(caught.value).startswith(f"{messy_file}:4: malformed JSON")
    report = json.loads(report_path.read_text())
    assert report["bad_rows"] == 1 and report["problems"][0]["line"] == 4


@pytest.mark.parametrize(
    "line, field, fragment",
    [
        (b'{"id": "x",', None, "malformed JSON"),
        (b'"just a string"', None, "expected a JSON object, got str"),
        (
            b'{"id": "x", "dataset": "D", "image": "a.jpg", "AUs": [], "labels": ["\xc3"]}',
            None,
            "UTF-8",
        ),
        (json.dumps(row(labels=["joyous"])).encode(), "labels", "unknown emotion 'joyous'"),
        (json.dumps(row(AUs=["AU1", "zz"])).encode(), "AUs", "'zz'"),
        (json.dumps(row(question=5)).encode(), "question", "got int"),
        (json.dumps(row(dataset=_DROP)).encode(), "dataset", "missing required field"),
    ],
)
def test_each_bad_input_kind_raises_with_its_line(tmp_path, line, field, fragment):
    path = write_lines(tmp_path / "one.jsonl", [json.dumps(row(id="ok")), "", line])
    with pytest.raises(RecordError) as caught:
        read_jsonl(path)
    problem = caught.value.problem
    assert (problem.line, problem.field) == (3, field)
    assert fragment in problem.reason


def test_duplicate_id_raises_on_the_later_line(tmp_path):
    path = write_lines(
        tmp_path / "dup.jsonl",
        [json.dumps(row(id="x")), json.dumps(row(id="y")), json.dumps(row(id="x"))],
    )
    with pytest.raises(
        RecordError, match=r"dup.jsonl:3: field 'id': duplicate id 'x' \(first seen on line 1\)"
    ):
        read_jsonl(path)


def test_clean_file_reads_fully_with_bom_crlf_and_line_separator(tmp_path):
    first = json.dumps(row(id="1", description="line\u2028sep"), ensure_ascii=False).encode()
    path = tmp_path / "clean.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf" + first + b"\r\n" + json.dumps(row(id="2")).encode()
    )  # no final newline
    result = read_jsonl(path)
    assert [r.id for r in result.records] == ["1", "2"]
    assert result.records[0].description == "line\u2028sep"
    assert result.problems == () and result.lines == 2
    assert "0 bad rows" in result.summary()


def test_bad_on_error_value(tmp_path):
    path = write_lines(tmp_path / "x.jsonl", [json.dumps(row())])
    with pytest.raises(ValueError, match="'ignore'"):
        read_jsonl(path, on_error="ignore")


def test_image_root_checks_paths_while_reading(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            json.dumps(row(id="ok", image="a/b.jpg")),
            json.dumps(row(id="up", image="../secret.jpg")),
            json.dumps(row(id="abs", image=["ok.jpg", "/etc/passwd"])),
        ],
    )
    result = read_jsonl(path, on_error="skip", image_root=root)
    assert [r.id for r in result.records] == ["ok"]
    assert [(p.line, p.field) for p in result.problems] == [(2, "image"), (3, "image")]
    assert "climbs out" in result.problems[0].reason and f"{path}:2" in result.problems[0].reason
    assert "absolute" in result.problems[1].reason


# -------------------------------------------------------------------------------- write_jsonl
def test_write_then_read_round_trip(tmp_path):
    records = [
        parse_record(row(id=f"r{i}", labels=[emotion])) for i, emotion in enumerate(EMOTIONS)
    ]
    path = tmp_path / "out" / "records.jsonl"
    assert write_jsonl(records, path) == len(EMOTIONS)
    again = read_jsonl(path)
    assert again.records == tuple(records)
    assert sorted(os.listdir(path.parent)) == ["records.jsonl"], "no temporary file left behind"


def test_write_accepts_mappings_and_validates_them(tmp_path):
    path = tmp_path / "m.jsonl"
    write_jsonl([row(id="m1")], path)
    assert read_jsonl(path).records[0].labels == ("happiness",)
    with pytest.raises(RecordError, match="labels"):
        write_jsonl([row(id="m2", labels=["happyy"])], path)
    assert read_jsonl(path).records[0].id == "m1", "a failed write leaves the old file intact"


def test_write_is_atomic_when_serialisation_fails(tmp_path):
    path = tmp_path / "atomic.jsonl"
    write_jsonl([parse_record(row(id="old"))], path)
    unserialisable = parse_record(row(id="new", meta_info={"x": object()}))
    with pytest.raises(TypeError):
        write_jsonl([parse_record(row(id="first")), unserialisable], path)
    assert [r.id for r in read_jsonl(path).records] == ["old"]
    assert os.listdir(tmp_path) == ["atomic.jsonl"]


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(
    _TEXT,
    _TEXT,
    st.lists(st.sampled_from(["AU1", "AU12", "AU45", "AU26"]), max_size=4),
    st.lists(st.sampled_from(EMOTIONS), max_size=2),
    st.booleans(),
)
def test_round_trip_of_arbitrary_text_fields(
    tmp_path_factory, question, description, aus, labels, valid
):
    record = parse_record(
        row(
            id="x",
            question=question,
            description=description,
            AUs=aus,
            labels=labels,
            is_valid=valid,
        )
    )
    path = tmp_path_factory.mktemp("rt") / "r.jsonl"
    write_jsonl([record], path)
    result = read_jsonl(path)
    if valid:
        assert result.records == (record,)
    else:
        assert result.records == () and result.skipped_invalid == 1


# ------------------------------------------------------------------------- resolve_image_path
def test_resolve_inside_root(tmp_path):
    assert resolve_image_path(tmp_path, "a/b.jpg") == tmp_path / "a" / "b.jpg"
    assert resolve_image_path(tmp_path, "a/../b.jpg") == tmp_path / "b.jpg"  # stays inside
    assert resolve_image_path(tmp_path, "./c.jpg") == tmp_path / "c.jpg"
    assert not (tmp_path / "a").exists(), "resolving does not create or open anything"


@pytest.mark.parametrize(
    "relative, fragment",
    [
        ("../x.jpg", "climbs out"),
        ("a/../../x.jpg", "climbs out"),
        ("..", "climbs out"),
        ("/etc/passwd", "absolute"),
        ("C:\\images\\x.jpg", "absolute"),
        ("", "empty"),
        ("a\x00b", "NUL"),
    ],
)
def test_resolve_rejects_escapes(tmp_path, relative, fragment):
    with pytest.raises(ImagePathError) as caught:
        resolve_image_path(tmp_path, relative, where="train.jsonl:5")
    message = str(caught.value)
    assert message.startswith("train.jsonl:5: ")
    assert fragment in message


def test_resolve_rejects_symlinks_out_of_the_root(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "x.jpg").write_bytes(b"")
    os.symlink(outside, root / "link_dir")
    os.symlink(outside / "x.jpg", root / "link_file.jpg")
    os.symlink(root / "inner", root / "inside_link")
    for relative in ("link_dir/x.jpg", "link_file.jpg"):
        with pytest.raises(ImagePathError, match="symlink"):
            resolve_image_path(root, relative)
    assert resolve_image_path(root, "inside_link/y.jpg") == root / "inside_link" / "y.jpg"


def test_resolve_accepts_a_root_that_is_itself_a_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    assert resolve_image_path(tmp_path / "alias", "x.jpg") == tmp_path / "alias" / "x.jpg"


def test_invalid_rows_are_skipped_before_validation_even_in_raise_mode(tmp_path):
    path = write_lines(
        tmp_path / "v.jsonl",
        [json.dumps({"id": "", "is_valid": False, "AUs": "junk"}), json.dumps(row(id="kept"))],
    )
    result = read_jsonl(path)
    assert [r.id for r in result.records] == ["kept"]
    assert result.invalid_lines == (1,) and result.problems == ()
    # "is_valid" must still be a boolean when present on a row that is read
    bad = write_lines(tmp_path / "w.jsonl", [json.dumps(row(is_valid="no"))])
    with pytest.raises(RecordError, match="is_valid"):
        read_jsonl(bad)


def test_record_error_survives_pickling_with_its_problem():
    import pickle

    from facialr1_jax.fea.records import RecordError, RecordProblem

    error = RecordError(RecordProblem("data.jsonl", 17, "labels", "unknown emotion 'happyy'"))
    clone = pickle.loads(pickle.dumps(error))
    assert isinstance(clone, RecordError)
    assert clone.problem == error.problem
    assert str(clone) == str(error)
