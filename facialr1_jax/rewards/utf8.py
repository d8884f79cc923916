"""UTF-8 decoding with replacement characters, exactly as the tokenizer's decode does it.

Hugging Face byte-level tokenizers decode by concatenating the bytes of every token and running
Rust's `String::from_utf8_lossy`; Python's `bytes.decode("utf-8", errors="replace")` gives the same
text. Both follow the Unicode "maximal subpart" practice: an invalid or truncated sequence is
replaced by ONE U+FFFD per maximal prefix of a valid sequence, and decoding restarts at the first
byte that breaks it. So:

  * a stray continuation byte (0x80-0xBF), or C0, C1, F5-FF, is one U+FFFD by itself;
  * a lead byte followed by a byte outside its allowed range ends as U+FFFD after the valid part
    ("E2 82 41" -> U+FFFD "A"); the second byte has lead-specific ranges (E0: A0-BF, ED: 80-9F,
    F0: 90-BF, F4: 80-8F) that exclude overlong forms, surrogates and code points above U+10FFFF;
  * a valid but incomplete sequence at the very end of the text is one U+FFFD.

Python's *incremental* decoder is not a safe reference for token boundaries (it buffers "ED A0",
which the one-shot decoder replaces at once), so this module spells the rule out and the tests
check it against `bytes.decode` on random bytes. The jitted scanner (`rewards.scan`) carries the
same state across token boundaries: the lead byte, how many bytes of the sequence have been seen,
and the code point bits so far.
"""

from __future__ import annotations

REPLACEMENT_CHARACTER = "\ufffd"


def sequence_length(lead: int) -> int:
    """Total bytes of the sequence a lead byte starts: 1 (ASCII), 2-4, or 0 for a byte that can
    never start a character (continuation bytes, C0, C1, F5-FF)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def second_byte_range(lead: int) -> tuple[int, int]:
    """Inclusive range allowed for the byte after `lead` (later bytes are always 80-BF)."""
    return {0xE0: (0xA0, 0xBF), 0xED: (0x80, 0x9F), 0xF0: (0x90, 0xBF), 0xF4: (0x80, 0x8F)}.get(
        lead, (0x80, 0xBF)
    )


def is_continuation(byte: int) -> bool:
    return 0x80 <= byte <= 0xBF


def split_utf8(data: bytes) -> tuple[list[str], bytes]:
    """Decodes `data` as the start or middle of a longer text.

    Returns the characters (with U+FFFD for every maximal invalid subpart) and the trailing bytes
    of a valid but incomplete sequence, which the next bytes may still complete (b"" if none).
    `"".join(chars) + (REPLACEMENT_CHARACTER if tail else "")` equals
    `data.decode("utf-8", "replace")`.
    """
    chars: list[str] = []
    i, n = 0, len(data)
    while i < n:
        lead = data[i]
        size = sequence_length(lead)
        if size == 1:
            chars.append(chr(lead))
            i += 1
            continue
        if size == 0:
            chars.append(REPLACEMENT_CHARACTER)
            i += 1
            continue
        low, high = second_byte_range(lead)
        j = i + 1
        while j < i + size and j < n:
            allowed = (low, high) if j == i + 1 else (0x80, 0xBF)
            if not allowed[0] <= data[j] <= allowed[1]:
                break
            j += 1
        if j == i + size:
            chars.append(data[i:j].decode("utf-8"))
        elif j == n:
            return chars, data[i:]
        else:
            chars.append(REPLACEMENT_CHARACTER)
        i = j
    return chars, b""


def decode_replace(data: bytes) -> str:
    """The text a byte-level tokenizer's decode produces for these bytes."""
    chars, tail = split_utf8(data)
    return "".join(chars) + (REPLACEMENT_CHARACTER if tail else "")
