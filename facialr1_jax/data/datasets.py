"""Which records a run trains and evaluates on: `load_split(config, split)`.

Splits:
    "sft"   stage 1 records (with reasoning in `description`)
    "rl"    stage 2 records (labels only)
    "test"  held-out records
Sources (`config.data.source`):
    builtin  the generated demo set (`data.demo.ensure_demo`, cached under data.builtin_dir):
             stage1_sft.jsonl / stage2_rl.jsonl / test.jsonl and their images/
    jsonl    sft and rl read data.train_jsonl, test reads data.eval_jsonl; images under data.image_root
    tfds     the prepared `fea20k` TFDS data set (data.tfds_name, data.tfds_data_dir): sft and rl
             read its "train" split, test its "test" split
Bad rows follow `config.data.on_error` ("raise": stop at the first, naming file, line and field;
"skip": leave them out and count them). The JSON report of every problem is written into the
workdir as `data_report-<split>.json` when a workdir is given.

`require_description=True` (SFT and its held-out loss) treats a record without reasoning text as a
bad row too, under the same policy, since it has no target to train on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

from facialr1_jax.data import images as image_lib
from facialr1_jax.data import sources
from facialr1_jax.fea.records import FEARecord, RecordError, RecordProblem

_log = logging.getLogger(__name__)

SPLITS = ("sft", "rl", "test")
BUILTIN_FILES = {"sft": "stage1_sft.jsonl", "rl": "stage2_rl.jsonl", "test": "test.jsonl"}
TFDS_SPLITS = {"sft": "train", "rl": "train", "test": "test"}


class Subset:
    """The elements of `source` at `indices`, as a random-access source."""

    def __init__(self, source: Any, indices: list[int]):
        self.source = source
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.source[self.indices[int(index)]]

    def __repr__(self) -> str:
        return f"Subset({self.source!r}, {len(self)} of {len(self.source)})"


@dataclasses.dataclass
class LoadedSplit:
    """A split ready for a grain pipeline: `source[i]` -> {"record", "image_bytes", ...}."""

    name: str
    source: Any
    records: tuple[FEARecord, ...]
    image_root: str | None  # None for sources that carry their images (TFDS)
    report_path: str | None
    summary: str

    def __len__(self) -> int:
        return len(self.records)


def _builtin_paths(config: Any) -> tuple[dict[str, str], str]:
    """(jsonl path per split, image root) of the built-in demo set, generated on first use."""
    from facialr1_jax.data import demo

    data = config.data
    paths = demo.ensure_demo(
        data.builtin_dir,
        num_sft=int(data.builtin_num_sft),
        num_rl=int(data.builtin_num_rl),
        num_test=int(data.builtin_num_test),
        image_size=int(data.builtin_image_size),
        seed=int(config.seed),
    )
    return {split: str(paths[split]) for split in SPLITS}, str(paths["images"])


def _report_path(workdir: str | None, split: str) -> str | None:
    return None if workdir is None else os.path.join(workdir, f"data_report-{split}.json")


def _require_descriptions(split: str, source: Any, records: tuple[FEARecord, ...], on_error: str,
                          report_path: str | None, where: str) -> tuple[Any, tuple[FEARecord, ...], int]:
    missing = [i for i, record in enumerate(records) if not record.description.strip()]
    if not missing:
        return source, records, 0
    first = records[missing[0]]
    if report_path is not None:
        report = {}
        if os.path.exists(report_path):
            with open(report_path, encoding="utf-8") as stream:
                report = json.load(stream)
        report["records_without_description"] = [records[i].id for i in missing]
        sources.write_report(report, report_path)
    if on_error == "raise":
        raise RecordError(RecordProblem(
            where, 0, "description",
            f"record {first.id!r} has no description, which split {split!r} needs as the training target "
            f"({len(missing)} such records; data.on_error='skip' leaves them out)"))
    missing_set = set(missing)
    keep = [i for i in range(len(records)) if i not in missing_set]
    return Subset(source, keep), tuple(records[i] for i in keep), len(missing)


def load_split(config: Any, split: str, *, workdir: str | None = None,
               require_description: bool = False, image_check: str = "header") -> LoadedSplit:
    """Records and a grain source for `split` (see the module docstring).

    image_check: how deeply images are examined up front ("none", "header", "decode",
    "preprocess"; `data.sources.IMAGE_CHECKS`). "header" catches missing, empty, unrecognised and
    oversized files cheaply; a file that is truncated in the middle is then reported when read.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")
    data = config.data
    on_error = data.on_error
    report_path = _report_path(workdir, split)
    image_config = image_lib.ImageConfig(min_pixels=int(data.min_pixels), max_pixels=int(data.max_pixels))

    if data.source == "tfds":
        from facialr1_jax.data import fea20k_tfds

        source = fea20k_tfds.Fea20kSource.load(
            data.tfds_name, TFDS_SPLITS[split], data_dir=data.tfds_data_dir or None, decode="bytes",
            image_config=image_config)
        records = tuple(source.records)
        where = f"tfds:{data.tfds_name}/{TFDS_SPLITS[split]}"
        image_root = None
        summary = f"{where}: {len(records)} records"
    else:
        if data.source == "builtin":
            files, image_root = _builtin_paths(config)
            jsonl = files[split]
        elif data.source == "jsonl":
            jsonl = data.eval_jsonl if split == "test" else data.train_jsonl
            if not jsonl:
                key = "eval_jsonl" if split == "test" else "train_jsonl"
                raise ValueError(f"split {split!r} needs config.data.{key} (an FEA JSONL file) with data.source='jsonl'")
            image_root = data.image_root
        else:
            raise ValueError(f"config.data.source {data.source!r} is not one of builtin, jsonl, tfds")
        if not os.path.isfile(jsonl):
            raise FileNotFoundError(f"split {split!r}: FEA JSONL file {jsonl} does not exist")
        source = sources.FEAJsonlSource(
            jsonl, image_root, on_error=on_error, report_path=report_path, decode="bytes",
            image_check=image_check, image_config=image_config)
        records = source.records
        where = jsonl
        summary = source.scan.summary()

    dropped = 0
    if require_description:
        source, records, dropped = _require_descriptions(split, source, records, on_error, report_path, where)
    if dropped:
        summary += f"; {dropped} records without description left out"
    if not records:
        raise ValueError(f"split {split!r} ({where}) has no usable records ({summary})")
    _log.info("data split %s: %s", split, summary)
    return LoadedSplit(name=split, source=source, records=tuple(records), image_root=image_root,
                       report_path=report_path if report_path and os.path.exists(report_path) else None,
                       summary=summary)
