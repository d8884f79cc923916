"""The fea20k TFDS builder: built from a small FEA-20K-format fixture, read back through grain.

Everything is generated in the test: FEA JSONL files in the release's spelling variety (label
adjectives, AU codes with side prefixes, dataset aliases) and the images they point to. No
TensorFlow is installed, and none may be imported.
"""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from pathlib import Path

import grain
import numpy as np
from absl import flags
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from facialr1_jax.data import fea20k_tfds, sources
from facialr1_jax.data import images as image_lib
from facialr1_jax.fea.records import RecordError


def _encode(seed: int, size, fmt="JPEG", mode="RGB", exif=None) -> bytes:
    rng = np.random.default_rng(seed)
    picture = Image.fromarray(rng.integers(0, 256, (5, 7, 3), np.uint8)).resize(size)
    picture = picture.convert(mode)
    buffer = io.BytesIO()
    picture.save(buffer, fmt, **({"exif": exif} if exif else {}))
    return buffer.getvalue()


def _row(record_id, dataset, image, labels, aus, **extra):
    row = {"id": record_id, "dataset": dataset, "image": image, "AUs": aus, "labels": labels,
           "question": "<image>\nWhat is the emotion?",
           "description": f"<think>features of {record_id}</think><answer>x</answer>",
           "meta_info": {"origin": record_id}}
    row.update(extra)
    return row


