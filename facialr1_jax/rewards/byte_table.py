"""Token id -> bytes, for Hugging Face byte-level BPE tokenizers (GPT-2 style, Qwen2, ours).

A byte-level tokenizer decodes exactly: `tokenizer.decode(ids)` concatenates the bytes of every
token and decodes the result as UTF-8 with replacement characters (`rewards.utf8`). So the text a
Python reward sees is a function of the byte string, and the jitted rewards can work from a table
of token bytes. The table reproduces the decoder of the `tokenizers` library:

  * every token string passes through the ByteLevel decoder: if all its characters belong to the
    GPT-2 byte <-> unicode map (`bytes_to_unicode`), they are mapped back to bytes ("Ġhello" ->
    b" hello"); otherwise the token's own UTF-8 is used (an added token such as "a b");
  * special added tokens (`<|im_end|>`, `<|endoftext|>`, the pad token, ...) map to zero bytes,
    as in `decode(..., skip_special_tokens=True)`. The completion mask already stops at the
    end-of-turn token, so this only drops the closing `<|im_end|>` itself (which would otherwise
    break the format reward's "nothing after </answer>" rule);
  * ids outside the vocabulary (a model's padded embedding rows) map to zero bytes, as the
    decoder skips ids it does not know.

The reference text of a completion is therefore `decode_completion(tokenizer, ids, mask)`: the
tokens where mask is true, special tokens skipped, no clean-up of spaces.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence

import numpy as np

from facialr1_jax.rewards.utf8 import decode_replace


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte-level alphabet: each byte -> one printable character.

    Printable Latin-1 bytes map to themselves; the other 68 (controls, space, 0x7F-0xA0, 0xAD)
    map to U+0100 onwards in byte order, so "Ġ" (U+0120) is the space byte.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping: dict[int, str] = {byte: chr(byte) for byte in printable}
    next_code_point = 256
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(next_code_point)
            next_code_point += 1
    return mapping


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_string_to_bytes(token: str) -> bytes:
    """What the ByteLevel decoder makes of one token string."""
    table = unicode_to_bytes()
    if all(char in table for char in token):
        return bytes(table[char] for char in token)
    return token.encode("utf-8")


class NotByteLevelError(ValueError):
    """The tokenizer does not decode through the byte-level decoder, so token bytes are unknown."""


@dataclasses.dataclass(frozen=True, eq=False)
class TokenByteTable:
    """Bytes of every token id.

    token_bytes: [vocab, max_token_bytes] uint8, zero-padded.
    lengths:     [vocab] int32, bytes per token (0 for special tokens and ids with no token).
    special:     [vocab] bool, special added tokens (decoded as nothing).
    """

    token_bytes: np.ndarray
    lengths: np.ndarray
    special: np.ndarray

    @property
    def vocab_size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def max_token_bytes(self) -> int:
        return int(self.token_bytes.shape[1])

    def bytes_of(self, token_id: int) -> bytes:
        """The bytes of one id; b"" for ids outside the vocabulary."""
        if not 0 <= token_id < self.vocab_size:
            return b""
        return self.token_bytes[token_id, : self.lengths[token_id]].tobytes()

    def decode(self, ids: Sequence[int], mask: Sequence[bool] | None = None) -> str:
        """The text `tokenizer.decode(ids[mask], skip_special_tokens=True)` gives."""
        if mask is None:
            mask = [True] * len(ids)
        if len(mask) != len(ids):
            raise ValueError(f"mask has {len(mask)} entries but ids has {len(ids)}")
        return decode_replace(b"".join(self.bytes_of(int(i)) for i, keep in zip(ids, mask) if keep))

    @classmethod
    def from_token_bytes(cls, per_token: Sequence[bytes], special: Sequence[bool]) -> "TokenByteTable":
        if len(per_token) != len(special):
            raise ValueError(f"{len(per_token)} token byte strings but {len(special)} special flags")
        lengths = np.array([len(b) for b in per_token], dtype=np.int32)
        width = max(1, int(lengths.max(initial=0)))
        table = np.zeros((len(per_token), width), dtype=np.uint8)
        for token_id, data in enumerate(per_token):
            table[token_id, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        return cls(table, lengths, np.asarray(special, dtype=bool))


def _backend(tokenizer):
    """The `tokenizers.Tokenizer` behind a transformers tokenizer (or the object itself)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if backend is None and hasattr(tokenizer, "to_str") and hasattr(tokenizer, "id_to_token"):
        backend = tokenizer
    if backend is None:
        raise NotByteLevelError(
            f"{type(tokenizer).__name__} has no `tokenizers` backend; the rewards need a fast "
            "(Rust) byte-level BPE tokenizer such as Qwen2's or the bundled one"
        )
    return backend


def _check_byte_level_decoder(backend) -> None:
    decoder = json.loads(backend.to_str()).get("decoder")
    if not decoder or decoder.get("type") != "ByteLevel":
        raise NotByteLevelError(
            f"tokenizer decoder is {decoder and decoder.get('type')!r}, not 'ByteLevel': token ids "
            "do not map to fixed bytes, so the jitted rewards cannot reproduce its decode"
        )


def build_byte_table(tokenizer) -> TokenByteTable:
    """The token -> bytes table of a Hugging Face byte-level tokenizer.

    Accepts a transformers fast tokenizer or a `tokenizers.Tokenizer`. Raises NotByteLevelError
    when the decoder is not the plain ByteLevel decoder.
    """
    backend = _backend(tokenizer)
    _check_byte_level_decoder(backend)
    added = backend.get_added_tokens_decoder()
    vocab_size = backend.get_vocab_size(with_added_tokens=True)
    if added:
        vocab_size = max(vocab_size, max(added) + 1)
    per_token: list[bytes] = []
    special: list[bool] = []
    for token_id in range(vocab_size):
        added_token = added.get(token_id)
        is_special = bool(added_token is not None and added_token.special)
        token = backend.id_to_token(token_id)
        special.append(is_special)
        per_token.append(b"" if is_special or token is None else token_string_to_bytes(token))
    return TokenByteTable.from_token_bytes(per_token, special)


def decode_completion(tokenizer, ids: Sequence[int], mask: Sequence[bool] | None = None) -> str:
    """The reference text of one completion: the tokenizer's own decode of the kept tokens,
    special tokens skipped and no space clean-up. The Python oracle (`fea.answers`) scores this
    text; the jitted rewards score the same ids."""
    if mask is None:
        mask = [True] * len(ids)
    if len(mask) != len(ids):
        raise ValueError(f"mask has {len(mask)} entries but ids has {len(ids)}")
    # Negative ids cannot reach the Rust decoder; like ids past the vocabulary they decode to
    # nothing, which is also what the byte table gives them.
    kept = [int(i) for i, keep in zip(ids, mask) if keep and int(i) >= 0]
    return _backend(tokenizer).decode(kept, skip_special_tokens=True)
