"""The small public Python API: load a trained model, analyse face images.

    from facialr1_jax import FacialR1

    analyser = FacialR1.load("workdirs/grpo")      # a training workdir, a step folder or a HF folder
    result = analyser.analyze("face.jpg")          # or a PIL image, or a numpy array
    result["emotion"], result["aus"], result["reasoning"]

`analyze` returns a dict:
    emotion      the canonical emotion noun the answer names ("happiness"), or None when the answer
                 names none of the eight emotions
    answer       the first answer word as written ("Happy"), "" when there is none
    aus          the AUs named in the reasoning, sorted by number (["AU6", "AU12"])
    au_names     {"AU6": "cheek raiser", ...} for the AUs FACS defines
    reasoning    the text of the first <think> block, stripped (None when there is no think block)
    format_valid whether the whole reply is exactly <think>...</think><answer>...</answer>
    raw          the whole generated text
The reading of the reply is the evaluation's (docs/METHOD.md 9.1, `fea.answers`): first answer block,
first think block, AU mentions as "AU<digits>".

Images: any file Pillow reads, PIL images in any mode and numpy arrays are accepted. Besides what
the training pipeline accepts (8-bit RGB, RGBA, grayscale, palette), this API brings 16-bit and
32-bit integer and floating-point images to 8 bits by their value range (see `to_8bit`), because
the model was trained on 8-bit images and Pillow's own conversion would clip them to white.
Missing, empty, non-image and undecodable files raise `ImageLoadError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from facialr1_jax.data import images as image_lib
from facialr1_jax.data.images import ImageLoadError
from facialr1_jax.fea.answers import (
    ANSWER_PATTERN,
    eval_aus,
    eval_emotion,
    extract_think_first,
    format_reward,
)
from facialr1_jax.fea.aus import FACS_AU_NAMES
from facialr1_jax.fea.emotions import EMOTIONS, normalize_emotion, try_normalize_emotion
from facialr1_jax.fea.prompts import build_instruction
from facialr1_jax.fea.records import FEARecord

__all__ = ["FacialR1", "ImageLoadError", "read_answer", "to_8bit"]

# Pillow modes that hold more than 8 bits per sample.
_WIDE_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_FLOAT_MODES = ("F",)


# ------------------------------------------------------------------------------------ replies
def _mention_key(au: str) -> tuple[int, str]:
    return int(au[2:]), au


def read_answer(text: str) -> dict[str, Any]:
    """The structured reading of one generated reply (the dict of the module docstring)."""
    answer = eval_emotion(text) if ANSWER_PATTERN.search(text) else ""
    think = extract_think_first(text)
    aus = sorted(eval_aus(text), key=_mention_key)
    return {
        "emotion": try_normalize_emotion(answer) if answer else None,
        "answer": answer,
        "aus": aus,
        "au_names": {au: FACS_AU_NAMES[au] for au in aus if au in FACS_AU_NAMES},
        "reasoning": None if think is None else think.strip(),
        "format_valid": format_reward(text) == 1.0,
        "raw": text,
    }


# ------------------------------------------------------------------------------------- images
def _integer_to_8bit(values: np.ndarray, sixteen_bit: bool) -> np.ndarray:
    """Integers -> uint8. 16-bit data is divided by 257 (65535 -> 255); other wide integers keep
    values that already fit in 0..255 and are otherwise scaled by the 16-bit range, or by their
    maximum when they exceed it."""
    values = values.astype(np.float64)
    if sixteen_bit:
        scale = 255.0 / 65535.0
    else:
        top = float(values.max(initial=0.0))
        scale = 1.0 if top <= 255 else 255.0 / 65535.0 if top <= 65535 else 255.0 / top
    return np.clip(np.round(values * scale), 0, 255).astype(np.uint8)


def _float_to_8bit(values: np.ndarray) -> np.ndarray:
    """Floats -> uint8: data within [0, 1] is scaled by 255, anything else is read as 0..255."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def to_8bit(image: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
    """Brings a wide (16/32-bit integer, float, boolean) PIL image or array to 8 bits per sample.

    PIL images in 8-bit modes and uint8 arrays are returned unchanged.
    """
    if isinstance(image, Image.Image):
        if image.mode in _WIDE_INTEGER_MODES:
            return Image.fromarray(_integer_to_8bit(np.asarray(image), image.mode != "I"), mode="L")
        if image.mode in _FLOAT_MODES:
            return Image.fromarray(_float_to_8bit(np.asarray(image)), mode="L")
        return image
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.integer):
        return _integer_to_8bit(array, array.dtype in (np.uint16, np.int16))
    if np.issubdtype(array.dtype, np.floating):
        return _float_to_8bit(array)
    raise ImageLoadError("unsupported", f"cannot read an image from an array of dtype {array.dtype}")


