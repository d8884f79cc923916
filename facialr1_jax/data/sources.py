"""Random-access FEA data sources for grain: validated records plus their images.

`scan_fea_jsonl` reads an FEA JSONL file through the record schema (`fea.records.read_jsonl`:
JSON, fields, emotion and AU normalisation, image paths kept inside the image root), checks each
record's labels against its dataset profile, and opens every image to the depth asked for
(`image_check`). Every bad row becomes one `Problem`: the schema's `RecordProblem` (file, line,
field, reason) plus a `kind` for counting ("row" for unparsable lines, the field name for schema
problems, "image:<ImageLoadError kind>" for image files, "labels:profile" for a label outside its
dataset's vocabulary).

Policies: on_error="raise" stops with a `RecordError` naming the first bad row (file order);
on_error="skip" leaves bad rows out and counts them. Either way, with `report_path`, a JSON report
of every problem is written (before raising, too). Nothing is dropped without being counted.

`FEAJsonlSource` is the grain data source on top: `len()`, `source[i]` -> a dict with the record
and its image bytes, decoded images or Qwen2.5-VL patches. It opens image files only through
`resolve_image_path`, again at read time, so no path outside the image root is ever opened.
`DecodeImages` is the grain transform that decodes bytes in worker processes instead.

`check_fea_data` is what `launch/check_data.py` runs: records, then every image opened and
preprocessed as training would, and a summary (per dataset, per label, problems by kind).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from facialr1_jax.data import images as image_lib
from facialr1_jax.parallel import files
from facialr1_jax.fea.profiles import find_profile
from facialr1_jax.fea.records import (
    ON_ERROR_MODES,
    FEARecord,
    ImagePathError,
    RecordError,
    RecordProblem,
    read_jsonl,
    resolve_image_path,
)

# How deeply images are examined while scanning, cheapest first:
#   none        no file is touched (problems surface when an element is read)
#   header      the file exists, is not empty, is an image, within the pixel limit and aspect ratio
#   decode      + every pixel decodes (catches truncated and corrupt files)
#   preprocess  + resized and patchified exactly as training does
IMAGE_CHECKS = ("none", "header", "decode", "preprocess")

# What `FEAJsonlSource.__getitem__` returns beside the record (see its docstring).
DECODE_MODES = ("bytes", "image", "patches")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One bad row: where and why (`problem`), and a `kind` to count it under."""

    problem: RecordProblem
    kind: str

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.problem.file,
            "line": self.problem.line,
            "field": self.problem.field,
            "kind": self.kind,
            "reason": self.problem.reason,
        }

    def __str__(self) -> str:
        return str(self.problem)


def _kind_of_record_problem(problem: RecordProblem) -> str:
    return "row" if problem.field is None else problem.field


@dataclasses.dataclass(frozen=True)
class ImageInfo:
    """One image as the scan saw it: upright size once decoded (None fields when not opened)."""

    format: str | None = None
    mode: str | None = None
    width: int | None = None
    height: int | None = None


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """Everything `scan_fea_jsonl` found. `records[i]` was read from line `lines[i]`;
    `image_infos[i]` has one `ImageInfo` per image of `records[i]`."""

    file: str
    image_root: str
    on_error: str
    image_check: str
    records: tuple[FEARecord, ...]
    lines: tuple[int, ...]
    image_infos: tuple[tuple[ImageInfo, ...], ...]
    problems: tuple[Problem, ...]
    total_lines: int
    blank_lines: int
    skipped_invalid: int
    report_path: str | None = None

    @property
    def bad_rows(self) -> int:
        return len(self.problems)

    def problems_by_kind(self) -> dict[str, int]:
        counts = collections.Counter(problem.kind for problem in self.problems)
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def summary(self) -> str:
        """One line for logs."""
        text = (f"{self.file}: {self.total_lines} lines, {len(self.records)} usable records, "
                f"{self.bad_rows} bad rows, {self.blank_lines} blank, "
                f"{self.skipped_invalid} skipped (is_valid=false)")
        if self.problems:
            kinds = ", ".join(f"{kind} {count}" for kind, count in self.problems_by_kind().items())
            text += f"; problems: {kinds}; first: {self.problems[0]}"
        if self.report_path:
            text += f"; report: {self.report_path}"
        return text

    def to_report(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "image_root": self.image_root,
            "on_error": self.on_error,
            "image_check": self.image_check,
            "lines": self.total_lines,
            "usable_records": len(self.records),
            "bad_rows": self.bad_rows,
            "blank_lines": self.blank_lines,
            "skipped_invalid": self.skipped_invalid,
            "problems_by_kind": self.problems_by_kind(),
            "problems": [problem.to_json() for problem in self.problems],
            "summary": self.summary(),
        }


