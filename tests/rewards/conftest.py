"""Shared fixtures for the jitted-reward tests: two byte-level tokenizers and a completion corpus.

The corpus mixes three kinds of completions, all scored by the Python oracle (`fea.answers`) on
the text the tokenizer decodes:
  * adversarial fragment soup: tags whole, truncated, nested, repeated and in other cases,
    AU12 / AU120 / AU01 / long digit runs, Unicode whitespace and case tricks (KELVIN SIGN,
    dotless i, long s, ligatures, full-width and mathematical letters), punctuation, U+FFFD;
  * a random grammar over those fragments shaped like answers (think block, separator, answer
    block, with pieces dropped, doubled or perturbed);
  * realistic answers: AU phrases and emotion words, synonyms, case and punctuation variants.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from facialr1_jax.fea import answers as oracle
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.rewards import TokenByteTable, decode_completion, encode_ground_truth

# Labels beyond the eight nouns: other case, a synonym, a two-word key, an unknown word, a label
# with a leading space (never matches exactly), punctuation.
EXTRA_LABELS = ("Happiness", "happy", "SAD", "no emotion", "xyz", " fear", "Fear!")
LABELS = tuple(EMOTIONS) + EXTRA_LABELS
GROUND_TRUTH_AUS = ("AU0", "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU15",
                    "AU17", "AU20", "AU23", "AU24", "AU25", "AU26", "AU43", "AU99")

WHITESPACE = [" ", "  ", "\n", "\t", "\r\n", "\x0b", "\x0c", "\x1c", "\x85", "\u00a0", "\u1680",
              "\u2003", "\u2009", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_WHITESPACE = ["\u200b", "\u180e", "\ufeff", "\u2060"]  # look blank, are not str.isspace()
TAGS = ["<think>", "</think>", "<answer>", "</answer>"]
TAG_VARIANTS = ["<THINK>", "</Think>", "<tHiNk>", "</THINK>", "<thin\u212a>", "</th\u0131nk>", "<th\u0130nk>",
                "<ANSWER>", "</Answer>", "<answer >", "< answer>", "<answer", "answer>", "</answe", "<thi",
                "nk>", "</", "<", ">", "/", "<<think>", "</think>>", "<think/>", "<\u200bthink>"]
AU_PIECES = ["AU", "au", "Au", "aU", "A", "U", "AU1", "AU12", "AU120", "AU01", "AU0", "AU00", "AU4",
             "AU9999999999", "AU12345678901234567890123456789", "AU001", "AU 12", "AU-12", "BEAU1",
             "AAU2", "AUAU3", "\u1e9a" + "U1", "AU\u0661", "AU\uff11", "(AU6)", "AU6,AU12", "0", "1", "12",
             "9", "99", "100"]
EMOTION_WORDS = list(EMOTIONS) + ["happy", "Happy", "HAPPINESS", "sad", "Sad.", "angry", "Anger!",
                                  "fearful", "afraid", "scared", "no emotion", "no  emotion", "none",
                                  "calm", "joy", "surprised", "disgusted", "contemptuous", "neutrality",
                                  "\u017fad", "\uff26\uff25\uff21\uff32", "\U0001d41f\U0001d41e\U0001d41a\U0001d42b",
                                  "\u3388m", "\ufb01ne", "h\u0430ppy", "sa\u0301d", "fe\u0430r",
                                  "happiness and surprise", "xyz", "XYZ.", "fear?!", "'fear'",
                                  "**anger**", "[sadness]", "(neutral).", "\u201chappy\u201d", "\u00abfear\u00bb",
                                  "fear\u3002", "fear\u2026", "Fear!", " fear", "SAD"]
OTHER = ["the", "brows", "lips", "x", ".", ",", "!", "?", "'", '"', "*", "(", ")", "\u00e9", "e\u0301",
         "\u65e5\u672c", "\U0001f600", "\ufffd", "\u00df", "\u017f", "\u212a", "\u0130", "\u0131", "\ufb00",
         "\u2126", "\u00b5"]
FRAGMENTS = TAGS * 3 + TAG_VARIANTS + AU_PIECES + EMOTION_WORDS + WHITESPACE + NOT_WHITESPACE + OTHER

AU_PHRASES = ["brows pulled together", "inner brows raised", "cheeks raised", "lip corners pulled up",
              "lips parted", "jaw dropped", "nose wrinkled", "lids tightened", "upper lip raised",
              "chin raised", "lips pressed", "eyes closed"]


class CompletionCorpus:
    """Seeded generator of (text, label, ground-truth AUs) triples."""

    LABELS = LABELS

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def label(self):
        r = self.rng.random()
        if r < 0.1:
            return None
        if r < 0.15:
            return ""
        return self.rng.choice(LABELS)

    def truth(self):
        if self.rng.random() < 0.15:
            return []
        return self.rng.sample(GROUND_TRUTH_AUS, self.rng.randint(1, 5))

    def soup(self) -> str:
        return "".join(self.rng.choice(FRAGMENTS) for _ in range(self.rng.randint(0, 16)))

    def _maybe(self, p: float, text: str) -> str:
        return text if self.rng.random() < p else ""

    def _think_body(self) -> str:
        pieces = []
        for _ in range(self.rng.randint(0, 5)):
            r = self.rng.random()
            if r < 0.5:
                pieces.append(f"{self.rng.choice(AU_PHRASES)} ({self.rng.choice(AU_PIECES)})")
            elif r < 0.8:
                pieces.append(self.rng.choice(FRAGMENTS))
            else:
                pieces.append(self.rng.choice(EMOTION_WORDS))
        return self.rng.choice([", ", " ", "; ", "\n"]).join(pieces)

    def grammar(self) -> str:
        rng = self.rng
        open_think = rng.choice(["<think>"] * 6 + TAG_VARIANTS[:7] + [""])
        close_think = rng.choice(["</think>"] * 6 + TAG_VARIANTS[:7] + [""])
        open_answer = rng.choice(["<answer>"] * 6 + TAG_VARIANTS[7:12] + [""])
        close_answer = rng.choice(["</answer>"] * 6 + TAG_VARIANTS[7:12] + [""])
        separator = rng.choice(["", "\n", " ", "\n\n"] + WHITESPACE + ["x", ". "])
        answer_body = rng.choice(EMOTION_WORDS + [""]) if rng.random() < 0.9 else self.soup()
        answer_body = rng.choice(WHITESPACE + [""] * 6) + answer_body + rng.choice(WHITESPACE + [""] * 6)
        think = open_think + self._think_body() + close_think
        answer = open_answer + answer_body + close_answer
        parts = [think, separator, answer]
        r = rng.random()
        if r < 0.1:
            parts.append(answer)  # repeated answer block
        elif r < 0.2:
            parts.insert(0, think)  # repeated think block
        elif r < 0.25:
            parts = [answer, separator, think]  # wrong order
        elif r < 0.3:
            parts[0] = open_think + think + close_think  # nested
        text = self._maybe(0.1, rng.choice(["Sure! ", " ", "\n", "Answer: "])) + "".join(parts)
        text += self._maybe(0.1, rng.choice([" ", "\n", ".", " done", "</answer>", "<|im_end|>"]))
        if rng.random() < 0.1:
            text = text[: rng.randint(0, len(text))]  # truncated mid-way
        return text

    def realistic(self) -> str:
        rng = self.rng
        aus = rng.sample(GROUND_TRUTH_AUS[1:-1], rng.randint(1, 4))
        phrases = [f"the {rng.choice(AU_PHRASES)} ({au if rng.random() < 0.9 else au.lower()})" for au in aus]
        emotion = rng.choice(EMOTION_WORDS[:20])
        separator = rng.choice(["\n", "", " ", "\n\n"])
        think = f"Looking at the face, {', '.join(phrases)}. Together these indicate {rng.choice(EMOTIONS)}."
        return f"<think>{think}</think>{separator}<answer>{emotion}</answer>"

    def text(self) -> str:
        r = self.rng.random()
        if r < 0.35:
            return self.soup()
        if r < 0.75:
            return self.grammar()
        return self.realistic()

    def triples(self, count: int):
        return [(self.text(), self.label(), self.truth()) for _ in range(count)]


@pytest.fixture(scope="session")
def trained_tokenizer():
    """A byte-level BPE trained here (GPT-2 pre-tokenizer, digits kept in runs), with special
    tokens and two non-special added tokens, one of them outside the byte alphabet."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = CompletionCorpus(seed=1)
    texts = [corpus.text() for _ in range(400)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.add_tokens([AddedToken("a b", special=False), AddedToken("</answer>", special=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")


@pytest.fixture(scope="session")
def bundled_tokenizer():
    from facialr1_jax.data.tokenizer import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def bundled_reward_fns(bundled_tokenizer):
    """Reward functions on the bundled tokenizer over LABELS, built once per accuracy mode (the
    oracle comparison and the fuzz test share them, and with them their compiled code)."""
    from facialr1_jax.rewards import make_reward_fn

    cache = {}

    def get(accuracy_mode: str):
        if accuracy_mode not in cache:
            cache[accuracy_mode] = make_reward_fn(bundled_tokenizer, LABELS, accuracy_mode=accuracy_mode)
        return cache[accuracy_mode]

    return get


@pytest.fixture
def corpus():
    return CompletionCorpus


# --------------------------------------------------------------------------- oracle comparison
ROWS, WIDTH = 1024, 128  # one compiled shape for every oracle comparison
FLOAT_TOLERANCE = 1e-6


def _oracle_scores(text, label, aus, accuracy_mode, au_mode):
    scores = oracle.total_reward(text, label, aus, accuracy_mode=accuracy_mode, au_mode=au_mode)
    predicted = oracle.reward_aus(text)
    truth = oracle.ground_truth_aus(aus)
    return scores, len(predicted), len(predicted & truth)


def compare_with_oracle(reward_fn, tokenizer, id_lists, labels, aus, masks=None):
    """Scores id lists in fixed-shape batches; returns a list of mismatch descriptions."""
    settings = reward_fn.settings
    problems = []
    for start in range(0, len(id_lists), ROWS):
        chunk = id_lists[start : start + ROWS]
        ids = np.zeros((ROWS, WIDTH), np.int32)
        mask = np.zeros((ROWS, WIDTH), bool)
        for row, sequence in enumerate(chunk):
            ids[row, : len(sequence)] = sequence
            mask[row] = np.arange(WIDTH) < len(sequence) if masks is None else masks[start + row]
        label_ids = np.full(ROWS, -1, np.int32)
        label_ids[: len(chunk)] = [reward_fn.label_id(label) for label in labels[start : start + len(chunk)]]
        truth = np.zeros((ROWS, 100), bool)
        truth[: len(chunk)] = encode_ground_truth(aus[start : start + len(chunk)])
        result = {k: np.asarray(v) for k, v in reward_fn(ids, mask, label_ids, truth).items()}
        for row in range(len(chunk)):
            if isinstance(tokenizer, TokenByteTable):  # token bytes given directly
                text = tokenizer.decode(ids[row].tolist(), mask[row].tolist())
            else:
                text = decode_completion(tokenizer, ids[row], mask[row])
            label, truth_aus = labels[start + row], aus[start + row]
            expected, predicted, matched = _oracle_scores(
                text, label, truth_aus, settings.accuracy_mode, settings.au_mode
            )
            got = {name: float(result[name][row]) for name in expected}
            ok = (
                got["format"] == expected["format"]
                and got["accuracy"] == expected["accuracy"]
                and int(result["au_predicted"][row]) == predicted
                and int(result["au_matched"][row]) == matched
                and abs(got["au"] - expected["au"]) <= FLOAT_TOLERANCE
                and abs(got["total"] - expected["total"]) <= 10 * FLOAT_TOLERANCE
            )
            if not ok:
                problems.append(
                    f"text={text!r} label={label!r} aus={truth_aus} expected={expected} |P|={predicted} "
                    f"|P&T|={matched} got={got} |P|={result['au_predicted'][row]} |P&T|={result['au_matched'][row]}"
                )
    return problems


@pytest.fixture
def oracle_check():
    """compare_with_oracle(reward_fn, tokenizer, id_lists, labels, aus, masks=None) -> mismatches."""
    return compare_with_oracle
