"""Exact keys for the AU numbers a completion mentions, in uint32 (no jax_enable_x64 needed).

The AU reward compares mentions as strings ("AU01" != "AU1", "AU120" != "AU12"), so a mention is
identified by its digit string. A key is KEY_WORDS uint32 words:

    [digit count, block 0, block 1, block 2]

Block 0 holds the first 9 digits as a decimal number, block 1 the next 9; block 2 takes every
later digit as (block * 10 + digit) mod LAST_BLOCK_PRIME. Together with the digit count this is
injective for every digit string of up to 26 digits (block 2 is exact while it holds at most 8
digits, as 10**8 < LAST_BLOCK_PRIME); a longer run is reduced modulo a 29-bit prime, so two
different runs of 27+ digits could share a key with probability about 2e-9. Everything shorter
is exact.

A mention is canonical when its digits are the decimal form of a number below the AU cap
(no leading zero, or the single digit "0"): exactly the strings a ground-truth AU "AU<n>" can
equal. Canonical mentions go into a [cap] multi-hot; all mentions count towards |P| after
de-duplication of their keys.

The same arithmetic is written for NumPy (building tables offline) and for jax.numpy (the scan);
tests check that they agree.
"""

from __future__ import annotations

import numpy as np

KEY_WORDS = 4
DIGITS_PER_BLOCK = 9
EXACT_DIGITS = 2 * DIGITS_PER_BLOCK + 8
# Largest prime p with (p - 1) * 10 + 9 < 2**32, so block 2 never overflows uint32.
LAST_BLOCK_PRIME = 429_496_709
_POWERS_OF_TEN = [10**i for i in range(DIGITS_PER_BLOCK + 1)]


def empty_key_numpy(shape: tuple[int, ...] = ()) -> np.ndarray:
    return np.zeros(shape + (KEY_WORDS,), dtype=np.uint32)


def append_digit_numpy(key: np.ndarray, digit: np.ndarray, where: np.ndarray) -> np.ndarray:
    """Appends `digit` to the keys selected by `where` (broadcast over leading axes)."""
    key = key.copy()
    digit = np.asarray(digit, dtype=np.uint32)
    length = key[..., 0]
    block = np.minimum(length // DIGITS_PER_BLOCK, 2)
    for b in range(3):
        word = key[..., 1 + b]
        grown = word * np.uint32(10) + digit
        if b == 2:
            grown = grown % np.uint32(LAST_BLOCK_PRIME)
        key[..., 1 + b] = np.where(where & (block == b), grown, word)
    key[..., 0] = np.where(where, length + np.uint32(1), length)
    return key


def key_of_digits(digits: str) -> np.ndarray:
    """The key of one digit string (reference for tests and for mentions inside one token)."""
    key = empty_key_numpy()
    for char in digits:
        key = append_digit_numpy(key, np.uint32(int(char)), np.bool_(True))
    return key


def append_digit_jax(key, digit, where):
    """jax.numpy twin of `append_digit_numpy`: key [..., KEY_WORDS] uint32."""
    import jax.numpy as jnp

    digit = digit.astype(jnp.uint32)
    length = key[..., 0]
    block = jnp.minimum(length // DIGITS_PER_BLOCK, 2)
    words = [length + where.astype(jnp.uint32)]
    for b in range(3):
        word = key[..., 1 + b]
        grown = word * jnp.uint32(10) + digit
        if b == 2:
            grown = grown % jnp.uint32(LAST_BLOCK_PRIME)
        words.append(jnp.where(where & (block == b), grown, word))
    return jnp.stack(words, axis=-1)


def canonical_number_jax(key, cap: int):
    """(is canonical, number) for keys [..., KEY_WORDS]: canonical iff 1 <= digits <= 9, no
    leading zero unless the mention is "0", and number < cap."""
    import jax.numpy as jnp

    length = key[..., 0]
    value = key[..., 1]
    powers = jnp.asarray(_POWERS_OF_TEN, dtype=jnp.uint32)
    smallest_without_leading_zero = powers[jnp.clip(length.astype(jnp.int32) - 1, 0, DIGITS_PER_BLOCK)]
    no_leading_zero = (length == 1) | (value >= smallest_without_leading_zero)
    canonical = (length >= 1) & (length <= DIGITS_PER_BLOCK) & no_leading_zero & (value < cap)
    return canonical, value.astype(jnp.int32)