def write_report(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a JSON report whole, creating the folder (local paths or URLs such as gs://...).

    Every process of a multi-host run loads the same data and may write the same report into a
    shared workdir at once: `parallel.files.write_text` renames a per-host, per-process temporary
    file into place (or uploads the object in one go), so concurrent writers never collide.
    """
    files.write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------- scanning


def _record_lines(file: str, records: Sequence[FEARecord], problems: Sequence[RecordProblem],
                  invalid_lines: Sequence[int]) -> list[int]:
    """The line each record came from.

    `read_jsonl` keeps records in file order and accounts for every other line (bad rows, rows
    with is_valid=false, blank lines), so the remaining non-blank lines are the records' lines.
    Each is confirmed against the record id, so a change in the reader's rules fails loudly here
    instead of blaming the wrong line.
    """
    excluded = {problem.line for problem in problems} | set(invalid_lines)
    candidates = []
    with open(file, "rb") as stream:
        for number, raw in enumerate(stream, start=1):
            if number in excluded:
                continue
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                if not raw.decode("utf-8").strip():
                    continue
            except UnicodeDecodeError:
                pass  # not blank; such a line is a problem row and already excluded
            candidates.append((number, raw))
    if len(candidates) != len(records):
        raise RuntimeError(f"{file}: found {len(candidates)} record lines for {len(records)} "
                           "records; fea.records.read_jsonl and this scanner disagree")
    lines = []
    for record, (number, raw) in zip(records, candidates):
        if json.loads(raw).get("id") != record.id:
            raise RuntimeError(f"{file}:{number}: expected record id {record.id!r} on this line; "
                               "fea.records.read_jsonl and this scanner disagree")
        lines.append(number)
    return lines


def profile_problem(record: FEARecord) -> str | None:
    """Why the record's label does not fit its dataset profile, or None when it fits.

    Only datasets with a profile and an emotion vocabulary are checked: a FER2013 row labelled
    "contempt" is wrong (FER2013 has no such class); an AU-only or unknown dataset is not.
    """
    profile = find_profile(record.dataset)
    if profile is None or not profile.labels or record.label is None:
        return None
    if record.label in profile.labels:
        return None
    return (f"label {record.label!r} is not an emotion of {profile.name} "
            f"(its labels: {', '.join(profile.labels)})")


def _image_error_problem(file: str, line: int, relative: str, error: Exception) -> Problem:
    if isinstance(error, image_lib.ImageLoadError):
        kind = f"image:{error.kind}"
        reason = f"{relative!r}: {error.reason}"
    else:  # ImagePathError: the path was fine when the records were read, not any more
        kind = "image:path"
        reason = str(error)
    return Problem(RecordProblem(file, line, "image", reason), kind)


def _check_images(record: FEARecord, line: int, file: str, image_root: str, level: str,
                  config: image_lib.ImageConfig) -> tuple[tuple[ImageInfo, ...], Problem | None]:
    """Open the record's images to `level`; the first failure is the row's problem."""
    infos = []
    for relative in record.images:
        try:
            path = resolve_image_path(image_root, relative, where=f"{file}:{line}")
            if level == "header":
                header = image_lib.probe_image(path, max_image_pixels=config.max_image_pixels)
                config.grid_thw(header.height, header.width)  # aspect-ratio limit
                infos.append(ImageInfo(header.format, header.mode, header.width, header.height))
                continue
            data = image_lib.read_image_file(path)
            decoded = image_lib.open_image(data, max_image_pixels=config.max_image_pixels)
            if level == "preprocess":
                config.preprocess(decoded)
            else:
                image_lib.to_rgb(decoded)  # a mode with no RGB conversion fails here
                config.grid_thw(decoded.height, decoded.width)
            infos.append(ImageInfo(decoded.format, decoded.mode, decoded.width, decoded.height))
        except (image_lib.ImageLoadError, ImagePathError) as error:
            return (), _image_error_problem(file, line, relative, error)
    return tuple(infos), None


def scan_fea_jsonl(
    jsonl_path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    on_error: str = "raise",
    report_path: str | os.PathLike | None = None,
    image_check: str = "decode",
    image_config: image_lib.ImageConfig | None = None,
    strict_labels: bool = True,
    check_profiles: bool = True,
    num_threads: int | None = None,
) -> ScanResult:
    """Read and validate an FEA JSONL file and its images (see the module docstring).

    The scan always runs to the end, so the report lists every problem; under on_error="raise"
    the first bad row (in file order) is then raised as a `RecordError`. Images are opened by
    `num_threads` threads (default: one per CPU): Pillow decodes outside the GIL.
    """
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
    if image_check not in IMAGE_CHECKS:
        raise ValueError(f"image_check must be one of {IMAGE_CHECKS}, got {image_check!r}")
    config = image_config or image_lib.ImageConfig()
    file = os.fspath(jsonl_path)
    root = os.fspath(image_root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image root {root!r} is not a directory")

    read = read_jsonl(file, on_error="skip", image_root=root, strict_labels=strict_labels)
    record_lines = _record_lines(file, read.records, read.problems, read.invalid_lines)
    problem_by_line: dict[int, Problem] = {
        problem.line: Problem(problem, _kind_of_record_problem(problem))
        for problem in read.problems
    }

    candidates = []
    for record, line in zip(read.records, record_lines):
        reason = profile_problem(record) if check_profiles else None
        if reason is not None:
            problem_by_line[line] = Problem(RecordProblem(file, line, "labels", reason),
                                            "labels:profile")
        else:
            candidates.append((record, line))

    if image_check == "none":
        checked = [(tuple(ImageInfo() for _ in record.images), None)
                   for record, _ in candidates]
    else:
        workers = num_threads or os.cpu_count() or 1
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            checked = list(pool.map(
                lambda item: _check_images(item[0], item[1], file, root, image_check, config),
                candidates))

    records, lines, infos = [], [], []
    for (record, line), (info, problem) in zip(candidates, checked):
        if problem is not None:
            problem_by_line[line] = problem
        else:
            records.append(record)
            lines.append(line)
            infos.append(info)

    result = ScanResult(
        file=file,
        image_root=root,
        on_error=on_error,
        image_check=image_check,
        records=tuple(records),
        lines=tuple(lines),
        image_infos=tuple(infos),
        problems=tuple(problem_by_line[line] for line in sorted(problem_by_line)),
        total_lines=read.lines,
        blank_lines=read.blank_lines,
        skipped_invalid=read.skipped_invalid,
        report_path=os.fspath(report_path) if report_path is not None else None,
    )
    if report_path is not None:
        write_report(result.to_report(), report_path)
    if on_error == "raise" and result.problems:
        first = result.problems[0].problem
        extras = []
        if result.bad_rows > 1:
            extras.append(f"{result.bad_rows - 1} more bad rows")
        if report_path is not None:
            extras.append(f"report: {report_path}")
        suffix = f" ({'; '.join(extras)})" if extras else ""
        raise RecordError(dataclasses.replace(first, reason=first.reason + suffix))
    return result


# ----------------------------------------------------------------------------------- the source


class FEAJsonlSource:
    """A grain random-access source over an FEA JSONL file and its image root.

    `source[i]` is a dict:
      "id", "dataset", "file" and "line" (where the row is), "record" (the `FEARecord`),
      "image_paths" (paths relative to the image root), and by `decode`:
        "bytes"   -> "image_bytes": tuple of encoded files (decode later, e.g. in grain workers)
        "image"   -> "images": tuple of upright RGB PIL images
        "patches" -> "pixel_values": float32 [total patches, 1176] and "image_grid_thw":
                     int64 [n_images, 3], as the Qwen2.5-VL processor returns them.

    Rows are validated when the source is built (`scan_fea_jsonl`; default `image_check`
    "decode"). A read that still fails (a file changed or removed since, or a check level that
    did not decode) raises `RecordError` naming file, line and field `image`, whatever the
    policy: a source cannot skip an element at read time without hiding it.
    """

    def __init__(
        self,
        jsonl_path: str | os.PathLike,
        image_root: str | os.PathLike,
        *,
        on_error: str = "raise",
        report_path: str | os.PathLike | None = None,
        decode: str = "bytes",
        image_check: str = "decode",
        image_config: image_lib.ImageConfig | None = None,
        strict_labels: bool = True,
        check_profiles: bool = True,
        num_threads: int | None = None,
    ):
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {DECODE_MODES}, got {decode!r}")
        self.decode = decode
        self.image_config = image_config or image_lib.ImageConfig()
        self.scan = scan_fea_jsonl(
            jsonl_path, image_root, on_error=on_error, report_path=report_path,
            image_check=image_check, image_config=self.image_config,
            strict_labels=strict_labels, check_profiles=check_profiles, num_threads=num_threads)

    @property
    def records(self) -> tuple[FEARecord, ...]:
        return self.scan.records

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.scan.problems

    def __len__(self) -> int:
        return len(self.scan.records)

    def __repr__(self) -> str:
        return (f"FEAJsonlSource({self.scan.file!r}, image_root={self.scan.image_root!r}, "
                f"records={len(self)}, skipped={self.scan.bad_rows}, decode={self.decode!r})")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a source of {len(self)} records")
        record = self.scan.records[index]
        line = self.scan.lines[index]
        element: dict[str, Any] = {
            "id": record.id,
            "dataset": record.dataset,
            "file": self.scan.file,
            "line": line,
            "record": record,
            "image_paths": record.images,
        }
        encoded = tuple(
            read_record_image(self.scan.image_root, relative, file=self.scan.file, line=line)
            for relative in record.images)
        return attach_images(element, encoded, decode=self.decode, image_config=self.image_config)


def read_record_image(image_root: str | os.PathLike, relative: str, *, file: str, line: int
                      ) -> bytes:
    """The encoded image at `relative` under the root; RecordError (field "image") otherwise.

    The path is resolved again at every read, so a symlink swapped in after validation is
    refused rather than followed out of the root.
    """
    try:
        path = resolve_image_path(image_root, relative, where=f"{file}:{line}")
        return image_lib.read_image_file(path)
    except (image_lib.ImageLoadError, ImagePathError) as error:
        raise RecordError(_image_error_problem(file, line, relative, error).problem) from None


def attach_images(element: dict[str, Any], encoded: Sequence[bytes], *, decode: str,
                  image_config: image_lib.ImageConfig) -> dict[str, Any]:
    """Add the element's images in the form `decode` asks for (see `FEAJsonlSource`).

    A decoding failure is a RecordError naming the element's file and line, field "image" and
    the image path.
    """
    file, line = element["file"], element["line"]
    if decode == "bytes":
        element["image_bytes"] = tuple(encoded)
        return element
    decoded, pixel_values, grids = [], [], []
    for relative, data in zip(element["image_paths"], encoded):
        try:
            if decode == "image":
                decoded.append(image_lib.load_image(
                    data, max_image_pixels=image_config.max_image_pixels))
            else:
                patches, grid = image_config.preprocess(data)
                pixel_values.append(patches)
                grids.append(grid)
        except image_lib.ImageLoadError as error:
            raise RecordError(_image_error_problem(file, line, relative, error).problem) from None
    if decode == "image":
        element["images"] = tuple(decoded)
    else:
        element["pixel_values"] = np.concatenate(pixel_values)
        element["image_grid_thw"] = np.stack(grids)
    return element


class DecodeImages:
    """grain map: an element with "image_bytes" -> the same with decoded images.

    Lets a source hand out cheap encoded bytes while grain worker processes do the decoding,
    resizing and patchifying: `decode` is "image" or "patches", as in `FEAJsonlSource`.
    A plain picklable callable (`MapDataset.map(DecodeImages())`), so that importing this
    module does not import grain and JAX (launch/check_data.py starts in a fraction of a second).
    """

    def __init__(self, decode: str = "patches", image_config: image_lib.ImageConfig | None = None):
        if decode not in ("image", "patches"):
            raise ValueError(f"DecodeImages decodes to 'image' or 'patches', not {decode!r}")
        self.decode = decode
        self.image_config = image_config or image_lib.ImageConfig()

    def __call__(self, element: dict[str, Any]) -> dict[str, Any]:
        element = dict(element)
        encoded = element.pop("image_bytes")
        return attach_images(element, encoded, decode=self.decode, image_config=self.image_config)

    map = __call__  # the grain.transforms.Map method name, for DataLoader-style operations


# ------------------------------------------------------------------------------ data checking


@dataclasses.dataclass(frozen=True)
class DataCheck:
    """`check_fea_data`'s findings; `ok` is what the exit status reports."""

    scan: ScanResult

    @property
    def ok(self) -> bool:
        """False when a row is bad under on_error="raise"; skips are fine under "skip"."""
        return self.scan.on_error == "skip" or not self.scan.problems

    def per_dataset(self) -> dict[str, int]:
        """Usable records per dataset; spellings of one profile ("raf-db", "RAF-DB") count as one."""
        def name(dataset: str) -> str:
            profile = find_profile(dataset)
            return profile.name if profile is not None else dataset

        return dict(collections.Counter(name(r.dataset) for r in self.scan.records).most_common())

    def per_label(self) -> dict[str, int]:
        return dict(collections.Counter(r.label or "(none)" for r in self.scan.records)
                    .most_common())

    def image_modes(self) -> dict[str, int]:
        return dict(collections.Counter(info.mode for infos in self.scan.image_infos
                                        for info in infos if info.mode).most_common())

    def notes(self) -> list[str]:
        notes = []
        high_bit = {mode: n for mode, n in self.image_modes().items() if mode in ("I;16", "I", "F")}
        if high_bit:
            notes.append(
                f"{sum(high_bit.values())} images are 16/32-bit ({high_bit}); like the "
                "reference processor, conversion to RGB clips them to 0..255 - convert them to "
                "8-bit first if they use the full range")
        return notes

    def summary_text(self) -> str:
        scan = self.scan

        def counts(mapping: dict[str, int]) -> str:
            return ", ".join(f"{key} {value}" for key, value in mapping.items()) or "-"

        lines = [
            f"file: {scan.file}",
            f"image root: {scan.image_root}",
            f"lines: {scan.total_lines} ({scan.blank_lines} blank, {scan.skipped_invalid} "
            f"is_valid=false)",
            f"usable records: {len(scan.records)}; bad rows: {scan.bad_rows} "
            f"(policy: {scan.on_error})",
            f"images checked to: {scan.image_check}; modes: {counts(self.image_modes())}",
            f"per dataset: {counts(self.per_dataset())}",
            f"per label: {counts(self.per_label())}",
            f"problems by kind: {counts(scan.problems_by_kind())}",
        ]
        lines += [f"problem: {problem}" for problem in scan.problems[:5]]
        if scan.bad_rows > 5:
            lines.append(f"... and {scan.bad_rows - 5} more (see the report)")
        lines += [f"note: {note}" for note in self.notes()]
        if scan.report_path:
            lines.append(f"report: {scan.report_path}")
        lines.append("result: " + ("OK" if self.ok else "FAILED (bad rows under on_error=raise)"))
        return "\n".join(lines)

    def to_report(self) -> dict[str, Any]:
        report = self.scan.to_report()
        report.update(
            ok=self.ok,
            per_dataset=self.per_dataset(),
            per_label=self.per_label(),
            image_modes=self.image_modes(),
            notes=self.notes(),
        )
        return report


def check_fea_data(
    jsonl_path: str | os.PathLike,
    image_root: str | os.PathLike,
    *,
    on_error: str = "raise",
    report_path: str | os.PathLike | None = None,
    image_config: image_lib.ImageConfig | None = None,
    strict_labels: bool = True,
    num_threads: int | None = None,
) -> DataCheck:
    """Validate a data set as training reads it: every record, every image preprocessed.

    Unlike a source, the check never stops early: every problem is collected and reported;
    `DataCheck.ok` is False when any row is bad and the policy is "raise".
    """
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
    scan = scan_fea_jsonl(
        jsonl_path, image_root, on_error="skip", image_check="preprocess",
        image_config=image_config, strict_labels=strict_labels, num_threads=num_threads)
    scan = dataclasses.replace(scan, on_error=on_error,
                               report_path=os.fspath(report_path) if report_path else None)
    check = DataCheck(scan)
    if report_path is not None:
        write_report(check.to_report(), report_path)
    return check
