"""Re-verifying a finished synthesis run from its files alone, with the Python oracle.

    report = reverify(workdir)          # the run's own settings are read from its manifest
    assert report.ok, report.failures[:3]

Every accepted record must pass `fea.answers.check_synthesis` (the reference check: AU set equal to
the ground truth, label equal, think and answer present and non-empty, clean format) when the run
used those checks, or the configured variant otherwise; ids must be unique across the accepted and
rejected shards, and no description may appear twice. This is independent of the code path that
accepted the records (it reads only the JSONL shards and the manifest).
"""

from __future__ import annotations

import dataclasses
import json
import os

from facialr1_jax.fea.answers import check_synthesis
from facialr1_jax.fea.records import read_jsonl
from facialr1_jax.synth.checks import AnswerChecker, description_key
from facialr1_jax.synth.settings import SynthSettings
from facialr1_jax.synth.shards import MANIFEST_FILE, shard_files


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    accepted: int
    rejected: int
    failures: tuple[str, ...]  # one line per problem found

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return {"accepted": self.accepted, "rejected": self.rejected, "ok": self.ok,
                "failures": list(self.failures[:20]), "num_failures": len(self.failures)}


def settings_of_run(workdir: str) -> SynthSettings:
    """The check settings a run was made with (from its manifest's fingerprint)."""
    with open(os.path.join(workdir, MANIFEST_FILE), encoding="utf-8") as stream:
        stored = json.load(stream)["fingerprint"]["settings"]
    stored = dict(stored, hedge_words=tuple(stored.get("hedge_words") or ()))
    if stored.get("temperature") is None:
        stored["temperature"] = SynthSettings().temperature
    return SynthSettings(**stored)


def reverify(workdir: str, settings: SynthSettings | None = None) -> VerifyReport:
    settings = settings or settings_of_run(workdir)
    checker = AnswerChecker.from_settings(settings)
    reference_check = settings.check_aus == "exact" and settings.check_label and not settings.ban_hedges
    failures: list[str] = []
    ids: dict[str, str] = {}
    texts: dict[str, str] = {}
    accepted = rejected = 0
    for kind in ("accepted", "rejected"):
        for path in shard_files(workdir, kind):
            for record in read_jsonl(path).records:
                if record.id in ids:
                    failures.append(f"{record.id}: in {os.path.basename(path)} and {ids[record.id]}")
                ids[record.id] = os.path.basename(path)
                if kind == "rejected":
                    rejected += 1
                    continue
                accepted += 1
                if reference_check:
                    problems = check_synthesis(record.description, record.aus, record.label,
                                               require_format=settings.require_format)
                else:
                    problems = list(checker.check(record.description, record).problems)
                if problems:
                    failures.append(f"{record.id}: {'; '.join(problems)}")
                key = description_key(record.description)
                if settings.dedup_descriptions and key in texts:
                    failures.append(f"{record.id}: same description as {texts[key]}")
                texts.setdefault(key, record.id)
    return VerifyReport(accepted=accepted, rejected=rejected, failures=tuple(failures))
