"""The FEA JSONL record schema (docs/METHOD.md 2.1): parse, validate, read, write.

One JSON object per line:
  id (str, non-empty, unique in a file)         required
  dataset (str)                                 required
  image (str, or non-empty list of str)         required; relative to an image root
  AUs (list of AU codes, or null)               required; parsed with `aus.parse_au_codes`
  labels (list of emotion words, or null)       required; normalised with `emotions`
  question (str)                                optional, default ""
  description (str)                             optional, default "" (stage 3 inputs have none)
  meta_info (object, or null)                   optional, default {}; kept, never interpreted
  is_valid (bool)                               optional, default true; false rows are skipped
  weights (number >= 0, or null)                optional, default 1; the sample weight of the
                                                authors' GRPO loss (grpo.loss_variant = "facial_r1_code")
Other keys are ignored. Bad rows are never dropped silently: each gives a `RecordProblem` naming
file, line and field, and either stops the read (`on_error="raise"`) or is counted and written to
a JSON report (`on_error="skip"`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from facialr1_jax.fea.aus import AUCodeError, parse_au_codes
from facialr1_jax.fea.emotions import (
    UnknownLabelError,
    clean_label_text,
    normalize_emotion,
    try_normalize_emotion,
)

REQUIRED_FIELDS = ("id", "dataset", "image", "AUs", "labels")
OPTIONAL_FIELDS = ("question", "description", "meta_info", "is_valid", "weights")
ON_ERROR_MODES = ("raise", "skip")


# ----------------------------------------------------------------------------------- problems
@dataclasses.dataclass(frozen=True)
class RecordProblem:
    """One bad row: where it is and what is wrong. `field` is None for row-level problems
    (malformed JSON, bad bytes, not an object)."""

    file: str
    line: int
    field: str | None
    reason: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}"
        if self.field is None:
            return f"{where}: {self.reason}"
        return f"{where}: field '{self.field}': {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"line": self.line, "field": self.field, "reason": self.reason}


class RecordError(ValueError):
    """A record that does not fit the schema; `.problem` says where and why."""

    def __init__(self, problem: RecordProblem):
        self.problem = problem
        super().__init__(str(problem))

    def __reduce__(self):
        # Keep `.problem` when the error crosses a process boundary (grain workers pickle errors).
        return (type(self), (self.problem,))


class ImagePathError(ValueError):
    """An image path that is absolute or leaves the image root."""


# ------------------------------------------------------------------------------------- record
@dataclasses.dataclass(frozen=True)
class FEARecord:
    """One validated FEA record; AUs canonical ("AU12"), labels canonical emotion nouns."""

    id: str
    dataset: str
    images: tuple[str, ...]
    question: str = ""
    aus: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    description: str = ""
    meta_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    is_valid: bool = True
    weights: float = 1.0

    @property
    def label(self) -> str | None:
        """The ground-truth emotion: labels[0] (docs/METHOD.md 2.1: later labels are not used)."""
        return self.labels[0] if self.labels else None

    @property
    def image(self) -> str:
        """The first (for single-image records: the only) image path."""
        return self.images[0]

    def to_json(self) -> dict[str, Any]:
        """The record in the FEA JSONL schema (`image` is a string when there is one image; `weights`
        only when it is not the default 1)."""
        row = {
            "id": self.id,
            "dataset": self.dataset,
            "image": self.images[0] if len(self.images) == 1 else list(self.images),
            "question": self.question,
            "AUs": list(self.aus),
            "labels": list(self.labels),
            "description": self.description,
            "meta_info": self.meta_info,
            "is_valid": self.is_valid,
        }
        if self.weights != 1.0:
            row["weights"] = self.weights
        return row

    def replace(self, **changes: Any) -> FEARecord:
        """A copy with some fields changed (e.g. `description` after stage 3 acceptance)."""
        return dataclasses.replace(self, **changes)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


class _RowChecker:
    """Raises RecordError for the row at (file, line); keeps the parse code readable."""

    def __init__(self, file: str, line: int):
        self.file = file
        self.line = line

    def fail(self, field: str | None, reason: str) -> RecordError:
        return RecordError(RecordProblem(self.file, self.line, field, reason))

    def string(self, obj: Mapping[str, Any], field: str, *, default: str | None = None) -> str:
        if field not in obj:
            if default is None:
                raise self.fail(field, "missing required field")
            return default
        value = obj[field]
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, got {_type_name(value)} {value!r}")
        return value


def _parse_images(check: _RowChecker, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        images = [value]
    elif isinstance(value, list):
        if not value:
            raise check.fail("image", "empty list: a record needs at least one image")
        images = value
    else:
        raise check.fail(
            "image", f"expected a string or a list of strings, got {_type_name(value)}"
        )
    for index, path in enumerate(images):
        if not isinstance(path, str):
            raise check.fail("image", f"item {index} is {_type_name(path)} {path!r}, not a string")
        if not path.strip():
            raise check.fail("image", f"item {index} is an empty path")
    return tuple(images)


def _parse_aus(check: _RowChecker, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise check.fail("AUs", f"expected a list of AU codes, got {_type_name(value)} {value!r}")
    for index, code in enumerate(value):
        if not isinstance(code, str):
            raise check.fail("AUs", f"item {index} is {_type_name(code)} {code!r}, not a string")
    try:
        return parse_au_codes(value)
    except AUCodeError as error:
        raise check.fail("AUs", f"bad AU code {error.token!r} ({error})") from None


def _parse_labels(check: _RowChecker, value: object, strict: bool) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise check.fail(
            "labels", f"expected a list of emotions, got {_type_name(value)} {value!r}"
        )
    labels = []
    for index, label in enumerate(value):
        if not isinstance(label, str):
            raise check.fail(
                "labels", f"item {index} is {_type_name(label)} {label!r}, not a string"
            )
        if strict:
            try:
                labels.append(normalize_emotion(label))
            except UnknownLabelError:
                raise check.fail("labels", f"unknown emotion {label!r}") from None
        else:
            cleaned = clean_label_text(label)
            if not cleaned:
                raise check.fail("labels", f"item {index} is an empty label")
            labels.append(try_normalize_emotion(cleaned) or cleaned)
    return tuple(labels)


def _parse_weights(check: _RowChecker, value: object) -> float:
    """The `weights` field: a finite number >= 0 (null = the default 1)."""
    if value is None:
        return 1.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise check.fail("weights", f"expected a number >= 0, got {_type_name(value)} {value!r}")
    weight = float(value)
    if not math.isfinite(weight) or weight < 0:
        raise check.fail("weights", f"expected a finite number >= 0, got {value!r}")
    return weight


def parse_record(
    obj: object, *, file: str = "<memory>", line: int = 0, strict_labels: bool = True
) -> FEARecord:
    """Validate one decoded JSON row and build the record; RecordError names the first problem.

    `strict_labels=False` keeps labels outside the eight emotions (cleaned: case-folded, trimmed)
    instead of rejecting them, for source files with extra classes.
    """
    check = _RowChecker(file, line)
    if not isinstance(obj, dict):
        raise check.fail(None, f"expected a JSON object, got {_type_name(obj)}")
    for field in REQUIRED_FIELDS:
        if field not in obj:
            raise check.fail(field, "missing required field")

    record_id = check.string(obj, "id")
    if not record_id.strip():
        raise check.fail("id", "empty id")
    dataset = check.string(obj, "dataset")
    images = _parse_images(check, obj["image"])
    question = check.string(obj, "question", default="")
    aus = _parse_aus(check, obj["AUs"])
    labels = _parse_labels(check, obj["labels"], strict_labels)
    description = check.string(obj, "description", default="")

    meta_info = obj.get("meta_info")
    if meta_info is None:
        meta_info = {}
    elif not isinstance(meta_info, dict):
        raise check.fail("meta_info", f"expected an object, got {_type_name(meta_info)}")

    is_valid = obj.get("is_valid", True)
    if not isinstance(is_valid, bool):
        raise check.fail(
            "is_valid", f"expected true or false, got {_type_name(is_valid)} {is_valid!r}"
        )
    weights = _parse_weights(check, obj.get("weights"))

    return FEARecord(
        id=record_id,
        dataset=dataset,
        images=images,
        question=question,
        aus=aus,
        labels=labels,
        description=description,
        meta_info=meta_info,
        is_valid=is_valid,
        weights=weights,
    )


# ---------------------------------------------------------------------------------- image paths
def resolve_image_path(image_root: str | os.PathLike, relative: str, *, where: str = "") -> Path:
    """`image_root / relative`, checked to stay inside the root; the file is not opened.

    Rejects absolute paths (POSIX or Windows style), paths whose `..` parts climb out of the
    root, and paths that leave the root through a symlink (resolved on disk). Errors start with
    `where` (e.g. "train.jsonl:17") so the offending row is named.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(relative, str) or not relative.strip():
        raise ImagePathError(f"{prefix}image path {relative!r} is empty or not a string")
    if "\x00" in relative:
        raise ImagePathError(f"{prefix}image path {relative!r} contains a NUL byte")
    if PurePosixPath(relative).is_absolute() or PureWindowsPath(relative).is_absolute():
        raise ImagePathError(
            f"{prefix}image path {relative!r} is absolute; it must be relative to the image root"
        )
    normalized = os.path.normpath(relative)
    if normalized == ".." or normalized.startswith(".." + os.sep):
        raise ImagePathError(
            f"{prefix}image path {relative!r} climbs out of the image root with '..'"
        )
    root = Path(image_root)
    candidate = root / normalized
    real_root = root.resolve()
    real_candidate = candidate.resolve()
    if real_candidate != real_root and not real_candidate.is_relative_to(real_root):
        raise ImagePathError(
            f"{prefix}image path {relative!r} resolves to {str(real_candidate)!r}, outside the "
            f"image root {str(real_root)!r} (through a symlink)"
        )
    return candidate


