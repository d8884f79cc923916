"""data.sources: FEA JSONL + image root as a validated grain source; every bad input named.

Each bad-input test builds a three-row file whose middle row (line 2) is bad in one way, then
checks both policies: "raise" stops with a RecordError naming the file, line 2 and the field;
"skip" keeps the two good rows and counts and reports the bad one. Images are generated here.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import struct
import zlib
from pathlib import Path

import grain
import numpy as np
import pytest
from PIL import Image

from facialr1_jax.data import images as image_lib
from facialr1_jax.data import sources
from facialr1_jax.fea.records import RecordError


def _picture(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BILINEAR)


def _jpeg(seed: int, size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    _picture(seed, size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _row(record_id: str, image: str = None, **overrides) -> dict:
    row = {
        "id": record_id,
        "dataset": "RAF-DB",
        "image": image or f"raf/{record_id}.jpg",
        "question": "<image>What emotion does this face show?",
        "AUs": ["AU6", "AU12"],
        "labels": ["happy"],
        "description": "<think>cheeks raised (AU6), lip corners pulled (AU12)</think>"
                       "<answer>happiness</answer>",
        "meta_info": {"source": "test"},
    }
    row.update(overrides)
    return row


class Fixture:
    """An image root with three good images and a JSONL file around one (bad) middle line."""

    def __init__(self, tmp_path: Path):
        self.root = tmp_path / "images"
        (self.root / "raf").mkdir(parents=True)
        for name, seed in (("good1", 1), ("mid", 10), ("good2", 2)):
            (self.root / "raf" / f"{name}.jpg").write_bytes(_jpeg(seed))
        self.jsonl = tmp_path / "data.jsonl"
        self.report = tmp_path / "report.json"

    def write(self, middle: bytes | str | dict) -> Path:
        if isinstance(middle, dict):
            middle = json.dumps(middle)
        if isinstance(middle, str):
            middle = middle.encode("utf-8")
        good1 = json.dumps(_row("good1")).encode()
        good2 = json.dumps(_row("good2")).encode()
        self.jsonl.write_bytes(good1 + b"\n" + middle + b"\n" + good2 + b"\n")
        return self.jsonl

    def image(self, relative: str, data: bytes) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def assert_bad_middle_row(self, field: str | None, kind: str, reason_part: str, **kwargs):
        with pytest.raises(RecordError) as caught:
            sources.FEAJsonlSource(self.jsonl, self.root, on_error="raise", **kwargs)
        problem = caught.value.problem
        assert (problem.file, problem.line, problem.field) == (str(self.jsonl), 2, field)
        assert reason_part in problem.reason
        assert f"{self.jsonl}:2" in str(caught.value)

        source = sources.FEAJsonlSource(self.jsonl, self.root, on_error="skip",
                                        report_path=self.report, **kwargs)
        assert [source[i]["id"] for i in range(len(source))] == ["good1", "good2"]
        assert [source[i]["line"] for i in range(len(source))] == [1, 3]
        assert len(source.problems) == 1 and source.problems[0].kind == kind
        report = json.loads(self.report.read_text())
        assert report["usable_records"] == 2 and report["bad_rows"] == 1
        assert report["problems_by_kind"] == {kind: 1}
        (entry,) = report["problems"]
        assert (entry["file"], entry["line"], entry["field"], entry["kind"]) == (
            str(self.jsonl), 2, field, kind)
        assert reason_part in entry["reason"]
        return source


@pytest.fixture
def fixture(tmp_path) -> Fixture:
    return Fixture(tmp_path)


# ----------------------------------------------------------------------------- good data


def test_reads_records_and_images_in_every_decode_mode(fixture):
    fixture.image("raf/sub/mid.jpg", _jpeg(3, size=(90, 70)))
    fixture.write(_row("mid", image="raf/sub/mid.jpg", labels=["Surprised"], AUs=["1", "L2"]))
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root)
    assert len(source) == 3
    element = source[1]
    assert (element["id"], element["line"], element["dataset"]) == ("mid", 2, "RAF-DB")
    assert element["record"].labels == ("surprise",)  # normalised on ingest
    assert element["record"].aus == ("AU1", "AU2")
    assert element["image_bytes"] == ((fixture.root / "raf/sub/mid.jpg").read_bytes(),)

    decoded = sources.FEAJsonlSource(fixture.jsonl, fixture.root, decode="image")[1]
    assert decoded["images"][0].mode == "RGB" and decoded["images"][0].size == (90, 70)

    config = image_lib.ImageConfig(min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64)
    patched = sources.FEAJsonlSource(fixture.jsonl, fixture.root, decode="patches",
                                     image_config=config)[1]
    expected_pixels, expected_grid = config.preprocess(fixture.root / "raf/sub/mid.jpg")
    np.testing.assert_array_equal(patched["pixel_values"], expected_pixels)
    np.testing.assert_array_equal(patched["image_grid_thw"], expected_grid[None])


def test_line_numbers_survive_blank_invalid_and_bad_rows(fixture):
    rows = [
        json.dumps(_row("good1")),
        "",
        json.dumps(_row("hidden", is_valid=False)),
        "{broken",
        "   ",
        json.dumps(_row("good2")),
    ]
    fixture.jsonl.write_text("\n".join(rows) + "\n")
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root, on_error="skip")
    assert [(source[i]["id"], source[i]["line"]) for i in range(len(source))] == [
        ("good1", 1), ("good2", 6)]
    assert source.scan.skipped_invalid == 1 and source.scan.blank_lines == 2
    assert [(p.problem.line, p.kind) for p in source.problems] == [(4, "row")]


def test_multi_image_records_and_negative_index(fixture):
    fixture.write(_row("pair", image=["raf/good1.jpg", "raf/good2.jpg"]))
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root, decode="patches")
    element = source[1]
    assert element["image_grid_thw"].shape == (2, 3)
    assert element["pixel_values"].shape[0] == int(np.prod(element["image_grid_thw"], 1).sum())
    assert source[-1]["id"] == "good2"
    with pytest.raises(IndexError):
        source[3]


def test_source_pickles_and_feeds_grain(fixture):
    fixture.write(_row("mid", image="raf/good1.jpg"))
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root, decode="patches")
    clone = pickle.loads(pickle.dumps(source))  # what grain worker processes receive
    assert len(clone) == 3 and clone[2]["id"] == "good2"
    dataset = grain.MapDataset.source(source).map(lambda e: (e["id"], e["pixel_values"].shape))
    assert [item[0] for item in dataset] == ["good1", "mid", "good2"]


def test_unknown_policy_and_check_level_are_rejected(fixture):
    fixture.write(_row("mid"))
    with pytest.raises(ValueError, match="on_error must be one of"):
        sources.FEAJsonlSource(fixture.jsonl, fixture.root, on_error="ignore")
    with pytest.raises(ValueError, match="image_check must be one of"):
        sources.FEAJsonlSource(fixture.jsonl, fixture.root, image_check="deep")
    with pytest.raises(FileNotFoundError, match="image root"):
        sources.FEAJsonlSource(fixture.jsonl, fixture.root / "nope")


# ------------------------------------------------------------------------------ bad records


def test_malformed_json_line(fixture):
    fixture.write('{"id": "mid", "dataset": "RAF-DB", "image": ')
    fixture.assert_bad_middle_row(None, "row", "malformed JSON")


def test_missing_field(fixture):
    row = _row("mid")
    del row["labels"]
    fixture.write(row)
    fixture.assert_bad_middle_row("labels", "labels", "missing required field")


def test_mistyped_field(fixture):
    fixture.write(_row("mid", AUs="AU6, AU12"))
    fixture.assert_bad_middle_row("AUs", "AUs", "expected a list")


def test_unknown_emotion(fixture):
    fixture.write(_row("mid", labels=["bemused"]))
    fixture.assert_bad_middle_row("labels", "labels", "unknown emotion 'bemused'")


def test_label_outside_the_dataset_profile(fixture):
    # contempt is an emotion, but not one of RAF-DB's seven classes.
    fixture.write(_row("mid", labels=["contemptuous"]))
    fixture.assert_bad_middle_row("labels", "labels:profile", "not an emotion of RAF-DB")
    # The profile check can be turned off for data sets with their own label sets.
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root, check_profiles=False)
    assert source[1]["record"].label == "contempt"


def test_junk_au_code(fixture):
    fixture.write(_row("mid", AUs=["AU6", "eyebrow!"]))
    fixture.assert_bad_middle_row("AUs", "AUs", "bad AU code 'eyebrow!'")


def test_non_utf8_text(fixture):
    fixture.write(b'{"id": "mid", "question": "caf\xe9"}')
    fixture.assert_bad_middle_row(None, "row", "not valid UTF-8")


# ------------------------------------------------------------------------------- bad images


def test_missing_image(fixture):
    fixture.write(_row("mid", image="raf/absent.jpg"))
    fixture.assert_bad_middle_row("image", "image:missing", "'raf/absent.jpg': image file does not")


def test_zero_byte_image(fixture):
    fixture.image("raf/empty.jpg", b"")
    fixture.write(_row("mid", image="raf/empty.jpg"))
    fixture.assert_bad_middle_row("image", "image:empty", "0 bytes")


def test_truncated_image(fixture):
    encoded = _jpeg(4, size=(200, 160))
    fixture.image("raf/cut.jpg", encoded[: len(encoded) * 3 // 4])
    fixture.write(_row("mid", image="raf/cut.jpg"))
    fixture.assert_bad_middle_row("image", "image:truncated", "truncated")


def test_truncated_image_passes_a_header_check_but_fails_at_read_time(fixture):
    encoded = _jpeg(4, size=(200, 160))
    fixture.image("raf/cut.jpg", encoded[: len(encoded) * 3 // 4])
    fixture.write(_row("mid", image="raf/cut.jpg"))
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root, image_check="header",
                                    decode="patches")
    assert len(source) == 3
    with pytest.raises(RecordError) as caught:
        source[1]
    assert (caught.value.problem.line, caught.value.problem.field) == (2, "image")
    assert "truncated" in str(caught.value)


def test_corrupt_image(fixture):
    buffer = io.BytesIO()
    _picture(5, (120, 90)).save(buffer, "PNG")
    scrambled = bytearray(buffer.getvalue())
    start = scrambled.index(b"IDAT") + 20
    scrambled[start:start + 64] = bytes(range(64))
    fixture.image("raf/scrambled.png", bytes(scrambled))
    fixture.write(_row("mid", image="raf/scrambled.png"))
    with pytest.raises(RecordError) as caught:
        sources.FEAJsonlSource(fixture.jsonl, fixture.root)
    assert caught.value.problem.field == "image" and caught.value.problem.line == 2
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root, on_error="skip")
    assert len(source) == 2
    assert source.problems[0].kind in ("image:corrupt", "image:truncated")


def test_non_image_file(fixture):
    fixture.image("raf/notes.jpg", b"subject,emotion\n1,happy\n")
    fixture.write(_row("mid", image="raf/notes.jpg"))
    fixture.assert_bad_middle_row("image", "image:unrecognised", "not an image")


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00"))
            + chunk(b"IEND", b""))


def test_huge_image_decompression_bomb(fixture):
    fixture.image("raf/bomb.png", _png_claiming(80_000, 80_000))
    fixture.write(_row("mid", image="raf/bomb.png"))
    fixture.assert_bad_middle_row("image", "image:too_large", "6400000000")


def test_huge_image_limit_is_configurable(fixture):
    fixture.image("raf/big.jpg", _jpeg(6, size=(400, 300)))
    fixture.write(_row("mid", image="raf/big.jpg"))
    small_limit = image_lib.ImageConfig(max_image_pixels=100_000)
    fixture.assert_bad_middle_row("image", "image:too_large", "120000 pixels exceeds the limit",
                                  image_config=small_limit)
    assert len(sources.FEAJsonlSource(fixture.jsonl, fixture.root)) == 3


# ------------------------------------------------------------------- paths leaving the root


class _OpenSpy:
    """Records every path opened through builtins.open while active."""

    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        real_open = builtins.open

        def spying_open(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)):
                self.paths.append(os.path.realpath(os.fsdecode(file)))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spying_open)

    def assert_nothing_opened_under(self, forbidden: Path):
        assert any(path.endswith("good1.jpg") for path in self.paths)  # the spy saw the reads
        forbidden = os.path.realpath(forbidden)
        assert not [path for path in self.paths if path.startswith(forbidden + os.sep)]


def _outside_secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    secret.write_bytes(_jpeg(7))  # a perfectly good image: only its location is wrong
    return secret


def test_dotdot_path(fixture, tmp_path, monkeypatch):
    _outside_secret(tmp_path)
    fixture.write(_row("mid", image="raf/../../outside/secret.jpg"))
    spy = _OpenSpy(monkeypatch)
    fixture.assert_bad_middle_row("image", "image", "climbs out of the image root")
    spy.assert_nothing_opened_under(tmp_path / "outside")


def test_absolute_path(fixture, tmp_path, monkeypatch):
    secret = _outside_secret(tmp_path)
    fixture.write(_row("mid", image=str(secret)))
    spy = _OpenSpy(monkeypatch)
    fixture.assert_bad_middle_row("image", "image", "is absolute")
    spy.assert_nothing_opened_under(tmp_path / "outside")


def test_symlink_leaving_the_root(fixture, tmp_path, monkeypatch):
    secret = _outside_secret(tmp_path)
    (fixture.root / "raf" / "link.jpg").symlink_to(secret)
    (fixture.root / "escape").symlink_to(secret.parent, target_is_directory=True)
    spy = _OpenSpy(monkeypatch)
    fixture.write(_row("mid", image="raf/link.jpg"))
    fixture.assert_bad_middle_row("image", "image", "outside the image root")
    fixture.write(_row("mid", image="escape/secret.jpg"))
    fixture.assert_bad_middle_row("image", "image", "outside the image root")
    spy.assert_nothing_opened_under(tmp_path / "outside")


def test_symlink_swapped_in_after_the_scan_is_refused_at_read_time(fixture, tmp_path):
    secret = _outside_secret(tmp_path)
    fixture.image("raf/mid.jpg", _jpeg(8))
    fixture.write(_row("mid", image="raf/mid.jpg"))
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root)
    (fixture.root / "raf" / "mid.jpg").unlink()
    (fixture.root / "raf" / "mid.jpg").symlink_to(secret)
    with pytest.raises(RecordError) as caught:
        source[1]
    assert caught.value.problem.field == "image" and caught.value.problem.line == 2
    assert "outside the image root" in str(caught.value)


def test_symlink_inside_the_root_is_fine(fixture):
    (fixture.root / "raf" / "alias.jpg").symlink_to(fixture.root / "raf" / "good1.jpg")
    fixture.write(_row("mid", image="raf/alias.jpg"))
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root)
    assert source[1]["image_bytes"][0] == (fixture.root / "raf" / "good1.jpg").read_bytes()


# ------------------------------------------------------------------------------- reporting


def test_raise_names_the_first_bad_row_and_still_reports_all(fixture):
    rows = [json.dumps(_row("good1")), json.dumps(_row("x", image="raf/absent.jpg")),
            json.dumps(_row("y", labels=["bemused"])), json.dumps(_row("good2"))]
    fixture.jsonl.write_text("\n".join(rows) + "\n")
    with pytest.raises(RecordError) as caught:
        sources.FEAJsonlSource(fixture.jsonl, fixture.root, report_path=fixture.report)
    assert caught.value.problem.line == 2  # the image problem, found after the record pass
    assert "1 more bad rows" in str(caught.value) and str(fixture.report) in str(caught.value)
    report = json.loads(fixture.report.read_text())
    assert [(p["line"], p["kind"]) for p in report["problems"]] == [
        (2, "image:missing"), (3, "labels")]


def test_image_removed_after_scan_fails_clearly_at_read_time(fixture):
    fixture.image("raf/mid.jpg", _jpeg(9))
    fixture.write(_row("mid", image="raf/mid.jpg"))
    source = sources.FEAJsonlSource(fixture.jsonl, fixture.root)
    (fixture.root / "raf" / "mid.jpg").unlink()
    with pytest.raises(RecordError) as caught:
        source[1]
    problem = caught.value.problem
    assert (problem.file, problem.line, problem.field) == (str(fixture.jsonl), 2, "image")
    assert "does not exist" in problem.reason
