"""The emotion vocabulary and the mapping of free-text labels onto it.

Facial-R1 answers with one emotion noun from a closed list (docs/METHOD.md 2.2). Source datasets and
model outputs spell the same emotion in several ways ("Happy", "happiness.", "SURPRISED"); this
module maps those spellings onto the canonical nouns so records, prompts and the normalised
accuracy reward all
agree on one spelling.

Normalisation steps, in order (`clean_label_text`):
  1. Unicode NFKC folding and `str.casefold()` (so "HAPPY" and full-width letters compare equal);
  2. surrounding whitespace removed, inner runs of whitespace collapsed to one space;
  3. surrounding quotes and brackets removed ("'sad'", "[anger]", "**fear**");
  4. trailing punctuation removed ("happiness." -> "happiness", "fear!?" -> "fear").
The cleaned text is then looked up in `EMOTION_SYNONYMS` (canonical nouns map to themselves).

The synonym table is deliberately small: the noun, its adjective (docs/METHOD.md 2.2:
angry->anger, happy->happiness, sad->sadness, surprised->surprise, fearful->fear,
disgusted->disgust, contemptuous->contempt) and a few unambiguous everyday words ("afraid",
"scared", "calm"). A broad thesaurus would let the normalised accuracy reward accept answers that
are not one of the allowed label words, which is what the reward is meant to teach.
"""

from __future__ import annotations

import unicodedata

EMOTIONS: tuple[str, ...] = (
    "anger",
    "contempt",
    "disgust",
    "fear",
    "happiness",
    "neutral",
    "sadness",
    "surprise",
)

# Every accepted spelling (after `clean_label_text`) -> canonical noun.
EMOTION_SYNONYMS: dict[str, str] = {
    **{emotion: emotion for emotion in EMOTIONS},
    # anger
    "angry": "anger",
    "angered": "anger",
    # contempt
    "contemptuous": "contempt",
    "contemptful": "contempt",
    # disgust
    "disgusted": "disgust",
    # fear
    "fearful": "fear",
    "afraid": "fear",
    "scared": "fear",
    "frightened": "fear",
    # happiness
    "happy": "happiness",
    "joy": "happiness",
    "joyful": "happiness",
    # neutral
    "neutrality": "neutral",
    "calm": "neutral",
    "none": "neutral",
    "no emotion": "neutral",
    # sadness
    "sad": "sadness",
    "unhappy": "sadness",
    # surprise
    "surprised": "surprise",
    "surprising": "surprise",
    "astonished": "surprise",
}

# Characters peeled off both ends of a label before lookup (quotes, brackets, markdown emphasis).
_WRAPPING_CHARACTERS = "\"'`“”‘’«»()[]{}<>*_"
# Punctuation peeled off the end only ("fear." / "fear!"); a leading "-" or "." is not a typo we
# want to hide.
_TRAILING_PUNCTUATION = ".,;:!?…。，！？"


class UnknownLabelError(ValueError):
    """Raised when a text does not name one of the eight emotions."""

    def __init__(self, text: object):
        self.text = text
        super().__init__(
            f"unknown emotion {text!r}: expected one of {', '.join(EMOTIONS)} "
            f"(or a listed synonym such as 'happy', 'angry', 'surprised')"
        )


def clean_label_text(text: str) -> str:
    """Case-folds and trims a label the way every comparison in this package does.

    Returns "" when nothing but whitespace, wrapping characters and punctuation is left.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    folded = " ".join(folded.split())
    previous = None
    # Wrapping and trailing punctuation can nest ("'happy.'", "(fear)."), so peel until stable.
    while previous != folded:
        previous = folded
        folded = folded.strip(_WRAPPING_CHARACTERS).rstrip(_TRAILING_PUNCTUATION).strip()
    return folded


def try_normalize_emotion(text: object) -> str | None:
    """The canonical emotion noun for `text`, or None when it names no known emotion."""
    if not isinstance(text, str):
        return None
    return EMOTION_SYNONYMS.get(clean_label_text(text))


def normalize_emotion(text: object) -> str:
    """The canonical emotion noun for `text`; raises UnknownLabelError naming the text otherwise."""
    emotion = try_normalize_emotion(text)
    if emotion is None:
        raise UnknownLabelError(text)
    return emotion


def is_emotion(text: object) -> bool:
    """True when `text` is already a canonical emotion noun (exact spelling, lowercase)."""
    return isinstance(text, str) and text in EMOTIONS
