"""AU mention keys: exact for digit strings of up to 26 digits, identical in NumPy and JAX."""

from __future__ import annotations

import random

import jax.numpy as jnp
import numpy as np
import pytest

from facialr1_jax.rewards import au_keys


def _random_digits(rng: random.Random, max_length: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, max_length)))


def test_keys_separate_every_digit_string_up_to_26_digits():
    rng = random.Random(0)
    strings = {_random_digits(rng, au_keys.EXACT_DIGITS) for _ in range(3000)}
    strings |= {"0", "00", "000", "1", "01", "001", "10", "100", "12", "120", "012", "0" * 26, "9" * 26}
    strings |= {"1" + "0" * n for n in range(26)} | {"0" * n + "1" for n in range(1, 26)}
    keys = {tuple(au_keys.key_of_digits(s).tolist()) for s in strings}
    assert len(keys) == len(strings)


def test_long_keys_are_deterministic_and_distinguish_typical_strings():
    rng = random.Random(1)
    strings = {_random_digits(rng, 60) + "7" * 27 for _ in range(500)}
    keys = [tuple(au_keys.key_of_digits(s).tolist()) for s in strings]
    assert len(set(keys)) == len(strings)
    assert tuple(au_keys.key_of_digits("5" * 40).tolist()) == tuple(au_keys.key_of_digits("5" * 40).tolist())


def test_numpy_and_jax_contributions_agree():
    rng = np.random.default_rng(2)
    positions = rng.integers(0, 200, 5000)
    digits = rng.integers(0, 10, 5000)
    expected = au_keys.contribution_numpy(positions, digits)
    got = np.asarray(au_keys.contribution_jax(jnp.asarray(positions), jnp.asarray(digits)))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "digits, cap, canonical, number",
    [("0", 100, True, 0), ("7", 100, True, 7), ("12", 100, True, 12), ("99", 100, True, 99),
     ("01", 100, False, None), ("00", 100, False, None), ("120", 100, False, None),
     ("120", 1000, True, 120), ("100", 100, False, None), ("123456789", 10**9, True, 123456789),
     ("1234567890", 10**9, False, None)],
)
def test_canonical_numbers(digits, cap, canonical, number):
    key = jnp.asarray(au_keys.key_of_digits(digits))
    is_canonical, value = au_keys.canonical_number_jax(key, cap)
    assert bool(is_canonical) == canonical
    if canonical:
        assert int(value) == number
    short = au_keys.pack_short_numpy(len(digits), int(digits) % 2**32)
    if len(digits) <= au_keys.SHORT_MAX_DIGITS:
        assert int(short) == 10 ** len(digits) + int(digits)
        is_canonical, value = au_keys.short_canonical_number_jax(jnp.asarray(short, jnp.uint32), cap)
        assert bool(is_canonical) == canonical
        if canonical:
            assert int(value) == number
    else:
        assert int(short) == au_keys.LONG


def test_short_form_separates_leading_zeros_and_marks_empty_and_long():
    shorts = {int(au_keys.pack_short_numpy(len(s), int(s))) for s in ["1", "01", "001", "10", "010", "0", "00"]}
    assert len(shorts) == 7
    assert int(au_keys.pack_short_numpy(0, 0)) == 0
    assert int(au_keys.pack_short_numpy(10, 5)) == au_keys.LONG
    np.testing.assert_array_equal(
        np.asarray(au_keys.pack_short_jax(jnp.asarray([0, 3, 10]), jnp.asarray([0, 7, 1], jnp.uint32))),
        au_keys.pack_short_numpy(np.array([0, 3, 10]), np.array([0, 7, 1])),
    )
