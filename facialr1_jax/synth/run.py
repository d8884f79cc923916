"""Stage 3: annotate labelled records with verified reasoning written by the model itself
(docs/METHOD.md section 8).

    python launch/train.py --config=configs/synth.py --workdir=W --config.synth.checkpoint=workdirs/grpo

`run_synthesis(config, workdir)`:
  1. settings (`config.synth`, checked before anything loads) and inputs: `synth.input_jsonl`
     (images under `data.image_root`) or the built-in stage 2 split, the first `synth.max_records`;
     records whose id appears in `synth.known_jsonl` (already annotated) are skipped;
  2. the model: `synth.checkpoint` (else `model.checkpoint`): a step folder, a training workdir
     (its latest checkpoint) or a Hugging Face folder; prompts are encoded as that checkpoint was
     trained (prompt variant, image pixels), with the budget `synth.max_prompt_tokens`;
  3. per block of `synth.shard_size` inputs (`annotate_block`): up to `synth.max_attempts`
     attempts; every attempt sends all still-unaccepted records of the block through the engine in
     batches of `synth.batch_size` (greedy, or `synth.num_candidates` samples each), checks every
     candidate (`checks.AnswerChecker`; the first passing one is kept) and gives the rejected
     ones the feedback section for the next attempt;
  4. the block's accepted and rejected records go to WORKDIR/accepted-<b>.jsonl and
     rejected-<b>.jsonl, then the manifest marks it done (`shards.ShardStore`): a killed run
     resumes at the first unfinished block and ends with the same files as an uninterrupted one;
  5. the round's yield report (`stats`): synth_stats.json / .md and synth_yield.png.

Accepted records are the input records in the FEA schema with `description` set to the accepted
answer and `meta_info["synthesis"]` = {round, attempt, candidate, checkpoint, checkpoint_step,
decoding}. Rejected records keep their (empty) description; their `meta_info["synthesis"]` lists
every attempt's answer, problems and problem categories.

De-duplication: an input whose id is already annotated (known_jsonl) is skipped, and with
`synth.dedup_descriptions` an answer whose text (case and spacing ignored) was already kept for
another record, in this run or in known_jsonl, fails its check and is retried with feedback.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from facialr1_jax.config_validation import ConfigError
from facialr1_jax.fea.records import FEARecord, read_jsonl
from facialr1_jax.models import bound_frame_patches
from facialr1_jax.synth import checks as checks_lib
from facialr1_jax.synth import stats as stats_lib
from facialr1_jax.synth.attempts import Acceptance, Attempt, RecordJob
from facialr1_jax.synth.generation import Candidate, CandidateSource, PromptEncoder
from facialr1_jax.synth.settings import SynthSettings
from facialr1_jax.synth.shards import ShardStore, input_digest

_log = logging.getLogger(__name__)

PROVENANCE_KEY = stats_lib.PROVENANCE_KEY


# ------------------------------------------------------------------------------- known records
@dataclasses.dataclass
class Taken:
    """Ids already annotated and description texts already kept (key -> the record holding it)."""

    ids: set[str] = dataclasses.field(default_factory=set)
    descriptions: dict[str, str] = dataclasses.field(default_factory=dict)

    def add(self, record: FEARecord) -> None:
        self.ids.add(record.id)
        if record.description.strip():
            self.descriptions.setdefault(checks_lib.description_key(record.description), record.id)

    def digest(self) -> str:
        """A fingerprint of what is taken (the known files change which inputs are skipped)."""
        digest = hashlib.sha256()
        for item in sorted(self.ids):
            digest.update(b"i" + item.encode("utf-8") + b"\n")
        for key in sorted(self.descriptions):
            digest.update(b"d" + key.encode("utf-8") + b"\n")
        return digest.hexdigest()


def read_known(paths: Sequence[str]) -> Taken:
    """The ids and descriptions of already annotated records (FEA JSONL files, validated)."""
    taken = Taken()
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"config.synth.known_jsonl: {path} does not exist")
        for record in read_jsonl(path).records:
            taken.add(record)
    return taken


# ------------------------------------------------------------------------------------ one block
def judge_candidates(job: RecordJob, attempt: int, candidates: Sequence[Candidate], *,
                     checker: checks_lib.AnswerChecker, taken: Taken | None, max_new_tokens: int) -> None:
    """Checks an attempt's candidates in order; keeps the first that passes, else records the
    attempt with the candidate that has the fewest problems (its answer is quoted in the feedback)."""
    best: Attempt | None = None
    for index, candidate in enumerate(candidates):
        text = candidate.text.strip()
        result = checker.check(text, job.record)
        problems, categories = list(result.problems), list(result.categories)
        if not problems and taken is not None:
            owner = taken.descriptions.get(checks_lib.description_key(text))
            if owner is not None and owner != job.record.id:
                problems.append(checks_lib.duplicate_problem(owner))
                categories.append(checks_lib.DUPLICATE)
        if not problems:
            job.accepted = Acceptance(attempt=attempt, candidate=index, answer=text)
            if taken is not None:
                taken.descriptions[checks_lib.description_key(text)] = job.record.id
            return
        if not candidate.finished:
            problems.append(f"the reply did not end within {max_new_tokens} tokens; write one shorter paragraph")
            categories.append(checks_lib.UNFINISHED)
        if best is None or len(problems) < len(best.problems):
            best = Attempt(number=attempt, answer=text, problems=tuple(problems), categories=tuple(categories))
    assert best is not None, "an attempt needs at least one candidate"
    job.attempts.append(best)


def annotate_block(jobs: Sequence[RecordJob], *, generate: CandidateSource, encoder: PromptEncoder,
                   checker: checks_lib.AnswerChecker, settings: SynthSettings, variant: str, taken: Taken | None,
                   key_path: tuple[int, ...], on_batch: Callable[[int, int], None] | None = None) -> None:
    """Runs the attempts of one block in place (each job ends accepted or with its attempts).

    Attempt n batches the jobs still open, in input order, `settings.batch_size` at a time; the
    candidate source gets key path `key_path + (n, batch)`. on_batch(attempt, finished jobs) is
    called after every batch.
    """
    for attempt in range(1, settings.max_attempts + 1):
        ready: list[tuple[RecordJob, str]] = []
        for job in jobs:
            if job.finished:
                continue
            text, dropped = job.instruction(variant, settings.feedback_history, lambda t, j=job: encoder.fits(j, t),
                                            mode=settings.prompt_mode)
            if text is None:
                job.given_up = (f"the {settings.prompt_mode} prompt alone exceeds synth.max_prompt_tokens = "
                                f"{settings.max_prompt_tokens}")
                continue
            if dropped:
                _log.debug("record %s: %d oldest feedback sections dropped to fit the prompt", job.record.id, dropped)
            ready.append((job, text))
        if not ready:
            break
        for batch_index, start in enumerate(range(0, len(ready), settings.batch_size)):
            chunk = ready[start:start + settings.batch_size]
            prompts = [encoder.encode(job, text) for job, text in chunk]
            results = generate(prompts, key_path + (attempt, batch_index))
            if len(results) != len(chunk):
                raise RuntimeError(f"the candidate source returned {len(results)} results for {len(chunk)} prompts")
            for (job, _), candidates in zip(chunk, results):
                judge_candidates(job, attempt, candidates, checker=checker, taken=taken,
                                 max_new_tokens=settings.max_new_tokens)
            if on_batch is not None:
                on_batch(attempt, sum(job.finished for job in jobs))
    for job in jobs:
        encoder.forget(job)


def output_records(jobs: Sequence[RecordJob], provenance: dict[str, Any]) -> tuple[list[FEARecord], list[FEARecord]]:
    """(accepted, rejected) FEA records of a finished block, in input order."""
    accepted, rejected = [], []
    for job in sorted(jobs, key=lambda j: j.index):
        record = job.record
        if job.accepted is not None:
            meta = {**provenance, "attempt": job.accepted.attempt, "candidate": job.accepted.candidate}
            accepted.append(record.replace(description=job.accepted.answer,
                                           meta_info={**record.meta_info, PROVENANCE_KEY: meta}))
        else:
            meta = {**provenance, "status": "rejected", "attempts": [a.to_json() for a in job.attempts]}
            if job.given_up is not None:
                meta.update(category=checks_lib.PROMPT_TOO_LONG, reason=job.given_up)
            rejected.append(record.replace(meta_info={**record.meta_info, PROVENANCE_KEY: meta}))
    return accepted, rejected


# ----------------------------------------------------------------------------------- a whole run
class _Progress:
    """Console progress over the input records: blocks, attempt, accepted, yield, rate and ETA."""

    def __init__(self, total: int, already_done: int, enabled: bool):
        from facialr1_jax.train.metrics import ProgressBar, format_duration

        self.format_duration = format_duration
        self.bar = ProgressBar(total) if enabled else None
        self.total = total
        self.done_before = already_done
        self.start = time.perf_counter()

    def update(self, done: int, fields: dict[str, str]) -> None:
        if self.bar is None:
            return
        elapsed = time.perf_counter() - self.start
        new = done - self.done_before
        if new > 0 and elapsed > 0:
            rate = new / elapsed
            fields = {**fields, "rec/s": f"{rate:.2f}", "ETA": self.format_duration((self.total - done) / rate)}
        self.bar.update(done, fields)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.finish()


@dataclasses.dataclass(frozen=True)
class SynthesisInputs:
    """The records to annotate and how to get each one's images (`images(i)` for record i)."""

    records: tuple[FEARecord, ...]
    images: Callable[[int], Sequence[Any]]


