"""TFDS builder `fea20k`: FEA-20K annotations + source images -> array_record, no TensorFlow.

The FEA-20K release ships annotations only (FEA JSONL files, one or more per source dataset and
split); images come from the source datasets, which users obtain under their own licences, each
in its own folder (the reference trains with one image folder per JSONL file). Put both in the
manual folder, in one of two layouts:

  1. A manifest, `<manual_dir>/manifest.json`, pairing each JSONL file with its image folder
     (paths relative to manual_dir, or absolute):

        {"train": [{"jsonl": "FABA-Train.jsonl", "image_root": "FABA-Train"},
                   {"jsonl": "DISFA-Train.jsonl", "image_root": "DISFA-Train"}],
         "test":  [{"jsonl": "FABA-Test.jsonl", "image_root": "FABA-Test"}]}

  2. Without a manifest: `train.jsonl`, `test.jsonl` (and/or `validation.jsonl`) with one image
     root, `<manual_dir>/images/` (or manual_dir itself when there is no images/ folder).

Build and read back (TensorFlow is neither needed nor imported):

    from facialr1_jax.data import fea20k_tfds
    builder = fea20k_tfds.Fea20k(config="raf_db", data_dir=DATA_DIR)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=MANUAL))
    source = fea20k_tfds.Fea20kSource.from_builder(builder, split="train", decode="patches")
    grain.MapDataset.source(source)...

Configs: one per source dataset (disfa, bp4d, raf_au, faba, fer2013, affectnet, raf_db) and
`all`. A record belongs to a dataset config when its `dataset` field names that dataset's
profile (case and punctuation ignored, "FABA-Instruct" -> FABA); `all` keeps every record. A
split with no record for the config is left out (TFDS cannot write an empty split).

Ingest runs `data.sources.scan_fea_jsonl` on each file: records validated and normalised by
`fea.records` (emotion synonyms -> nouns, AU code formats -> "AUn"), labels checked against the
dataset profile, every image path kept inside its root and every image decoded. Bad rows follow
`on_error`: "raise" aborts the build naming file, line and field; "skip" leaves them out, logs the
count and writes `problems-<split>-<jsonl name>.json` next to the generated files (or into
`report_dir`).

Images are stored as their original encoded bytes (`Tensor(shape=(), dtype=object)`), with
their decoded size, so a pipeline can size batches without decoding.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from facialr1_jax.data import images as image_lib
from facialr1_jax.data import sources
from facialr1_jax.fea.profiles import find_profile, get_profile
from facialr1_jax.fea.records import FEARecord

# Source datasets of FEA-20K, by config name (TFDS config names are lower-case identifiers).
SOURCE_DATASETS: dict[str, str] = {
    "disfa": "DISFA",
    "bp4d": "BP4D",
    "raf_au": "RAF-AU",
    "faba": "FABA",
    "fer2013": "FER2013",
    "affectnet": "AffectNet",
    "raf_db": "RAF-DB",
}
ALL = "all"
SPLITS = ("train", "validation", "test")
IMAGE_FOLDER = "images"


class Fea20kConfig(tfds.core.BuilderConfig):
    """One source dataset of FEA-20K (`dataset` = its profile name), or every record (None)."""

    def __init__(self, *, dataset: str | None, **kwargs):
        super().__init__(**kwargs)
        self.dataset = dataset


def _config(name: str, dataset: str | None) -> Fea20kConfig:
    if dataset is None:
        description = "All FEA-20K records, whatever their source dataset."
    else:
        profile = get_profile(dataset)
        description = f"FEA-20K records from {profile.name}: {profile.description}."
    return Fea20kConfig(name=name, dataset=dataset, description=description)


class Fea20k(tfds.core.GeneratorBasedBuilder):
    """FEA-20K (Facial-R1's facial emotion analysis set) with its images; see the module doc."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: FEA JSONL + encoded images in array_record."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Place the FEA-20K annotation files (train.jsonl, test.jsonl; optionally "
        "validation.jsonl) in the manual folder, and the source-dataset images under "
        "<manual_dir>/images/ so that each record's `image` path is relative to that folder. "
        "Run launch/check_data.py on each file first to see every problem at once."
    )
    BUILDER_CONFIGS = [_config(name, dataset) for name, dataset in SOURCE_DATASETS.items()] + [
        _config(ALL, None)
    ]
    DEFAULT_CONFIG_NAME = ALL

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS finds the file of a builder defined in a package through `importlib_resources`,
        # a package it only requires on Python < 3.9; the class's source file is the same path.
        return epath.Path(inspect.getfile(cls))

    def __init__(
        self,
        *,
        on_error: str = "raise",
        image_config: image_lib.ImageConfig | None = None,
        report_dir: str | os.PathLike | None = None,
        **kwargs,
    ):
        """on_error / image_config: as `data.sources.scan_fea_jsonl`; every image is decoded.

        report_dir: where `problems-<split>.json` go (default: beside the generated files).
        Other arguments go to `tfds.core.GeneratorBasedBuilder`; `file_format` defaults to
        array_record, the format that reads back without TensorFlow.
        """
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)
        self._on_error = on_error
        self._image_config = image_config or image_lib.ImageConfig()
        self._report_dir = os.fspath(report_dir) if report_dir is not None else None

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__.split("\n\n")[0],
            features=tfds.features.FeaturesDict({
                "id": text,
                "dataset": text,
                "question": text,
                "description": text,
                "label": text,  # labels[0], "" for AU-only records
                "labels": tfds.features.Sequence(text),
                "aus": tfds.features.Sequence(text),
                "image_paths": tfds.features.Sequence(text),
                "images": tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
                "image_sizes": tfds.features.Sequence(
                    tfds.features.Tensor(shape=(2,), dtype=np.int32)),  # (height, width)
                "meta_info": text,  # JSON
                "source_file": text,
                "source_line": tfds.features.Scalar(dtype=np.int32),
            }),
            homepage="https://arxiv.org/abs/2511.10254",
            citation="Facial-R1 (arXiv 2511.10254, AAAI 2026)",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        inputs = split_inputs(Path(dl_manager.manual_dir))
        # Scanned here rather than while writing, so that a split without a record of this
        # config's dataset can be left out.
        generators = {}
        for split, pairs in inputs.items():
            members = []
            for jsonl_path, image_root in pairs:
                scan = self._scan(split, jsonl_path, image_root)
                members += [(scan, index) for index, record in enumerate(scan.records)
                            if self._belongs(record)]
            logging.info("fea20k/%s %s: %d records", self.builder_config.name, split,
                         len(members))
            if members:
                generators[split] = self._generate_examples(members)
        if not generators:
            files = ", ".join(str(jsonl) for pairs in inputs.values() for jsonl, _ in pairs)
            raise ValueError(f"fea20k/{self.builder_config.name}: no usable record of "
                             f"{self.builder_config.dataset} in {files}")
        return generators

    def _belongs(self, record: FEARecord) -> bool:
        wanted = self.builder_config.dataset
        if wanted is None:
            return True
        profile = find_profile(record.dataset)
        return profile is not None and profile.name == wanted

    def _scan(self, split: str, jsonl_path: Path, image_root: Path) -> sources.ScanResult:
        report_dir = Path(self._report_dir or self.data_dir)
        scan = sources.scan_fea_jsonl(
            jsonl_path, image_root, on_error=self._on_error,
            report_path=report_dir / f"problems-{split}-{jsonl_path.stem}.json",
            image_check="decode", image_config=self._image_config)
        if scan.problems:
            logging.warning("fea20k/%s %s: %d bad rows skipped: %s", self.builder_config.name,
                            split, scan.bad_rows, scan.summary())
        return scan

    def _generate_examples(self, members: list[tuple[sources.ScanResult, int]]):
        for scan, index in members:
            record, line = scan.records[index], scan.lines[index]
            # File and line make a key unique within the split, whatever the ids.
            yield f"{scan.file}:{line}", _example(record, line, scan.image_infos[index], scan)