class Manual:
    """A manual_dir in the documented layout."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path / "manual"
        self.root = self.dir / "images"
        self.data_dir = tmp_path / "tfds"
        rotated = Image.Exif()
        rotated[0x0112] = 6  # stored landscape, shown portrait
        files = {
            "RAF-DB/aligned/r1.jpg": _encode(1, (100, 100)),
            "RAF-DB/aligned/r2.jpg": _encode(2, (100, 100)),
            "FER2013/f1.png": _encode(3, (48, 48), "PNG", "L"),
            "DISFA/SN001/d1.jpg": _encode(4, (160, 120)),
            "AffectNet/a1.jpg": _encode(5, (120, 80), exif=rotated.tobytes()),
            "FABA/b1.png": _encode(6, (96, 96), "PNG", "RGBA"),
            "other/o1.jpg": _encode(7, (64, 64)),
        }
        for relative, data in files.items():
            (self.root / relative).parent.mkdir(parents=True, exist_ok=True)
            (self.root / relative).write_bytes(data)
        self.train_rows = [
            _row("r1", "RAF-DB", "RAF-DB/aligned/r1.jpg", ["happy"], ["AU6", "L12"]),
            _row("r2", "raf-db", "RAF-DB/aligned/r2.jpg", ["Surprised"], ["1", "2", "AU26"]),
            _row("f1", "FER2013", "FER2013/f1.png", ["sad"], []),
            _row("d1", "DISFA", "DISFA/SN001/d1.jpg", [], ["AU1", "R2", "26"]),
            _row("a1", "AffectNet", "AffectNet/a1.jpg", ["contemptuous"], None),
            _row("b1", "FABA-Instruct", "FABA/b1.png", ["angry"], ["AU4", "AU7"]),
            _row("o1", "SomeNewSet", "other/o1.jpg", ["neutral"], []),
            _row("x1", "RAF-DB", "RAF-DB/aligned/r1.jpg", ["happy"], [], is_valid=False),
        ]
        self.test_rows = [_row("t1", "RAF-DB", "RAF-DB/aligned/r2.jpg", ["fearful"], ["AU1"])]
        self.write()

    def write(self, extra_train_lines=()):
        self.dir.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(row) for row in self.train_rows] + list(extra_train_lines)
        (self.dir / "train.jsonl").write_text("\n".join(lines) + "\n")
        (self.dir / "test.jsonl").write_text(
            "\n".join(json.dumps(row) for row in self.test_rows) + "\n")

    def build(self, config: str, **builder_kwargs) -> tfds.core.DatasetBuilder:
        builder = fea20k_tfds.Fea20k(config=config, data_dir=self.data_dir, **builder_kwargs)
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(self.dir)))
        return builder


@pytest.fixture
def manual(tmp_path) -> Manual:
    return Manual(tmp_path)


def _by_id(source) -> dict[str, dict]:
    elements = [source[i] for i in range(len(source))]
    return {element["id"]: element for element in elements}


def test_tensorflow_is_absent():
    assert importlib.util.find_spec("tensorflow") is None
    assert "tensorflow" not in sys.modules


def test_all_config_builds_normalises_and_reads_back(manual):
    builder = manual.build("all")
    assert builder.info.file_format.value == "array_record"
    assert set(builder.info.splits) == {"train", "test"}
    train = fea20k_tfds.Fea20kSource.from_builder(builder, "train")
    elements = _by_id(train)
    assert sorted(elements) == ["a1", "b1", "d1", "f1", "o1", "r1", "r2"]  # x1: is_valid=false

    r2 = elements["r2"]["record"]
    assert (r2.dataset, r2.labels, r2.aus) == ("RAF-DB", ("surprise",), ("AU1", "AU2", "AU26"))
    assert elements["r1"]["record"].aus == ("AU6", "AU12")
    assert elements["d1"]["record"].aus == ("AU1", "AU2", "AU26")
    assert elements["d1"]["record"].labels == ()
    assert elements["a1"]["record"].labels == ("contempt",)
    assert elements["b1"]["record"].dataset == "FABA"  # alias -> profile name
    assert elements["o1"]["record"].dataset == "SomeNewSet"  # no profile: kept as written
    assert elements["r1"]["record"].meta_info == {"origin": "r1"}
    assert elements["f1"]["line"] == 3 and elements["f1"]["file"].endswith("train.jsonl")

    for element in elements.values():
        (relative,) = element["image_paths"]
        assert element["image_bytes"] == ((manual.root / relative).read_bytes(),)

    assert sorted(record.id for record in train.records) == sorted(elements)
    assert {record.id: record for record in train.records}["r2"] == r2

    test = fea20k_tfds.Fea20kSource.from_builder(builder, "test")
    assert [test[0]["id"], test[0]["record"].label] == ["t1", "fear"]
    assert "tensorflow" not in sys.modules


def test_stored_sizes_are_the_upright_decoded_sizes(manual):
    builder = manual.build("all")
    stored = builder.as_data_source(split="train")
    sizes = {bytes(stored[i]["id"]).decode(): [tuple(s) for s in stored[i]["image_sizes"]]
             for i in range(len(stored))}
    assert sizes["a1"] == [(120, 80)]  # 120 x 80 stored with orientation 6: shown 80 wide
    assert sizes["d1"] == [(120, 160)]
    assert sizes["f1"] == [(48, 48)]


def test_dataset_config_keeps_only_its_dataset(manual):
    builder = manual.build("raf_db")
    ids = sorted(_by_id(fea20k_tfds.Fea20kSource.from_builder(builder, "train")))
    assert ids == ["r1", "r2"]  # "raf-db" spelled differently still belongs
    faba = manual.build("faba")
    assert sorted(_by_id(fea20k_tfds.Fea20kSource.from_builder(faba, "train"))) == ["b1"]
    assert set(faba.info.splits) == {"train"}  # no FABA record in test.jsonl: no empty split


def test_config_without_any_record_is_a_clear_error(manual):
    with pytest.raises(ValueError, match="no usable record of BP4D"):
        manual.build("bp4d")


def test_every_source_dataset_has_a_config():
    names = {config.name for config in fea20k_tfds.Fea20k.BUILDER_CONFIGS}
    assert names == {"disfa", "bp4d", "raf_au", "faba", "fer2013", "affectnet", "raf_db", "all"}


def test_reads_back_through_grain_with_patches_equal_to_the_processor(manual):
    builder = manual.build("all")
    config = image_lib.ImageConfig(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    source = fea20k_tfds.Fea20kSource.from_builder(builder, "train")
    dataset = (grain.MapDataset.source(source)
               .map(sources.DecodeImages("patches", config))
               .to_iter_dataset())
    seen = {}
    for element in dataset:
        seen[element["id"]] = element
        (relative,) = element["image_paths"]
        expected_pixels, expected_grid = config.preprocess(manual.root / relative)
        np.testing.assert_array_equal(element["pixel_values"], expected_pixels)
        np.testing.assert_array_equal(element["image_grid_thw"], expected_grid[None])
    assert len(seen) == 7


def test_loads_by_name_through_the_tfds_registry(manual):
    manual.build("raf_db")
    source = fea20k_tfds.Fea20kSource.load("fea20k/raf_db", "test", data_dir=manual.data_dir,
                                           decode="image")
    (element,) = [source[i] for i in range(len(source))]
    assert element["id"] == "t1" and element["images"][0].size == (100, 100)


def test_bad_rows_are_skipped_and_reported_under_skip(manual):
    manual.write(extra_train_lines=[
        json.dumps(_row("m1", "RAF-DB", "RAF-DB/aligned/missing.jpg", ["happy"], [])),
        json.dumps(_row("u1", "RAF-DB", "RAF-DB/aligned/r1.jpg", ["bemused"], [])),
        json.dumps(_row("p1", "FER2013", "FER2013/f1.png", ["contempt"], [])),
        json.dumps(_row("e1", "RAF-DB", "../outside.jpg", ["happy"], [])),
    ])
    builder = manual.build("all", on_error="skip")
    assert len(builder.as_data_source(split="train")) == 7
    report = json.loads((Path(builder.data_dir) / "problems-train-train.json").read_text())
    found = [(problem["line"], problem["field"], problem["kind"]) for problem in report["problems"]]
    assert found == [(9, "image", "image:missing"), (10, "labels", "labels"),
                     (11, "labels", "labels:profile"), (12, "image", "image")]


def test_bad_rows_abort_the_build_under_raise(manual, tmp_path):
    manual.write(extra_train_lines=[
        json.dumps(_row("m1", "RAF-DB", "RAF-DB/aligned/missing.jpg", ["happy"], []))])
    with pytest.raises(RecordError) as caught:
        manual.build("all", report_dir=tmp_path / "reports")
    problem = caught.value.problem
    assert (Path(problem.file).name, problem.line, problem.field) == ("train.jsonl", 9, "image")
    report = json.loads((tmp_path / "reports" / "problems-train-train.json").read_text())
    assert report["bad_rows"] == 1


def test_missing_split_files_are_a_clear_error(tmp_path):
    (tmp_path / "empty" / "images").mkdir(parents=True)  # images, but no annotation file
    builder = fea20k_tfds.Fea20k(config="all", data_dir=tmp_path / "tfds")
    with pytest.raises(FileNotFoundError, match="expected a manifest or one or more of train.jsonl"):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "empty")))


def test_grain_worker_processes_decode_the_images(manual):
    # The source and the transform travel to a spawned worker process by pickling.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain reads absl flags; pytest runs outside app.run
    builder = manual.build("raf_db")
    config = image_lib.ImageConfig(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    dataset = (grain.MapDataset.source(fea20k_tfds.Fea20kSource.from_builder(builder, "train"))
               .map(sources.DecodeImages("patches", config))
               .to_iter_dataset()
               .mp_prefetch(grain.MultiprocessingOptions(num_workers=1)))
    seen = {element["id"]: element for element in dataset}
    assert sorted(seen) == ["r1", "r2"]
    expected_pixels, _ = config.preprocess(manual.root / "RAF-DB/aligned/r1.jpg")
    np.testing.assert_array_equal(seen["r1"]["pixel_values"], expected_pixels)


def _release_layout(tmp_path: Path) -> Path:
    """The release's shape: one JSONL per dataset and split, each with its own image folder;
    ids restart in every file."""
    manual = tmp_path / "release"
    for folder, dataset, label, size in (("RAF-DB-Train", "RAF-DB", "happy", (100, 100)),
                                         ("FER2013-Train", "FER2013", "sad", (48, 48))):
        (manual / folder).mkdir(parents=True)
        (manual / folder / "0001.jpg").write_bytes(_encode(len(folder), size))
        (manual / f"{folder}.jsonl").write_text(
            json.dumps(_row("0001", dataset, "0001.jpg", [label], [])) + "\n")
    manifest = {"train": [{"jsonl": "RAF-DB-Train.jsonl", "image_root": "RAF-DB-Train"},
                          {"jsonl": "FER2013-Train.jsonl", "image_root": "FER2013-Train"}]}
    (manual / "manifest.json").write_text(json.dumps(manifest))
    return manual


def test_manifest_pairs_each_file_with_its_image_folder(tmp_path):
    manual = _release_layout(tmp_path)
    builder = fea20k_tfds.Fea20k(config="all", data_dir=tmp_path / "tfds")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    source = fea20k_tfds.Fea20kSource.from_builder(builder, "train")
    elements = sorted((source[i] for i in range(len(source))), key=lambda e: e["dataset"])
    assert [(e["dataset"], e["id"], e["record"].label) for e in elements] == [
        ("FER2013", "0001", "sadness"), ("RAF-DB", "0001", "happiness")]
    assert elements[0]["image_bytes"][0] == (manual / "FER2013-Train" / "0001.jpg").read_bytes()
    assert elements[1]["image_bytes"][0] == (manual / "RAF-DB-Train" / "0001.jpg").read_bytes()
    assert set(builder.info.splits) == {"train"}


@pytest.mark.parametrize("manifest,message", [
    ({"training": []}, "unknown split 'training'"),
    ({"train": []}, "needs a non-empty list"),
    ({"train": [{"jsonl": "RAF-DB-Train.jsonl"}]}, "expected {\"jsonl\": ..., \"image_root\": ...}"),
    ({"train": [{"jsonl": "nope.jsonl", "image_root": "RAF-DB-Train"}]}, "no JSONL file"),
    ({"train": [{"jsonl": "RAF-DB-Train.jsonl", "image_root": "nope"}]}, "no image folder"),
])
def test_manifest_mistakes_are_named(tmp_path, manifest, message):
    manual = _release_layout(tmp_path)
    (manual / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises((ValueError, FileNotFoundError)) as caught:
        fea20k_tfds.split_inputs(manual)
    assert message in str(caught.value) and "manifest.json" in str(caught.value)