def _take_finished_blocks(store: ShardStore, records: Sequence[FEARecord], shard_size: int, taken: Taken) -> None:
    """Adds to `taken` what an uninterrupted run would have taken by the first unfinished block:
    every input id of the finished blocks, and the descriptions they accepted."""
    for block in sorted(store.blocks):
        for index in range(block * shard_size, min((block + 1) * shard_size, len(records))):
            taken.ids.add(records[index].id)
        for record in store.read_block(block)[0]:
            taken.add(record)


def synthesize(inputs: SynthesisInputs, *, generate: CandidateSource, encoder: PromptEncoder, settings: SynthSettings,
               workdir: str, model_fingerprint: dict[str, Any], provenance: dict[str, Any], taken: Taken,
               progress: bool = False, is_main: bool = True, write_report: bool = True,
               plot: bool = True) -> dict[str, Any]:
    """Annotates `inputs` block by block into `workdir`, resuming after the blocks already done.

    `taken` holds the already annotated ids and kept descriptions (it is extended with this
    run's acceptances). Returns the round's statistics (also written as the yield report, with its
    plot unless `plot` is False).
    """
    records = inputs.records
    num_blocks = max(1, -(-len(records) // settings.shard_size))
    fingerprint = {
        "inputs": input_digest(records),
        "num_inputs": len(records),
        "known": taken.digest(),
        "settings": settings.output_fingerprint(),
        "model": model_fingerprint,
    }
    os.makedirs(workdir, exist_ok=True)
    store = ShardStore(workdir, fingerprint, num_blocks, writable=is_main)
    store.ensure_manifest()
    checker = checks_lib.AnswerChecker.from_settings(settings)
    variant = encoder.encoding.prompt_variant
    dedup = taken if settings.dedup_descriptions else None
    _take_finished_blocks(store, records, settings.shard_size, taken)
    done_before = sum(min(settings.shard_size, len(records) - b * settings.shard_size) for b in store.blocks)
    if store.blocks:
        _log.info("synthesis: resuming in %s with %d of %d blocks done", workdir, len(store.blocks), num_blocks)
    bar = _Progress(len(records), done_before, enabled=progress and is_main)
    done = done_before
    totals = {"accepted": sum(s.accepted for s in store.blocks.values()),
              "annotated": sum(s.accepted + s.rejected for s in store.blocks.values())}
    for block in range(num_blocks):
        if store.is_done(block):
            continue
        started = time.perf_counter()
        first = block * settings.shard_size
        indices = range(first, min(first + settings.shard_size, len(records)))
        jobs, skipped = [], 0
        for index in indices:
            record = records[index]
            if record.id in taken.ids:
                skipped += 1
                continue
            taken.ids.add(record.id)  # a repeated id later in the input is skipped as well
            jobs.append(RecordJob(index=index, record=record, images=inputs.images(index)))

        def on_batch(attempt: int, finished: int, block=block, skipped=skipped, jobs=jobs) -> None:
            accepted_now = totals["accepted"] + sum(job.accepted is not None for job in jobs)
            annotated_now = totals["annotated"] + finished
            bar.update(done + skipped + finished, {
                "block": f"{block + 1}/{num_blocks}", "attempt": str(attempt), "accepted": str(accepted_now),
                "yield": f"{100 * accepted_now / max(annotated_now, 1):.1f}%"})

        annotate_block(jobs, generate=generate, encoder=encoder, checker=checker, settings=settings, variant=variant,
                       taken=dedup, key_path=(settings.round, block), on_batch=on_batch)
        accepted, rejected = output_records(jobs, provenance)
        summary = store.write_block(block, accepted, rejected, skipped=skipped, seconds=time.perf_counter() - started)
        done += len(indices)
        totals["accepted"] += summary.accepted
        totals["annotated"] += summary.accepted + summary.rejected
        _log.info("synthesis block %d/%d: %d accepted, %d rejected, %d skipped in %.1f s", block + 1, num_blocks,
                  summary.accepted, summary.rejected, summary.skipped, summary.seconds)
    bar.finish()

    accepted, rejected = store.finished_records()
    stats = stats_lib.round_statistics(
        accepted, rejected, skipped=sum(s.skipped for s in store.blocks.values()), max_attempts=settings.max_attempts,
        round_number=settings.round,
        extra={"inputs": len(records), "checkpoint": provenance.get("checkpoint", ""),
               "decoding": provenance.get("decoding", ""), "workdir": os.path.abspath(workdir),
               "seconds": round(sum(s.seconds for s in store.blocks.values()), 1)})
    if is_main and write_report:
        stats["files"] = stats_lib.write_statistics(workdir, stats, plot=plot)
    return stats


# ------------------------------------------------------------------------------- the stage entry
def _input_config(config: Any, settings: SynthSettings) -> Any:
    """The config whose "rl" split is the synthesis input (input_jsonl replaces the data source)."""
    if not settings.input_jsonl:
        return config
    if not config.data.image_root:
        raise ConfigError("config.synth.input_jsonl needs config.data.image_root (the folder its image paths "
                          "are relative to)")
    loaded = copy.deepcopy(config)
    with loaded.unlocked():
        loaded.data.source = "jsonl"
        loaded.data.train_jsonl = settings.input_jsonl
    return loaded


def load_inputs(config: Any, settings: SynthSettings, workdir: str) -> SynthesisInputs:
    """The input records (first `max_records`) and their images, validated by `data.datasets`."""
    from facialr1_jax.data import datasets
    from facialr1_jax.data.pipeline import element_images

    split = datasets.load_split(_input_config(config, settings), "rl", workdir=workdir)
    count = len(split) if settings.max_records <= 0 else min(settings.max_records, len(split))
    source = split.source
    return SynthesisInputs(records=tuple(split.records[:count]), images=lambda i: element_images(source[i]))


def model_checkpoint(config: Any, settings: SynthSettings) -> str:
    checkpoint = settings.checkpoint or config.model.checkpoint
    if not checkpoint:
        raise ConfigError("stage 3 needs a model: set config.synth.checkpoint to a checkpoint, a training workdir "
                          "(e.g. workdirs/grpo) or a Hugging Face folder")
    return checkpoint


def run_synthesis(config: Any, workdir: str) -> dict[str, Any]:
    """Runs stage 3 into `workdir` (resuming a run found there); returns the round's statistics."""
    import jax

    from facialr1_jax.data import tokenizer as tokenizer_lib
    from facialr1_jax.eval.runner import encoding_for
    from facialr1_jax.synth.generation import ModelGenerator
    from facialr1_jax.train.checkpoint import load_model
    from facialr1_jax.train.sft import mesh_from_config

    settings = SynthSettings.from_config(config)
    checkpoint = model_checkpoint(config, settings)
    _input_config(config, settings)  # a missing image root is reported before the model loads
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    taken = read_known(settings.known_jsonl)
    inputs = load_inputs(config, settings, workdir)

    model, tokenizer, info = load_model(checkpoint, mesh=mesh_from_config(config), dtype=config.model.dtype,
                                        param_dtype=config.model.param_dtype)
    if config.model.tokenizer:
        tokenizer = tokenizer_lib.load_tokenizer(config.model.tokenizer)
    encoding = encoding_for(info, config.data)
    bound_frame_patches(model, encoding.image.max_pixels)  # frames are resized to at most this
    encoding = dataclasses.replace(encoding, max_prompt_tokens=settings.max_prompt_tokens,
                                   prompt_variant=settings.prompt_variant or encoding.prompt_variant)
    generator = ModelGenerator(model, tokenizer, batch_size=settings.batch_size,
                               max_new_tokens=settings.max_new_tokens, max_prompt_tokens=settings.max_prompt_tokens,
                               num_candidates=settings.num_candidates, temperature=settings.temperature,
                               seed=settings.seed)
    decoding = "greedy" if settings.greedy else (f"{settings.num_candidates} samples at temperature "
                                                 f"{settings.temperature:g}")
    provenance = {"round": settings.round, "checkpoint": info["path"], "checkpoint_step": info["step"],
                  "decoding": decoding}
    _log.info("synthesis round %d: %d input records, model %s (step %s), %s, %s prompts, up to %d attempts",
              settings.round, len(inputs.records), info["path"], info["step"], decoding, encoding.prompt_variant,
              settings.max_attempts)
    stats = synthesize(inputs, generate=generator, encoder=PromptEncoder(tokenizer, encoding), settings=settings,
                       workdir=workdir, model_fingerprint={"path": info["path"], "step": info["step"]},
                       provenance=provenance, taken=taken, progress=bool(config.logging.progress_bar),
                       is_main=is_main)
    if is_main:
        print(f"synthesis round {settings.round}: {stats['accepted']} of {stats['annotated']} records accepted "
              f"({100 * (stats['yield'] or 0):.1f}%), {stats['skipped']} skipped; report: "
              f"{stats.get('files', {}).get('markdown', '-')}", flush=True)
    return stats