MANIFEST = "manifest.json"


def split_inputs(manual_dir: Path) -> dict[str, list[tuple[Path, Path]]]:
    """{split: [(jsonl file, image root), ...]} from the manifest or the plain layout."""
    manifest_path = manual_dir / MANIFEST
    if not manifest_path.is_file():
        image_root = manual_dir / IMAGE_FOLDER
        if not image_root.is_dir():
            image_root = manual_dir
        found = {split: [(manual_dir / f"{split}.jsonl", image_root)] for split in SPLITS
                 if (manual_dir / f"{split}.jsonl").is_file()}
        if not found:
            raise FileNotFoundError(
                f"no {MANIFEST} and no split file in {manual_dir}: expected a manifest or one "
                f"or more of {', '.join(split + '.jsonl' for split in SPLITS)}")
        return found

    where = str(manifest_path)
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{where}: not valid JSON: {error}") from None
    if not isinstance(manifest, dict) or not manifest:
        raise ValueError(f"{where}: expected an object {{split: [entries]}}, got {manifest!r}")
    inputs = {}
    for split, entries in manifest.items():
        if split not in SPLITS:
            raise ValueError(f"{where}: unknown split {split!r}; expected one of {SPLITS}")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{where}: split {split!r} needs a non-empty list of entries")
        pairs = []
        for number, entry in enumerate(entries):
            label = f"{where}: {split}[{number}]"
            if not isinstance(entry, dict) or set(entry) != {"jsonl", "image_root"}:
                raise ValueError(f"{label}: expected {{\"jsonl\": ..., \"image_root\": ...}}, "
                                 f"got {entry!r}")
            jsonl_path = manual_dir / entry["jsonl"]
            image_root = manual_dir / entry["image_root"]
            if not jsonl_path.is_file():
                raise FileNotFoundError(f"{label}: no JSONL file {str(jsonl_path)!r}")
            if not image_root.is_dir():
                raise FileNotFoundError(f"{label}: no image folder {str(image_root)!r}")
            pairs.append((jsonl_path, image_root))
        inputs[split] = pairs
    return inputs