def prepare_image(image: Any, *, max_image_pixels: int = image_lib.DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """An upright 8-bit RGB PIL image from a path, bytes, a PIL image or an array.

    ImageLoadError (with the file named) for a missing, empty, non-image or undecodable file;
    TypeError for an object that is no image at all.
    """
    if isinstance(image, np.ndarray):
        decoded = image_lib.open_image(to_8bit(image))
    elif isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)):
        decoded = image_lib.open_image(image, max_image_pixels=max_image_pixels)
    else:
        raise TypeError(
            f"analyze() takes an image path, encoded image bytes, a PIL image or a numpy array, "
            f"not {type(image).__name__}"
        )
    return image_lib.to_rgb(to_8bit(decoded))


# -------------------------------------------------------------------------------------- model
class FacialR1:
    """A loaded Facial-R1 model that analyses face images (see the module docstring)."""

    def __init__(self, model, tokenizer, *, encoding=None, max_new_tokens: int = 256, info: dict | None = None):
        from facialr1_jax.data.examples import EncodingConfig

        self.model = model
        self.tokenizer = tokenizer
        self.encoding = encoding or EncodingConfig()
        self.max_new_tokens = int(max_new_tokens)
        self.info = dict(info or {})
        self._generators: dict[tuple[int, int], Any] = {}

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        dtype: str | None = None,
        param_dtype: str | None = None,
        max_new_tokens: int | None = None,
        prompt_variant: str | None = None,
    ) -> "FacialR1":
        """Loads a training workdir (its latest checkpoint), a step folder or a Hugging Face folder.

        Prompts are encoded as the checkpoint's training run did when it recorded its settings
        (`eval.runner.encoding_for`); `prompt_variant` overrides the variant ("full" suits a
        Hugging Face Qwen2.5-VL, which knows nothing of the compact one). max_new_tokens: the
        generation length; None = the training run's evaluation length, else 256.
        """
        import dataclasses

        from facialr1_jax.eval.runner import encoding_for
        from facialr1_jax.train.checkpoint import load_model

        model, tokenizer, info = load_model(path, dtype=dtype, param_dtype=param_dtype)
        encoding = encoding_for(info)
        if info.get("kind") == "hf" and prompt_variant is None:
            prompt_variant = "full"  # a published checkpoint has seen the paper's prompt, if any
        if info.get("kind") == "hf":
            encoding = dataclasses.replace(encoding, max_prompt_tokens=max(encoding.max_prompt_tokens, 4096))
        if prompt_variant is not None:
            encoding = dataclasses.replace(encoding, prompt_variant=prompt_variant)
        return cls(model, tokenizer, encoding=encoding, max_new_tokens=max_new_tokens or 256, info=info)

    def _generator(self, max_new_tokens: int, batch_size: int):
        key = (max_new_tokens, batch_size)
        if key not in self._generators:
            from facialr1_jax.eval.runner import greedy_generator

            self._generators[key] = greedy_generator(
                self.tokenizer, self.encoding, self.model, max_new_tokens=max_new_tokens, batch_size=batch_size)
        return self._generators[key]

    def instruction(self, question: str | None = None, labels: Sequence[str] | None = None) -> str:
        """The user-turn text sent with each image."""
        allowed = EMOTIONS if not labels else tuple(normalize_emotion(label) for label in labels)
        return build_instruction(question or "", allowed, self.encoding.prompt_variant)

    def generate(self, images: Sequence[Any], *, question: str | None = None, labels: Sequence[str] | None = None,
                 max_new_tokens: int | None = None, batch_size: int = 8) -> list[str]:
        """The raw greedy replies for `images` (anything `analyze` accepts)."""
        from facialr1_jax.data.examples import encode_prompt_example

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pictures = [prepare_image(image, max_image_pixels=self.encoding.image.max_image_pixels) for image in images]
        if not pictures:
            return []
        instruction = self.instruction(question, labels)
        size = min(batch_size, len(pictures))
        generator = self._generator(int(max_new_tokens or self.max_new_tokens), size)
        texts: list[str] = []
        for first in range(0, len(pictures), size):
            prompts = []
            for index in range(first, min(first + size, len(pictures))):
                record = FEARecord(id=f"image-{index}", dataset="", images=(f"image-{index}",),
                                   question=question or "")
                prompts.append(encode_prompt_example(record, self.tokenizer, self.encoding,
                                                     images=[pictures[index]], instruction=instruction))
            texts.extend(generator.generate_texts(self.model, prompts))
        return texts

    def analyze_batch(self, images: Sequence[Any], **options) -> list[dict[str, Any]]:
        """`analyze` for several images, generated together in batches (options as `generate`)."""
        return [read_answer(text) for text in self.generate(list(images), **options)]

    def analyze(self, image: Any, *, question: str | None = None, labels: Sequence[str] | None = None,
                max_new_tokens: int | None = None) -> dict[str, Any]:
        """Analyses one face image: a path, encoded bytes, a PIL image or a numpy array.

        question: asked instead of the default question; labels: the emotions the answer may name
        (default all eight). Returns the dict of the module docstring.
        """
        return self.analyze_batch([image], question=question, labels=labels, max_new_tokens=max_new_tokens,
                                  batch_size=1)[0]

    def __repr__(self) -> str:
        where = self.info.get("path", "<in memory>")
        return f"FacialR1({where!r}, step={self.info.get('step')}, prompt={self.encoding.prompt_variant!r})"
