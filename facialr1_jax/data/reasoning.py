"""Reasoning text for synthetic records: AU-grounded descriptions in the Facial-R1 answer format.

Stage 1 trains on ~300 descriptions and the test split is scored with ROUGE-L against them, so the
built-in data set needs descriptions that look like the ones a strong VLM writes for FEA-20K
(docs/METHOD.md sections 1 and 3): one paragraph inside think tags that names each visible
feature with its AU number in parentheses, e.g. "the brows are lowered and drawn together (AU4)",
then a sentence that links the AUs to the emotion, then the emotion word inside answer tags:

    <think>...</think>
    <answer>emotion</answer>

Rules the writer keeps (the tests check every one on many samples):
  * the AU numbers mentioned are exactly the record's labelled AUs, so the answer earns the full
    AU reward against its own labels, and the answer tag holds the label (accuracy reward 1);
  * the whole text matches the format reward's pattern;
  * no negations or hedges ("no", "not", "without", "maybe", "n't"; `BANNED_WORDS`), as the
    prompt requires;
  * about 40-80 words, so a demo model can learn them on a small CPU.
Wording varies: several phrasings per AU, several openers and linking sentences, and a different
sentence split when there are many AUs. Sub-threshold AUs (drawn faintly, never labelled) appear
only as faint cues without AU numbers, e.g. for a subtle expression.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from facialr1_jax.fea.emotions import EMOTIONS

# Words the prompt forbids in the reasoning (docs/METHOD.md 3.2), matched as whole words, any case.
BANNED_WORDS: tuple[str, ...] = ("no", "not", "without", "maybe", "never", "none", "perhaps")
BANNED_PATTERN = re.compile(r"\b(?:" + "|".join(BANNED_WORDS) + r")\b|n't\b", re.IGNORECASE)

# Face regions in reading order (top to bottom); clauses are grouped and ordered by them.
REGION_OF: dict[str, int] = {
    "AU1": 0, "AU2": 0, "AU4": 0, "AU5": 1, "AU6": 1, "AU7": 1, "AU43": 1, "AU9": 2, "AU11": 2,
    "AU10": 3, "AU12": 3, "AU14": 3, "AU15": 3, "AU16": 3, "AU20": 3, "AU22": 3, "AU23": 3,
    "AU24": 3, "AU25": 3, "AU26": 4, "AU27": 4, "AU17": 4,
}  # fmt: skip

# Clauses describing each AU (the AU number is appended in parentheses). The first is the
# shortest and is used when many AUs must fit.
AU_CLAUSES: dict[str, tuple[str, ...]] = {
    "AU1": ("the inner brows are raised", "the inner corners of the brows lift upward",
            "the inner ends of the brows are drawn up"),
    "AU2": ("the outer brows are raised", "the outer ends of the brows lift into an arch",
            "the brows arch upward at their outer ends"),
    "AU4": ("the brows are lowered", "the brows are pulled down and together",
            "the brows are drawn together with a furrow between them"),
    "AU5": ("the upper lids are raised", "the eyes widen with white showing above the iris",
            "the upper eyelids lift to widen the eyes"),
    "AU6": ("the cheeks are raised", "the cheeks lift and crow's feet form at the eye corners",
            "the raised cheeks narrow the eyes from below"),
    "AU7": ("the lower lids are tightened", "the eyelids tighten and narrow the eyes",
            "the lower lids are tensed and pushed up"),
    "AU9": ("the nose is wrinkled", "wrinkles run across the bridge of the nose",
            "the nose wrinkles and the nostrils lift"),
    "AU10": ("the upper lip is raised", "the upper lip lifts to show the upper teeth",
             "the upper lip is drawn upward"),
    "AU11": ("the nasolabial furrows deepen", "the lines from the nose to the mouth corners deepen",
             "the nasolabial folds are pronounced"),
    "AU12": ("the lip corners are pulled up", "the mouth corners are drawn up and back",
             "the lip corners rise into a smile"),
    "AU14": ("the mouth corners dimple", "the lip corners tighten into dimples",
             "the mouth corners are drawn inward with dimples"),
    "AU15": ("the lip corners are pulled down", "the mouth corners turn downward",
             "the lip corners are drawn down"),
    "AU16": ("the lower lip is pulled down", "the lower lip drops to show the lower teeth",
             "the lower lip is pushed downward"),
    "AU17": ("the chin is raised", "the chin boss pushes the lower lip up",
             "the chin is pushed upward and dimpled"),
    "AU20": ("the lips are stretched sideways", "the mouth is stretched horizontally",
             "the lip corners are pulled outward"),
    "AU22": ("the lips funnel outward", "the lips push forward into a funnel",
             "the lips are rounded and pushed out"),
    "AU23": ("the lips are tightened", "the lips are narrowed and tense",
             "the lips tighten and their red thins"),
    "AU24": ("the lips are pressed together", "the lips press firmly together",
             "the lips are compressed against each other"),
    "AU25": ("the lips are parted", "the lips part slightly", "a gap opens between the lips"),
    "AU26": ("the jaw drops", "the jaw is lowered and the mouth hangs open",
             "the mouth falls open as the jaw drops"),
    "AU27": ("the mouth is stretched open", "the mouth opens wide", "the jaw is pulled far down"),
    "AU43": ("the eyes are closed", "the eyelids are shut", "the eyes close fully"),
}  # fmt: skip
# One-sided versions for AUs that appear on one side only ("R12", "L14").
ONE_SIDED_CLAUSES: dict[str, tuple[str, ...]] = {
    "AU12": ("one lip corner is pulled up", "the lip corner on one side is drawn up",
             "one side of the mouth rises"),
    "AU14": ("one mouth corner dimples", "the lip corner on one side tightens into a dimple",
             "one mouth corner is drawn inward"),
    "AU20": ("one lip corner is stretched outward", "the mouth is stretched toward one side"),
    "AU15": ("one lip corner is pulled down", "the mouth corner on one side turns down"),
}  # fmt: skip
# Noun phrases for the linking sentence and for faint cues.
AU_NOUNS: dict[str, str] = {
    "AU1": "raised inner brows", "AU2": "raised outer brows", "AU4": "lowered brows",
    "AU5": "widened eyes", "AU6": "lifted cheeks", "AU7": "tightened lids",
    "AU9": "a wrinkled nose", "AU10": "a raised upper lip", "AU11": "deep nasolabial furrows",
    "AU12": "raised lip corners", "AU14": "dimpled mouth corners", "AU15": "downturned lip corners",
    "AU16": "a lowered lower lip", "AU17": "a raised chin", "AU20": "stretched lips",
    "AU22": "funneled lips", "AU23": "tightened lips", "AU24": "pressed lips",
    "AU25": "parted lips", "AU26": "a dropped jaw", "AU27": "a wide-open mouth",
    "AU43": "closed eyes",
}  # fmt: skip
ONE_SIDED_NOUNS: dict[str, str] = {
    "AU12": "a lip corner raised on one side",
    "AU14": "a one-sided dimple",
    "AU20": "a lip corner stretched to one side",
    "AU15": "a lip corner pulled down on one side",
}

# The AUs whose presence supports each emotion (the union of its prototype and variant
# rows, docs/METHOD.md 2.5); these are the cues the linking sentence names.
EMOTION_CUES: dict[str, frozenset[str]] = {
    "anger": frozenset({"AU4", "AU5", "AU7", "AU10", "AU17", "AU22", "AU23", "AU24"}),
    "contempt": frozenset({"AU12", "AU14"}),
    "disgust": frozenset({"AU9", "AU10", "AU15", "AU16", "AU17"}),
    "fear": frozenset({"AU1", "AU2", "AU4", "AU5", "AU20", "AU25", "AU26", "AU27"}),
    "happiness": frozenset({"AU6", "AU12"}),
    "neutral": frozenset(),
    "sadness": frozenset({"AU1", "AU4", "AU6", "AU11", "AU15", "AU17"}),
    "surprise": frozenset({"AU1", "AU2", "AU5", "AU26", "AU27"}),
}

_OPENERS = ("", "", "In this face, ", "Looking at the face, ", "Here, ")
# What each emotion looks like as a whole; the linking sentence names it after the cues.
_EMOTION_GLOSS: dict[str, tuple[str, ...]] = {
    "anger": ("the hard, glaring look of someone confronting a threat",
              "a tense stare with tightly controlled features"),
    "contempt": ("a one-sided sneer of superiority", "the lopsided mouth of scorn"),
    "disgust": ("a recoil from something offensive", "the pulled-up look of revulsion"),
    "fear": ("a tense, alarmed look braced for danger", "the strained, wide-eyed look of alarm"),
    "happiness": ("the warm, lifted look of a genuine smile", "a relaxed and pleased smile"),
    "neutral": ("a calm, composed look", "an even, resting look"),
    "sadness": ("a downcast, drooping look", "the heavy, drawn look of grief"),
    "surprise": ("a sudden, open look of astonishment", "the startled, wide-open look of a sudden event"),
}  # fmt: skip
_LINKS = (
    "Together, {cues} create {gloss}, which indicates {emotion}.",
    "This combination of {cues} gives {gloss}, so the emotion is {emotion}.",
    "{Cues} form {gloss}, the typical pattern of {emotion}.",
    "Taken together, {cues} express {emotion}, with {gloss}.",
)
# Links for faces whose labelled AUs are all unrelated to the emotion.
_CONFIGURATION_LINKS = (
    "The overall configuration of the face points to {emotion}.",
    "Read as a whole, the face expresses {emotion}.",
)
_FAINT_LINKS_AFTER_FEATURES = (
    "Together with {faint}, the face leans toward {emotion}.",
    "Alongside {faint}, the overall pattern points to {emotion}.",
)
# Regions the AUs leave untouched are described as relaxed (upper face: brows and eyes).
_UPPER_REST = (
    "while the brows and eyes stay relaxed",
    "while the upper face stays calm",
    "while the forehead and eyes remain at rest",
)
_LOWER_REST = (
    "while the mouth stays relaxed",
    "while the lower face remains at rest",
    "while the lips keep their resting shape",
)
_NEUTRAL_TEXTS = (
    "The brows rest in a level line, the eyes are open at their usual width, and the mouth is "
    "closed and relaxed. The cheeks are smooth and the jaw is at ease. With every feature at "
    "rest, the face shows a neutral expression.",
    "The forehead is smooth, the eyelids sit at a relaxed height, and the lips rest gently "
    "together. The cheeks and chin are calm as well. These resting features indicate a neutral "
    "expression.",
    "The face is relaxed: the brows are level, the gaze is steady, and the lips are at rest with "
    "the jaw closed. This calm, resting configuration across the whole face reads as neutral.",
)
_FAINT_OPENERS = (
    "The face is close to rest, with {cues}.",
    "The features are nearly relaxed and show {cues}.",
)
_FAINT_LINKS = (
    "These weak signals lean toward {gloss}, which indicates {emotion}.",
    "Even at this low intensity, the pattern suggests {gloss} and points to {emotion}.",
)


def write_description(
    emotion: str,
    aus: Sequence[str],
    rng: np.random.Generator,
    *,
    intensities: Mapping[str, float] | None = None,
) -> str:
    """A full answer ("<think>...</think>\\n<answer>emotion</answer>") for one face.

    `aus` are the labelled canonical AUs ("AU4"), each mentioned exactly once with its number;
    `intensities` (renderer keys such as "R12" -> intensity, optional) tells which AUs act on one
    side and which sub-threshold AUs can be named as faint cues.
    """
    if emotion not in EMOTIONS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {EMOTIONS}")
    unknown = [au for au in aus if au not in AU_CLAUSES]
    if unknown:
        raise ValueError(f"no phrasing for AUs {unknown}; known: {', '.join(AU_CLAUSES)}")
    if len(set(aus)) != len(aus):
        raise ValueError(f"AU list {list(aus)} repeats an AU")
    intensities = dict(intensities or {})
    ordered = sorted(aus, key=lambda au: (REGION_OF[au], int(au[2:])))
    if not ordered:
        think = _describe_without_labels(emotion, aus, intensities, rng)
    else:
        think = _describe_features(ordered, intensities, rng) + " " + _link(emotion, ordered, intensities, rng)
    return f"<think>{think}</think>\n<answer>{emotion}</answer>"


def _one_sided(au: str, intensities: Mapping[str, float]) -> bool:
    """True when `au` is present only through side keys ("R12" / "L12") on exactly one side."""
    number = au[2:]
    if intensities.get(au, 0.0) > 0:
        return False
    sides = [key for key in (f"R{number}", f"L{number}") if intensities.get(key, 0.0) > 0]
    return len(sides) == 1


def _clause(au: str, intensities: Mapping[str, float], rng: np.random.Generator, short: bool) -> str:
    options = ONE_SIDED_CLAUSES[au] if au in ONE_SIDED_CLAUSES and _one_sided(au, intensities) else AU_CLAUSES[au]
    text = options[0] if short else options[rng.integers(len(options))]
    return f"{text} ({au})"


def _join(clauses: Sequence[str]) -> str:
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _describe_features(ordered: Sequence[str], intensities: Mapping[str, float], rng: np.random.Generator) -> str:
    short = len(ordered) > 4
    clauses = [_clause(au, intensities, rng, short) for au in ordered]
    opener = _OPENERS[rng.integers(len(_OPENERS))]
    if len(clauses) <= 3:
        text = opener + _join(clauses)
        # Regions with any drawn AU, faint traces included, are never called relaxed.
        active = set(ordered) | {_canonical(key) for key, value in intensities.items() if value > 0}
        regions = {REGION_OF[au] for au in active if au in REGION_OF}
        if max(regions) <= 1:
            text += ", " + _pick(_LOWER_REST, rng)
        elif min(regions) >= 2:
            text += ", " + _pick(_UPPER_REST, rng)
        return (text[0].upper() + text[1:]) + "."
    # Split between upper face (brows, eyes) and the rest, when both are present.
    split = sum(REGION_OF[au] <= 1 for au in ordered)
    if split in (0, len(ordered)):
        split = len(ordered) // 2
    first, second = _join(clauses[:split]), _join(clauses[split:])
    connector = ("", "In the lower face, ", "Below, ")[rng.integers(3)] if split and REGION_OF[ordered[split]] >= 2 else ""
    first_sentence = opener + first + "." if opener else _sentence(first)
    second_sentence = connector + second + "." if connector else _sentence(second)
    return first_sentence + " " + second_sentence


def _noun(au: str, intensities: Mapping[str, float]) -> str:
    if au in ONE_SIDED_NOUNS and _one_sided(au, intensities):
        return ONE_SIDED_NOUNS[au]
    return AU_NOUNS[au]


def _link(emotion: str, ordered: Sequence[str], intensities: Mapping[str, float], rng: np.random.Generator) -> str:
    cues = [au for au in ordered if au in EMOTION_CUES[emotion]]
    gloss = _pick(_EMOTION_GLOSS[emotion], rng)
    if not cues:
        faint = _faint_cues(emotion, ordered, intensities)
        if faint:
            return _pick(_FAINT_LINKS_AFTER_FEATURES, rng).format(faint=faint, emotion=emotion)
        return _pick(_CONFIGURATION_LINKS, rng).format(emotion=emotion)
    cue_text = _join([_noun(au, intensities) for au in cues[:3]])
    return _pick(_LINKS, rng).format(
        cues=cue_text, Cues=cue_text[0].upper() + cue_text[1:], gloss=gloss, emotion=emotion
    )


def _pick(options: Sequence[str], rng: np.random.Generator) -> str:
    return options[rng.integers(len(options))]


def _describe_without_labels(
    emotion: str, aus: Sequence[str], intensities: Mapping[str, float], rng: np.random.Generator
) -> str:
    """Neutral faces, and subtle expressions whose AUs all stay under the label threshold."""
    if emotion == "neutral":
        return _pick(_NEUTRAL_TEXTS, rng)
    cue_text = _faint_cues(emotion, aus, intensities) or "faint tension in the face"
    opener = _pick(_FAINT_OPENERS, rng).format(cues=cue_text)
    link = _pick(_FAINT_LINKS, rng).format(gloss=_pick(_EMOTION_GLOSS[emotion], rng), emotion=emotion)
    return opener + " " + link


def _faint_cues(emotion: str, labelled: Sequence[str], intensities: Mapping[str, float]) -> str:
    """"a faint trace of X and Y" for the emotion's cue AUs drawn under the label threshold."""
    faint = sorted(
        ({_canonical(key) for key, value in intensities.items() if value > 0} - set(labelled))
        & EMOTION_CUES[emotion],
        key=lambda au: (REGION_OF[au], int(au[2:])),
    )
    if not faint:
        return ""
    return "a faint trace of " + _join([_noun(au, intensities) for au in faint[:3]])


def _canonical(key: str) -> str:
    return key if key.startswith("AU") else f"AU{int(key[1:])}"
