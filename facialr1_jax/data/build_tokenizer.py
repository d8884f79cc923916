"""Regenerates the bundled demo tokenizer in `facialr1_jax/data/tokenizer/`.

    python -m facialr1_jax.data.build_tokenizer [--out DIR] [--vocab_size 3072]

A byte-level BPE (Hugging Face `tokenizers`) trained on the text a demo run actually sees: the
instructions of `fea.prompts` in both variants for every label list and question, stage 3
synthesis prompts and feedback, many reasoning texts from `data.reasoning` for sampled
expressions, the AU and emotion vocabularies and the chat scaffolding. Pre-tokenisation is
Qwen2's (its split regex, then the byte-level mapping without a regex), with no normaliser so
every string round-trips byte for byte. After training, Qwen2.5-VL's 14 special tokens are
appended in their original order (as at the end of Qwen's vocabulary), followed by the four
answer tags as ordinary added tokens. The result is saved as a `transformers` tokenizer with
`<|im_end|>` as eos, `<|endoftext|>` as pad and Qwen2.5-VL's chat template.

Everything is seeded, so rerunning the script reproduces the bundled files.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from facialr1_jax.data import chat, demo, expressions, reasoning
from facialr1_jax.data.tokenizer import BUNDLED_TOKENIZER_DIR, TAG_TOKENS
from facialr1_jax.fea import prompts
from facialr1_jax.fea.aus import FACS_AU_NAMES
from facialr1_jax.fea.emotions import EMOTION_SYNONYMS, EMOTIONS
from facialr1_jax.fea.profiles import PROFILES

DEFAULT_VOCAB_SIZE = 1536  # total, special and added tokens included (a multiple of 128, for sharding)
CORPUS_SEED = 20240917
NUM_DESCRIPTIONS = 12000
NUM_SYNTHESIS_PROMPTS = 400

# Words that reasoning texts from real VLMs (FEA-20K style) use beyond this package's own writer,
# so a demo model trained on such text still sees compact tokens for them.
DESCRIPTION_WORDS = """
eyebrow eyebrows brow brows forehead temple temples eyelid eyelids lid lids lash lashes eye eyes
gaze stare glance pupil pupils iris sclera socket cheek cheeks cheekbone cheekbones nose nostril
nostrils bridge philtrum lip lips mouth corner corners teeth tooth tongue gum gums jaw jawline
chin dimple dimples skin muscle muscles wrinkle wrinkles wrinkled crease creases creased line
lines fold folds furrow furrows furrowed frown frowning scowl scowling grimace grimacing smile
smiling smirk smirking grin grinning pout pouting sneer sneering squint squinting blink blinking
raise raised raising lift lifted lifting lower lowered lowering pull pulled pulling push pushed
press pressed pressing tighten tightened tense tension relaxed relax relaxing rest resting
narrow narrowed narrowing widen widened widening open opened opening close closed closing part
parted parting drop dropped stretch stretched stretching curl curled curve curved upward
downward inward outward slightly strongly clearly visibly noticeably subtle subtly intense
intensity asymmetric asymmetrical symmetric one-sided unilateral bilateral left right upper
lower inner outer central middle side sides face facial expression expressions emotion emotional
feature features appearance indicates indicate suggests suggest shows show displays display
reveals reveal conveys convey reflects reflect signals signal combination pattern overall typical
characteristic consistent evidence action unit units intensity person individual subject image
photo picture happy happiness joy joyful cheerful delighted pleased content amused sad sadness
unhappy sorrowful gloomy melancholy grief upset angry anger furious irritated annoyed hostile
rage fear fearful afraid scared frightened terrified anxious worried nervous alarmed panic
surprise surprised astonished amazed shocked startled disgust disgusted repulsed revulsion
aversion contempt contemptuous disdain disdainful scorn scornful smug superior neutral calm
composed indifferent blank expressionless serious attentive focused thoughtful confused
""".split()

# Qwen2's pre-tokenisation split (contractions, letter runs with one leading non-letter, single
# digits, punctuation runs, newlines, other whitespace).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def training_corpus(seed: int = CORPUS_SEED) -> Iterator[str]:
    """The texts the BPE merges are learned from (tags and special tokens removed, see below)."""
    label_lists = {tuple(EMOTIONS)} | {profile.labels for profile in PROFILES.values() if profile.labels}
    questions = [None, *dict.fromkeys(demo.EMOTION_QUESTIONS + demo.AU_QUESTIONS)]
    for variant in prompts.VARIANTS:
        for labels in sorted(label_lists):
            for question in questions:
                yield prompts.build_instruction(question, labels, variant)

    rng = np.random.default_rng(seed)
    for _ in range(NUM_SYNTHESIS_PROMPTS):
        expression = expressions.sample_expression(rng)
        yield prompts.build_synthesis_instruction(
            None, EMOTIONS, expression.aus, expression.emotion, variant="compact"
        )
        wrong = EMOTIONS[rng.integers(len(EMOTIONS))]
        answer = reasoning.write_description(wrong, expression.aus[:-1], rng, intensities=expression.intensities)
        feedback = prompts.feedback_for_answer(answer, expression.aus, expression.emotion)
        if feedback:
            yield feedback
    for _ in range(NUM_DESCRIPTIONS):
        expression = expressions.sample_expression(rng)
        yield reasoning.write_description(
            expression.emotion, expression.aus, rng, intensities=expression.intensities
        )

    yield prompts.SYSTEM_PROMPT
    for role in ("system", "user", "assistant"):
        yield role + "\n"
    for number_name in FACS_AU_NAMES.items():
        yield "{}: {}".format(*number_name)
    for word in sorted(set(EMOTION_SYNONYMS) | set(DESCRIPTION_WORDS)):
        yield word
        yield " " + word
        yield word.capitalize()


def _strip_control_strings(text: str) -> str:
    """Tags and special tokens are matched as whole tokens before BPE runs, so merges spent on
    their pieces would be wasted; they become line breaks for training."""
    for token in (*TAG_TOKENS, *chat.QWEN_SPECIAL_TOKENS):
        text = text.replace(token, "\n")
    return text


def build_tokenizer(out_dir: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = CORPUS_SEED):
    """Train, wrap and save the tokenizer into `out_dir`; returns the `transformers` tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    extra = len(chat.QWEN_SPECIAL_TOKENS) + len(TAG_TOKENS)
    if vocab_size < 256 + extra + 1:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for merges (minimum {256 + extra + 1})")
    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - extra,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    corpus = [_strip_control_strings(text) for text in training_corpus(seed)]
    tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in chat.QWEN_SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in TAG_TOKENS])

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=chat.IM_END,
        pad_token=chat.ENDOFTEXT,
        unk_token=None,
        bos_token=None,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
        chat_template=chat.QWEN2_5_VL_CHAT_TEMPLATE,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out))
    return wrapped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="python -m facialr1_jax.data.build_tokenizer")
    parser.add_argument("--out", default=str(BUNDLED_TOKENIZER_DIR), help="output folder (default: the bundled one)")
    parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE, help="total vocabulary size")
    args = parser.parse_args(argv)
    tokenizer = build_tokenizer(args.out, args.vocab_size)
    print(f"saved a {len(tokenizer)}-token tokenizer to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