def _example(record: FEARecord, line: int, infos: tuple[sources.ImageInfo, ...],
             scan: sources.ScanResult) -> dict[str, Any]:
    encoded = [sources.read_record_image(scan.image_root, relative, file=scan.file, line=line)
               for relative in record.images]
    profile = find_profile(record.dataset)
    return {
        "id": record.id,
        "dataset": profile.name if profile is not None else record.dataset,
        "question": record.question,
        "description": record.description,
        "label": record.label or "",
        "labels": list(record.labels),
        "aus": list(record.aus),
        "image_paths": list(record.images),
        "images": encoded,
        # Decoded, EXIF-upright sizes from the scan: what the pipeline will see.
        "image_sizes": [np.array([info.height, info.width], np.int32) for info in infos],
        "meta_info": json.dumps(record.meta_info, ensure_ascii=False, sort_keys=True),
        "source_file": scan.file,
        "source_line": line,
    }


# ------------------------------------------------------------------------------- reading back


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Fea20kSource:
    """A built `fea20k` split as a grain source with the elements of `sources.FEAJsonlSource`.

    Wraps the TFDS array_record data source and turns each stored example back into an
    `FEARecord` plus its images (`decode`: "bytes", "image" or "patches"), so the same pipeline
    code reads JSONL and TFDS data. Image errors name the original JSONL file and line.
    """

    def __init__(self, data_source, *, decode: str = "bytes",
                 image_config: image_lib.ImageConfig | None = None):
        if decode not in sources.DECODE_MODES:
            raise ValueError(f"decode must be one of {sources.DECODE_MODES}, got {decode!r}")
        self._data_source = data_source
        self.decode = decode
        self.image_config = image_config or image_lib.ImageConfig()

    @classmethod
    def from_builder(cls, builder: tfds.core.DatasetBuilder, split: str, **kwargs) -> Fea20kSource:
        return cls(builder.as_data_source(split=split), **kwargs)

    @classmethod
    def load(cls, name: str = f"fea20k/{ALL}", split: str = "train", *,
             data_dir: str | os.PathLike | None = None, **kwargs) -> Fea20kSource:
        """A prepared split by name, e.g. Fea20kSource.load("fea20k/raf_db", "test", data_dir=...)."""
        return cls(tfds.data_source(name, split=split, data_dir=data_dir), **kwargs)

    def __len__(self) -> int:
        return len(self._data_source)

    def __repr__(self) -> str:
        return f"Fea20kSource({self._data_source!r}, decode={self.decode!r})"

    @functools.cached_property
    def records(self) -> tuple[FEARecord, ...]:
        """Every record of the split, in source order (images are not decoded)."""
        return tuple(_stored_record(self._data_source[index]) for index in range(len(self)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        stored = self._data_source[int(index)]
        record = _stored_record(stored)
        line = int(stored["source_line"])
        element = {
            "id": record.id,
            "dataset": record.dataset,
            "file": _text(stored["source_file"]),
            "line": line,
            "record": record,
            "image_paths": record.images,
        }
        encoded = tuple(bytes(data) for data in stored["images"])
        return sources.attach_images(element, encoded, decode=self.decode,
                                     image_config=self.image_config)


def _stored_record(stored: dict[str, Any]) -> FEARecord:
    return FEARecord(
        id=_text(stored["id"]),
        dataset=_text(stored["dataset"]),
        images=tuple(_text(path) for path in stored["image_paths"]),
        question=_text(stored["question"]),
        aus=tuple(_text(au) for au in stored["aus"]),
        labels=tuple(_text(label) for label in stored["labels"]),
        description=_text(stored["description"]),
        meta_info=json.loads(_text(stored["meta_info"])),
    )
