"""Per-dataset facts: which emotion labels exist, which AUs are annotated and which are evaluated.

Numbers as in docs/METHOD.md 2.4 (emotion vocabularies, and evaluated AU subsets: the standard
protocols of the AU literature); the built-in synthetic set (`synthface`) uses all eight emotions
and the 20 AUs its renderer draws.

Conventions of `DatasetProfile`:
  * `labels`: the emotions that occur as ground truth, in `EMOTIONS` order; () for AU-only sets.
  * `eval_aus`: the AUs the benchmark protocol scores. () means the set is not an AU benchmark
    (emotion-only). None means there is no fixed list: score the AUs present in the test ground
    truth (RAF-AU and the mixed FEA-20K, docs/METHOD.md 2.4) - see `DatasetProfile.au_eval_list`.
  * `annotated_aus`: the AUs the source annotates; () for emotion-only sets, None when it varies
    per record (RAF-AU, FEA-20K).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

from facialr1_jax.fea.aus import au_name, parse_au_codes, sort_aus
from facialr1_jax.fea.emotions import EMOTIONS


def _aus(*numbers: int) -> tuple[str, ...]:
    return tuple(au_name(number) for number in sorted(numbers))


def _emotions_without(*excluded: str) -> tuple[str, ...]:
    return tuple(emotion for emotion in EMOTIONS if emotion not in excluded)


@dataclasses.dataclass(frozen=True)
class DatasetProfile:
    """What one source dataset provides and how it is scored (see the module docstring)."""

    name: str
    labels: tuple[str, ...]
    eval_aus: tuple[str, ...] | None
    annotated_aus: tuple[str, ...] | None
    aliases: tuple[str, ...] = ()
    description: str = ""

    @property
    def has_emotion_labels(self) -> bool:
        return bool(self.labels)

    @property
    def is_au_benchmark(self) -> bool:
        return self.eval_aus != ()

    def au_eval_list(self, ground_truth_au_sets: Iterable[Iterable[str]] = ()) -> tuple[str, ...]:
        """The AUs to binarise over for AU F1 (docs/METHOD.md 9.2).

        The fixed protocol list when there is one; otherwise the union of the AUs in the given
        ground truth (RAF-AU and FEA-20K, docs/METHOD.md 2.4).
        """
        if self.eval_aus is not None:
            return self.eval_aus
        present: set[str] = set()
        for aus in ground_truth_au_sets:
            present.update(parse_au_codes(list(aus)))
        return sort_aus(present)


_SYNTHFACE_AUS = _aus(1, 2, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 20, 22, 23, 24, 25, 26, 27, 43)
_DISFA_ANNOTATED = _aus(1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
_BP4D_AUS = _aus(1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
_FABA_AUS = _aus(1, 2, 4, 5, 6, 10, 12, 17, 24, 25, 26, 43)

_PROFILE_LIST: tuple[DatasetProfile, ...] = (
    DatasetProfile(
        name="DISFA",
        labels=(),
        eval_aus=_aus(1, 2, 4, 6, 9, 12, 25, 26),
        annotated_aus=_DISFA_ANNOTATED,
        description="AU-only; 12 AUs annotated, the standard protocol scores 8",
    ),
    DatasetProfile(
        name="BP4D",
        labels=(),
        eval_aus=_BP4D_AUS,
        annotated_aus=_BP4D_AUS,
        description="AU-only; the standard 12-AU protocol",
    ),
    DatasetProfile(
        name="RAF-AU",
        labels=_emotions_without("contempt", "neutral"),
        eval_aus=None,
        annotated_aus=None,
        description="AUs plus 6 emotions; AU F1 over the AUs present in the test ground truth",
    ),
    DatasetProfile(
        name="FABA",
        labels=_emotions_without("contempt"),
        eval_aus=_FABA_AUS,
        annotated_aus=_FABA_AUS,
        aliases=("FABA-Bench", "FABA-Instruct"),
        description="FABA-Bench / FABA-Instruct: 7 emotions and 12 AUs",
    ),
    DatasetProfile(
        name="FER2013",
        labels=_emotions_without("contempt"),
        eval_aus=(),
        annotated_aus=(),
        description="emotion-only, 7 classes",
    ),
    DatasetProfile(
        name="AffectNet",
        labels=EMOTIONS,
        eval_aus=(),
        annotated_aus=(),
        description="emotion-only, 8 classes",
    ),
    DatasetProfile(
        name="RAF-DB",
        labels=_emotions_without("contempt"),
        eval_aus=(),
        annotated_aus=(),
        description="emotion-only, 7 classes",
    ),
    DatasetProfile(
        name="FEA-20K",
        labels=EMOTIONS,
        eval_aus=None,
        annotated_aus=None,
        description="the Facial-R1 release: a mix of the sets above with reasoning text",
    ),
    DatasetProfile(
        name="synthface",
        labels=EMOTIONS,
        eval_aus=_SYNTHFACE_AUS,
        annotated_aus=_SYNTHFACE_AUS,
        description="the built-in synthetic FACS faces: 8 emotions, the 22 AUs the renderer draws",
    ),
)


def _key(name: str) -> str:
    """Lookup key: case and punctuation do not matter ("RAF-DB" == "rafdb" == "raf_db")."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


PROFILES: dict[str, DatasetProfile] = {profile.name: profile for profile in _PROFILE_LIST}

_PROFILES_BY_KEY: dict[str, DatasetProfile] = {
    _key(spelling): profile
    for profile in _PROFILE_LIST
    for spelling in (profile.name, *profile.aliases)
}


class UnknownDatasetError(KeyError):
    """A dataset name that matches no profile; the message lists the known names."""

    def __init__(self, name: object):
        self.name = name
        known = ", ".join(
            spelling for profile in _PROFILE_LIST for spelling in (profile.name, *profile.aliases)
        )
        super().__init__(f"unknown dataset {name!r}; known datasets: {known}")

    def __str__(self) -> str:  # KeyError would otherwise print the message in quotes
        return self.args[0]


def find_profile(name: str | None) -> DatasetProfile | None:
    """The profile for `name` (case and punctuation ignored), or None when there is none."""
    if not isinstance(name, str):
        return None
    return _PROFILES_BY_KEY.get(_key(name))


def get_profile(name: str) -> DatasetProfile:
    """The profile for `name` (case and punctuation ignored); UnknownDatasetError otherwise."""
    profile = find_profile(name)
    if profile is None:
        raise UnknownDatasetError(name)
    return profile


def labels_for(dataset: str | None) -> tuple[str, ...]:
    """The allowed answer list to put in a prompt for a record of `dataset`.

    Decision: every answer ends with one emotion word (docs/METHOD.md section 1), so a prompt always needs
    a list. A known dataset with emotion labels gives its own vocabulary (docs/METHOD.md 2.4). AU-only
    datasets (DISFA, BP4D) and datasets without a profile (the `dataset` field is free text in
    the FEA schema) give all eight emotions: the model still has to name one, and no label set
    narrower than the union is known to be right for them.
    """
    profile = find_profile(dataset)
    if profile is None or not profile.labels:
        return EMOTIONS
    return profile.labels
