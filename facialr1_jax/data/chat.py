"""The chat format every stage shares: Qwen2.5-VL's conversation layout, as text and as token ids.

docs/METHOD.md 3.1: the default system line, a user turn holding the image then the instruction
text, and the assistant's reply as the answer. With one image the prompt is

    <|im_start|>system
    {system}<|im_end|>
    <|im_start|>user
    <|vision_start|><|image_pad|><|vision_end|>{instruction}<|im_end|>
    <|im_start|>assistant

and the assistant's reply follows, closed by `<|im_end|>` (Qwen2.5-VL's end-of-turn and the
generation stop token). `QWEN2_5_VL_CHAT_TEMPLATE` is the Jinja template Qwen2.5-VL ships
(identical to Qwen2-VL's), so `tokenizer.apply_chat_template(messages, add_generation_prompt=True,
tokenize=False)` on `[{"role": "system", ...}, {"role": "user", "content": [{"type": "image"},
{"type": "text", "text": instruction}]}]` gives exactly `render_prompt(instruction)`; the tests
check this with the bundled tokenizer.

In token ids each `<|image_pad|>` stands for all the merged image tokens of its image: the
vision tower emits one token per 2x2 block of 14-px patches, i.e. grid_t * grid_h * grid_w // 4
(`merged_image_tokens`), and `encode_prompt` repeats the placeholder that many times, as the
Qwen2.5-VL processor does.
"""

from __future__ import annotations

from collections.abc import Sequence

from facialr1_jax.fea.prompts import SYSTEM_PROMPT

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"

# Qwen2.5-VL's special tokens, in the order of their ids in the real vocabulary (151643 ...).
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    VISION_START,
    VISION_END,
    "<|vision_pad|>",
    IMAGE_PAD,
    VIDEO_PAD,
)

IMAGE_PLACEHOLDER = VISION_START + IMAGE_PAD + VISION_END

# The chat template of Qwen2.5-VL-*-Instruct (chat_template.json of the release).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL merges 2x2 patches into one language-model token.
SPATIAL_MERGE_SIZE = 2


def check_plain_text(text: str, what: str) -> None:
    """Raises ValueError when `text` contains a special-token string: tokenizers would read it as
    the control token itself (an instruction could then smuggle in image slots or end a turn)."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a string, got {type(text).__name__}")
    for token in QWEN_SPECIAL_TOKENS:
        if token in text:
            raise ValueError(f"{what} contains the special token {token!r}; it must be plain text")


def chat_messages(instruction: str, num_images: int = 1, system: str | None = SYSTEM_PROMPT) -> list[dict]:
    """The conversation (Hugging Face message format) for one prompt: images, then the text.

    `system=None` leaves the system turn out; Qwen's template then inserts its default line.
    """
    _check_num_images(num_images)
    messages: list[dict] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    content = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": instruction}]
    messages.append({"role": "user", "content": content})
    return messages


def render_prompt(instruction: str, num_images: int = 1, system: str = SYSTEM_PROMPT) -> str:
    """The prompt text up to and including the assistant header (see the module doc)."""
    check_plain_text(instruction, "instruction")
    check_plain_text(system, "system prompt")
    _check_num_images(num_images)
    return (
        f"{IM_START}system\n{system}{IM_END}\n"
        f"{IM_START}user\n{IMAGE_PLACEHOLDER * num_images}{instruction}{IM_END}\n"
        f"{IM_START}assistant\n"
    )


def merged_image_tokens(grid_thw: Sequence[int], merge_size: int = SPATIAL_MERGE_SIZE) -> int:
    """Language-model tokens of one image with patch grid (t, h, w): t * h * w // merge_size**2."""
    if len(grid_thw) != 3:
        raise ValueError(f"grid_thw must be (t, h, w), got {tuple(grid_thw)!r}")
    t, h, w = (int(v) for v in grid_thw)
    if t < 1 or h % merge_size or w % merge_size or h < merge_size or w < merge_size:
        raise ValueError(
            f"grid_thw {tuple(grid_thw)!r}: t must be >= 1 and h, w positive multiples of {merge_size}"
        )
    return t * h * w // (merge_size * merge_size)


def encode_prompt(
    tokenizer,
    instruction: str,
    image_token_counts: Sequence[int],
    *,
    system: str = SYSTEM_PROMPT,
) -> list[int]:
    """Token ids of `render_prompt(instruction, len(image_token_counts), system)` with the i-th
    `<|image_pad|>` repeated `image_token_counts[i]` times."""
    counts = [int(count) for count in image_token_counts]
    if any(count < 1 for count in counts):
        raise ValueError(f"image_token_counts must all be >= 1, got {counts}")
    text = render_prompt(instruction, num_images=len(counts), system=system)
    ids = tokenizer.encode(text, add_special_tokens=False)
    image_pad = _token_id(tokenizer, IMAGE_PAD)
    slots = [position for position, token in enumerate(ids) if token == image_pad]
    if len(slots) != len(counts):  # the tokenizer does not treat <|image_pad|> as one token
        raise ValueError(
            f"the tokenizer produced {len(slots)} {IMAGE_PAD} tokens for {len(counts)} images; "
            "is it a Qwen2.5-VL-style tokenizer with the vision special tokens?"
        )
    expanded: list[int] = []
    previous = 0
    for slot, count in zip(slots, counts):
        expanded.extend(ids[previous:slot])
        expanded.extend([image_pad] * count)
        previous = slot + 1
    expanded.extend(ids[previous:])
    return expanded


def encode_completion(tokenizer, text: str) -> list[int]:
    """Token ids of an assistant reply followed by `<|im_end|>` (the end of the turn)."""
    check_plain_text(text, "completion")
    return list(tokenizer.encode(text, add_special_tokens=False)) + [_token_id(tokenizer, IM_END)]


def _token_id(tokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and tokenizer.unk_token != token):
        raise ValueError(f"the tokenizer has no {token!r} token")
    return int(token_id)


def _check_num_images(num_images: int) -> None:
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 0:
        raise ValueError(f"num_images must be an integer >= 0, got {num_images!r}")
