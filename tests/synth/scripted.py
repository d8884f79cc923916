"""Test doubles for stage 3: small labelled records with images, and a scripted candidate source.

`ScriptedSource` stands in for the model: it reads each prompt's record and the attempt number
(from the call's key path) and answers according to a plan, so a test knows exactly which record should be accepted at which attempt.
A correct answer is written by the built-in reasoning writer from the record's own ground truth;
wrong answers drop an AU, add one, or name another emotion.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.data.examples import EncodingConfig
from facialr1_jax.data.reasoning import write_description
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.fea.records import FEARecord
from facialr1_jax.synth.generation import Candidate, PromptEncoder

# (dataset, AUs, labels) cycled over the records: both, AU-only and emotion-only, as in the demo set.
_KINDS = (
    ("synthface", ("AU6", "AU12"), ("happiness",)),
    ("synthface-AU", ("AU1", "AU2", "AU5", "AU26"), ()),
    ("synthface-emotion", (), ("sadness",)),
    ("synthface", ("AU4", "AU5", "AU7", "AU23"), ("anger",)),
    ("synthface", ("AU9", "AU15", "AU16"), ("disgust",)),
)


def make_records(count: int) -> list[FEARecord]:
    records = []
    for index in range(count):
        dataset, aus, labels = _KINDS[index % len(_KINDS)]
        records.append(FEARecord(id=f"rec-{index:03d}", dataset=dataset, images=(f"img/{index}.jpg",),
                                 question="" if index % 2 else "<image>\nWhat emotion does this person show?",
                                 aus=aus, labels=labels, meta_info={"source_index": index}))
    return records


def record_images(index: int) -> list[np.ndarray]:
    rng = np.random.default_rng(index)
    return [rng.integers(0, 256, size=(56, 56, 3), dtype=np.uint8)]


def encoder(max_prompt_tokens: int = 1024, variant: str = "compact") -> PromptEncoder:
    return PromptEncoder(tokenizer_lib.load_tokenizer(),
                         EncodingConfig(prompt_variant=variant, max_prompt_tokens=max_prompt_tokens))


def correct_answer(record: FEARecord, variation: int = 0) -> str:
    emotion = record.label or "neutral"
    return write_description(emotion, record.aus, np.random.default_rng([int(record.id[-3:]), variation]))


def wrong_answer(record: FEARecord, attempt: int) -> str:
    """A well-formed answer with one defect that the exact check catches."""
    emotion = record.label or "neutral"
    aus = list(record.aus)
    if attempt % 2 == 1 and aus:
        aus = aus[:-1] if len(aus) > 1 else ["AU25"] if aus != ["AU25"] else ["AU26"]
    elif record.label:
        emotion = next(e for e in EMOTIONS if e != record.label)
    else:
        aus = aus + ["AU43"]
    return write_description(emotion, aus, np.random.default_rng([int(record.id[-3:]), 99]))


@dataclasses.dataclass
class ScriptedSource:
    """Answers per plan: record i passes at attempt `plan(i)` (None = never). Records every call."""

    plan: callable
    calls: list = dataclasses.field(default_factory=list)
    fail_after_calls: int | None = None  # raise on this call (0-based), to simulate a killed job
    candidates: int = 1

    def __call__(self, prompts, key_path):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append((tuple(key_path), [(p.record.id, p.instruction) for p in prompts]))
        out = []
        for prompt in prompts:
            record = prompt.record
            attempt = key_path[2]  # (round, block, attempt, batch)
            target = self.plan(int(record.id[-3:]))
            if target is not None and attempt >= target:
                # a duplicate-description problem in the feedback asks for new words
                variation = prompt.instruction.count("repeats word for word")
                text = correct_answer(record, variation)
            else:
                text = wrong_answer(record, attempt)
            batch = [Candidate(text, True)]
            if self.candidates > 1:
                batch = [Candidate(wrong_answer(record, attempt), True)] * (self.candidates - 1) + batch
            out.append(batch)
        return out
