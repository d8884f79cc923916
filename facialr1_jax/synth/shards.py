"""Output shards and the progress manifest that make a synthesis run resumable.

The input records are cut into fixed blocks of `shard_size` consecutive input indices. Block b
writes exactly two files, each atomically (temporary file + rename, `fea.records.write_jsonl`):

    WORKDIR/accepted-<b>.jsonl   records whose description is the accepted answer
    WORKDIR/rejected-<b>.jsonl   records no attempt passed, with every attempt and its problems

and only then is b added to WORKDIR/synth_manifest.json (also replaced atomically). A killed run
therefore leaves at most one block half-written, and that block is not in the manifest: the next
run skips the blocks the manifest lists and redoes the rest, overwriting any partial files. The
manifest also records a fingerprint of the inputs, the settings and the model; a run whose
fingerprint differs refuses to continue in that workdir rather than mixing two runs' shards.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

from facialr1_jax.fea.records import FEARecord, read_jsonl, write_jsonl

MANIFEST_FILE = "synth_manifest.json"
MANIFEST_FORMAT = "facialr1_jax.synth.manifest/1"
ACCEPTED_PATTERN = "accepted-{block:05d}.jsonl"
REJECTED_PATTERN = "rejected-{block:05d}.jsonl"
_SHARD_NAME = re.compile(r"(accepted|rejected)-(\d{5,})\.jsonl")


class ManifestMismatchError(ValueError):
    """The workdir holds shards of a run with other inputs, settings or model."""


def input_digest(records: Iterable[FEARecord]) -> str:
    """sha256 over the records' JSON in order: any change to the inputs changes it."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record.to_json(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def write_json_atomic(path: str, payload: Any) -> None:
    """`payload` as indented JSON at `path`, replacing any old file in one step."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            json.dump(payload, stream, indent=2, ensure_ascii=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


@dataclasses.dataclass(frozen=True)
class BlockSummary:
    """What one finished block produced (stored in the manifest)."""

    accepted: int
    rejected: int
    skipped: int  # inputs left out because their id was already annotated (synth.known_jsonl)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ShardStore:
    """The shards and manifest of one synthesis run in `workdir` (see the module docstring)."""

    def __init__(self, workdir: str, fingerprint: dict[str, Any], num_blocks: int, *, writable: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.fingerprint = fingerprint
        self.num_blocks = int(num_blocks)
        self.writable = writable
        self.path = os.path.join(self.workdir, MANIFEST_FILE)
        self.blocks: dict[int, BlockSummary] = {}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as stream:
                manifest = json.load(stream)
            self._check(manifest)
            self.blocks = {int(b): BlockSummary(**summary) for b, summary in manifest["blocks"].items()}

    def _check(self, manifest: dict) -> None:
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ManifestMismatchError(f"{self.path} has format {manifest.get('format')!r}, expected "
                                        f"{MANIFEST_FORMAT!r}; use a fresh workdir")
        stored = manifest.get("fingerprint", {})
        if stored != self.fingerprint:
            differing = sorted(key for key in set(stored) | set(self.fingerprint)
                               if stored.get(key) != self.fingerprint.get(key))
            details = "; ".join(f"{key}: {stored.get(key)!r} there, {self.fingerprint.get(key)!r} now"
                                for key in differing)
            raise ManifestMismatchError(
                f"{self.workdir} holds a synthesis run with other inputs, settings or model ({details}); "
                "resume it with the same config or use a fresh workdir")

    # ------------------------------------------------------------------------------- paths
    def accepted_path(self, block: int) -> str:
        return os.path.join(self.workdir, ACCEPTED_PATTERN.format(block=block))

    def rejected_path(self, block: int) -> str:
        return os.path.join(self.workdir, REJECTED_PATTERN.format(block=block))

    # ------------------------------------------------------------------------------ state
    def is_done(self, block: int) -> bool:
        return block in self.blocks

    @property
    def complete(self) -> bool:
        return all(block in self.blocks for block in range(self.num_blocks))

    def write_block(self, block: int, accepted: Sequence[FEARecord], rejected: Sequence[FEARecord], *,
                    skipped: int, seconds: float) -> BlockSummary:
        """Both shards of `block`, then the manifest entry that marks it done."""
        summary = BlockSummary(accepted=len(accepted), rejected=len(rejected), skipped=int(skipped),
                               seconds=round(float(seconds), 3))
        if self.writable:
            write_jsonl(accepted, self.accepted_path(block))
            write_jsonl(rejected, self.rejected_path(block))
        self.blocks[block] = summary
        if self.writable:
            self._write_manifest()
        return summary

    def _write_manifest(self) -> None:
        write_json_atomic(self.path, {
            "format": MANIFEST_FORMAT,
            "fingerprint": self.fingerprint,
            "num_blocks": self.num_blocks,
            "blocks": {str(block): summary.to_json() for block, summary in sorted(self.blocks.items())},
        })

    def ensure_manifest(self) -> None:
        """Writes the manifest now (a run that has finished no block yet still claims its workdir)."""
        if self.writable and not os.path.exists(self.path):
            self._check_no_foreign_shards()
            self._write_manifest()

    def _check_no_foreign_shards(self) -> None:
        stray = [name for name in sorted(os.listdir(self.workdir)) if _SHARD_NAME.fullmatch(name)]
        if stray:
            raise ManifestMismatchError(f"{self.workdir} holds shards ({', '.join(stray[:3])}, ...) but no "
                                        f"{MANIFEST_FILE}; they belong to another run: use a fresh workdir")

    # ------------------------------------------------------------------------------ reading
    def read_block(self, block: int) -> tuple[tuple[FEARecord, ...], tuple[FEARecord, ...]]:
        """(accepted, rejected) records of a finished block."""
        if not self.is_done(block):
            raise KeyError(f"block {block} is not finished")
        return read_jsonl(self.accepted_path(block)).records, read_jsonl(self.rejected_path(block)).records

    def finished_records(self) -> tuple[list[FEARecord], list[FEARecord]]:
        """All accepted and all rejected records of the finished blocks, in input order."""
        accepted: list[FEARecord] = []
        rejected: list[FEARecord] = []
        for block in sorted(self.blocks):
            kept, dropped = self.read_block(block)
            accepted.extend(kept)
            rejected.extend(dropped)
        return accepted, rejected


def shard_files(workdir: str, kind: str = "accepted") -> list[str]:
    """The `kind` ("accepted" or "rejected") shard files in `workdir`, in block order."""
    if kind not in ("accepted", "rejected"):
        raise ValueError(f"kind must be 'accepted' or 'rejected', got {kind!r}")
    return sorted(glob.glob(os.path.join(glob.escape(os.path.abspath(workdir)), f"{kind}-*.jsonl")))


def read_accepted(workdir: str) -> list[FEARecord]:
    """Every accepted record of the finished blocks of the run in `workdir`, in input order."""
    path = os.path.join(workdir, MANIFEST_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir} holds no synthesis run ({MANIFEST_FILE} is missing)")
    with open(path, encoding="utf-8") as stream:
        manifest = json.load(stream)
    records: list[FEARecord] = []
    for block in sorted(int(b) for b in manifest["blocks"]):
        records.extend(read_jsonl(os.path.join(workdir, ACCEPTED_PATTERN.format(block=block))).records)
    return records
