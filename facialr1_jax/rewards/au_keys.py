"""Exact keys for the AU numbers a completion mentions, in uint32 (no jax_enable_x64 needed).

The AU reward compares mentions as strings ("AU01" != "AU1", "AU120" != "AU12"), so a mention is
identified by its digit string. A key is KEY_WORDS uint32 words:

    [digit count, block 0, block 1, block 2]

and every digit d at position p (0-based, from the left) adds d * weight(p) to one block:

    p in [0, 9):   block 0, weight 10**(8 - p)      (the first 9 digits, right-padded with zeros)
    p in [9, 18):  block 1, weight 10**(17 - p)
    p in [18, 26): block 2, weight 10**(25 - p)
    p >= 26:       block 2, weight = a 32-bit hash of p, sums taken modulo 2**32.

With the digit count, the blocks spell out every digit string of up to 26 digits exactly, so keys
of such mentions are equal iff the strings are. Longer digit runs fall back to a position-keyed
hash: two different runs of 27+ digits could share a key with probability about 2**-32.

Most mentions are short, and the scan carries them in a one-word short form instead
(`pack_short`: 10**len + value, exact up to 9 digits); full keys are computed only when a batch
holds a longer mention.

A mention is canonical when its digits are the decimal form of a number below the AU cap (no
leading zero, or the single digit "0"): exactly the strings a ground-truth AU "AU<n>" can equal.
The same arithmetic is written for NumPy (offline tables) and jax.numpy; tests check they agree.
"""

from __future__ import annotations

import numpy as np

KEY_WORDS = 4
DIGITS_PER_BLOCK = 9
EXACT_DIGITS = 26
_EXACT_WEIGHTS = [10 ** (8 - p) for p in range(9)] + [10 ** (17 - p) for p in range(9, 18)] + [
    10 ** (25 - p) for p in range(18, 26)
]


def _hash_weight_numpy(position: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = position.astype(np.uint32) * np.uint32(0x9E3779B1) + np.uint32(0x7F4A7C15)
        h ^= h >> np.uint32(15)
        h *= np.uint32(0x2C1B3C6D)
        h ^= h >> np.uint32(12)
    return h


def contribution_numpy(position: np.ndarray, digit: np.ndarray) -> np.ndarray:
    """[..., 3] uint32: what digit `digit` at `position` adds to blocks 0, 1, 2."""
    position = np.asarray(position, np.int64)
    digit = np.asarray(digit, np.uint32)
    exact = np.asarray(_EXACT_WEIGHTS, np.uint32)[np.clip(position, 0, EXACT_DIGITS - 1)]
    weight = np.where(position < EXACT_DIGITS, exact, _hash_weight_numpy(position))
    with np.errstate(over="ignore"):
        term = (digit * weight).astype(np.uint32)
    block = np.minimum(position // DIGITS_PER_BLOCK, 2)
    return np.stack([np.where(block == b, term, np.uint32(0)) for b in range(3)], axis=-1).astype(np.uint32)


def key_of_digits(digits: str) -> np.ndarray:
    """The key of one digit string."""
    key = np.zeros(KEY_WORDS, np.uint32)
    key[0] = len(digits)
    for position, char in enumerate(digits):
        with np.errstate(over="ignore"):
            key[1:] += contribution_numpy(np.int64(position), np.uint32(int(char)))
    return key


# Short form of a mention with at most 9 digits: 10**len + value (< 2 * 10**9), which keeps
# leading zeros apart ("01" -> 101, "1" -> 11). LONG marks 10 or more digits; 0 = no mention.
SHORT_MAX_DIGITS = 9
LONG = 0xFFFFFFFF
_SHORT_POWERS = [10**i for i in range(SHORT_MAX_DIGITS + 1)]


def pack_short_numpy(length: np.ndarray, value: np.ndarray) -> np.ndarray:
    length = np.asarray(length, np.int64)
    base = np.asarray(_SHORT_POWERS, np.uint32)[np.clip(length, 0, SHORT_MAX_DIGITS)]
    with np.errstate(over="ignore"):
        short = (base + np.asarray(value, np.uint32)).astype(np.uint32)
    return np.where(length == 0, np.uint32(0), np.where(length > SHORT_MAX_DIGITS, np.uint32(LONG), short))


def pack_short_jax(length, value):
    import jax.numpy as jnp

    base = jnp.asarray(_SHORT_POWERS, jnp.uint32)[jnp.clip(length, 0, SHORT_MAX_DIGITS)]
    short = base + value.astype(jnp.uint32)
    return jnp.where(length == 0, jnp.uint32(0), jnp.where(length > SHORT_MAX_DIGITS, jnp.uint32(LONG), short))


def short_canonical_number_jax(short, cap: int):
    """(is canonical, number) of short-form mentions: the number has no leading zero (or is the
    single digit 0) and is below cap."""
    import jax.numpy as jnp

    canonical = jnp.zeros(short.shape, bool)
    number = jnp.zeros(short.shape, jnp.int32)
    for digits in range(1, len(str(max(cap - 1, 0))) + 1):
        low = 0 if digits == 1 else 10 ** (digits - 1)
        high = min(cap, 10**digits)
        if low >= high:
            continue
        inside = (short >= jnp.uint32(10**digits + low)) & (short < jnp.uint32(10**digits + high))
        canonical = canonical | inside
        number = jnp.where(inside, (short - jnp.uint32(10**digits)).astype(jnp.int32), number)
    return canonical, number


def _hash_weight_jax(position):
    import jax.numpy as jnp

    h = position.astype(jnp.uint32) * jnp.uint32(0x9E3779B1) + jnp.uint32(0x7F4A7C15)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x2C1B3C6D)
    return h ^ (h >> 12)


def contribution_jax(position, digit):
    """jax.numpy twin of `contribution_numpy`."""
    import jax.numpy as jnp

    position = position.astype(jnp.int32)
    exact = jnp.asarray(_EXACT_WEIGHTS, jnp.uint32)[jnp.clip(position, 0, EXACT_DIGITS - 1)]
    weight = jnp.where(position < EXACT_DIGITS, exact, _hash_weight_jax(position))
    term = digit.astype(jnp.uint32) * weight
    block = jnp.minimum(position // DIGITS_PER_BLOCK, 2)
    return jnp.stack([jnp.where(block == b, term, jnp.uint32(0)) for b in range(3)], axis=-1)


def canonical_number_jax(key, cap: int):
    """(is canonical, number) for keys [..., KEY_WORDS]: canonical iff 1 <= digits <= 9, no
    leading zero unless the mention is "0", and number < cap."""
    import jax.numpy as jnp

    length = key[..., 0].astype(jnp.int32)
    padded = key[..., 1]
    powers = jnp.asarray([10**i for i in range(DIGITS_PER_BLOCK + 1)], jnp.uint32)
    value = padded // powers[jnp.clip(DIGITS_PER_BLOCK - length, 0, DIGITS_PER_BLOCK)]
    no_leading_zero = (length == 1) | (padded >= jnp.uint32(10**8))
    canonical = (length >= 1) & (length <= DIGITS_PER_BLOCK) & no_leading_zero & (value < cap)
    return canonical, value.astype(jnp.int32)