# -------------------------------------------------------------------------------------- reading
@dataclasses.dataclass(frozen=True)
class ReadResult:
    """What `read_jsonl` found. Every non-blank line is exactly one of: a record, an
    `is_valid: false` row (skipped_invalid) or a bad row (listed in `problems`)."""

    file: str
    records: tuple[FEARecord, ...]
    problems: tuple[RecordProblem, ...]
    lines: int
    blank_lines: int
    skipped_invalid: int
    invalid_lines: tuple[int, ...]
    report_path: str | None = None

    @property
    def bad_rows(self) -> int:
        return len(self.problems)

    def summary(self) -> str:
        """One line for logs."""
        text = (
            f"{self.file}: {self.lines} lines, {len(self.records)} records, "
            f"{self.blank_lines} blank, {self.skipped_invalid} skipped (is_valid=false), "
            f"{self.bad_rows} bad rows"
        )
        if self.problems:
            text += f" (first: {self.problems[0]})"
        if self.report_path:
            text += f"; report: {self.report_path}"
        return text

    def to_report(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "lines": self.lines,
            "records": len(self.records),
            "blank_lines": self.blank_lines,
            "skipped_invalid": self.skipped_invalid,
            "invalid_lines": list(self.invalid_lines),
            "bad_rows": self.bad_rows,
            "problems": [problem.to_json() for problem in self.problems],
            "summary": self.summary(),
        }


def _decode_line(raw: bytes, file: str, line: int) -> str:
    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a UTF-8 byte-order mark some editors write
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        bad = raw[error.start : error.start + 1]
        raise RecordError(
            RecordProblem(
                file,
                line,
                None,
                f"not valid UTF-8: byte 0x{bad.hex()} at byte offset {error.start} of the line",
            )
        ) from None


def _parse_line(text: str, file: str, line: int) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(
            RecordProblem(file, line, None, f"malformed JSON: {error.msg} at column {error.colno}")
        ) from None


def read_jsonl(
    path: str | os.PathLike,
    *,
    on_error: str = "raise",
    report_path: str | os.PathLike | None = None,
    image_root: str | os.PathLike | None = None,
    strict_labels: bool = True,
) -> ReadResult:
    """Read and validate an FEA JSONL file.

    on_error="raise": the first bad row raises RecordError (its `.problem` names file, line,
    field). on_error="skip": bad rows are counted and listed in `ReadResult.problems`.
    Either way a JSON report (counts, every problem, the lines of `is_valid: false` rows and a
    one-line summary) is written to `report_path` when one is given, also just before raising.
    Blank lines are counted, not errors. Rows with `"is_valid": false` are skipped without
    further validation and counted in `skipped_invalid`. Duplicate ids (among the rows kept) are a
    problem on the later row. With
    `image_root`, every image path must resolve inside it (`resolve_image_path`).
    """
    if on_error not in ON_ERROR_MODES:
        raise ValueError(f"on_error must be one of {ON_ERROR_MODES}, got {on_error!r}")
    file = os.fspath(path)
    records: list[FEARecord] = []
    problems: list[RecordProblem] = []
    invalid_lines: list[int] = []
    first_line_of_id: dict[str, int] = {}
    lines = blank_lines = 0

    def result() -> ReadResult:
        return ReadResult(
            file=file,
            records=tuple(records),
            problems=tuple(problems),
            lines=lines,
            blank_lines=blank_lines,
            skipped_invalid=len(invalid_lines),
            invalid_lines=tuple(invalid_lines),
            report_path=os.fspath(report_path) if report_path is not None else None,
        )

    def finish() -> ReadResult:
        outcome = result()
        if report_path is not None:
            _write_text_atomic(
                Path(report_path),
                json.dumps(outcome.to_report(), indent=2, ensure_ascii=False) + "\n",
            )
        return outcome

    with open(file, "rb") as stream:
        # Binary iteration splits on b"\n" only, so U+2028 inside a JSON string stays in its row.
        for lines, raw in enumerate(stream, start=1):
            try:
                text = _decode_line(raw, file, lines)
                if not text.strip():
                    blank_lines += 1
                    continue
                obj = _parse_line(text, file, lines)
                if isinstance(obj, dict) and obj.get("is_valid") is False:
                    # Marked unusable at the source: skipped before validation, since such rows
                    # are often the broken ones; counted and listed in the report.
                    invalid_lines.append(lines)
                    continue
                record = parse_record(obj, file=file, line=lines, strict_labels=strict_labels)
                if record.id in first_line_of_id:
                    first = first_line_of_id[record.id]
                    reason = f"duplicate id {record.id!r} (first seen on line {first})"
                    raise RecordError(RecordProblem(file, lines, "id", reason))
                if image_root is not None:
                    for image in record.images:
                        try:
                            resolve_image_path(image_root, image, where=f"{file}:{lines}")
                        except ImagePathError as error:
                            raise RecordError(
                                RecordProblem(file, lines, "image", str(error))
                            ) from None
                first_line_of_id[record.id] = lines
                records.append(record)
            except RecordError as error:
                problems.append(error.problem)
                if on_error == "raise":
                    finish()
                    raise
    return finish()


# -------------------------------------------------------------------------------------- writing
def _write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def write_jsonl(records: Iterable[FEARecord | Mapping[str, Any]], path: str | os.PathLike) -> int:
    """Write records as FEA JSONL, atomically (temp file in the same folder + os.replace), so a
    reader never sees a half-written file. Mappings are validated through `parse_record` first.
    Returns the number of rows written."""
    rows = []
    for index, record in enumerate(records):
        if not isinstance(record, FEARecord):
            record = parse_record(record, file="<write_jsonl input>", line=index + 1)
        rows.append(json.dumps(record.to_json(), ensure_ascii=False))
    _write_text_atomic(Path(path), "".join(row + "\n" for row in rows))
    return len(rows)
