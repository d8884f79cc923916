"""Lifting the character automata to whole tokens, so the scan takes one step per token.

Each token's bytes are split the way a decoder meets them in the middle of a text:

  head  its leading UTF-8 continuation bytes (at most 3 are looked at): they may complete a
        character left open by the previous tokens, which only the scan can know;
  rest  from the first other byte: decoded here once (`utf8.split_utf8`), giving a fixed
        sequence of character classes;
  tail  a valid but unfinished multi-byte sequence at its end, handed on to the next token.

For the rest, every machine's effect is precomputed for every start state: the end state, and
the outputs (the answer machine's last emission; the think/AU machine's digit/END program, see
`AUProgram`). Tokens with the same effect share a row, so the tables stay small even for a 150k
vocabulary. Row `vocab_size` is the empty token (special tokens, masked positions, unknown ids).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from facialr1_jax.rewards import au_keys, automata, machines
from facialr1_jax.rewards.alphabet import Alphabet
from facialr1_jax.rewards.byte_table import TokenByteTable
from facialr1_jax.rewards.utf8 import is_continuation, sequence_length, split_utf8

MAX_HEAD_BYTES = 3


# An open (valid but unfinished) UTF-8 sequence is packed into one int32: the code point bits
# read so far, the number of bytes read (1-3) and the sequence length (2-4). 0 = nothing open.
# The lead byte itself is not kept: while only it has been read, (length, bits) identify the
# four leads whose second byte has a narrower range (E0, ED, F0, F4; `utf8.second_byte_range`).
OPEN_COUNT_SHIFT = 21
OPEN_NEED_SHIFT = 24
OPEN_CODE_MASK = (1 << OPEN_COUNT_SHIFT) - 1


def pack_open(code: int, count: int, need: int) -> int:
    return code | (count << OPEN_COUNT_SHIFT) | (need << OPEN_NEED_SHIFT)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenSplits:
    """Per token (vocab_size + 1 rows; the last is the empty token)."""

    head_count: np.ndarray  # [V+1] int32, 0..3 leading continuation bytes handled by the scan
    head_bytes: np.ndarray  # [V+1, 3] int32
    has_rest: np.ndarray  # [V+1] bool, bytes after the head (the open sequence must end)
    tail_open: np.ndarray  # [V+1] int32, the unfinished sequence at the end, packed (0 = none)
    rest_classes: tuple[tuple[int, ...], ...]  # class ids of the rest's characters

    @property
    def num_rows(self) -> int:
        return int(self.head_count.shape[0])


def lead_bits(lead: int) -> int:
    """The payload bits of a lead byte (the code point prefix it carries)."""
    size = sequence_length(lead)
    return lead & {2: 0x1F, 3: 0x0F, 4: 0x07}[size]


def split_tokens(table: TokenByteTable, alphabet: Alphabet) -> TokenSplits:
    rows = table.vocab_size + 1
    head_count = np.zeros(rows, np.int32)
    head_bytes = np.zeros((rows, MAX_HEAD_BYTES), np.int32)
    has_rest = np.zeros(rows, bool)
    tail_open = np.zeros(rows, np.int32)
    rest_classes: list[tuple[int, ...]] = []
    for token_id in range(rows):
        data = table.bytes_of(token_id) if token_id < table.vocab_size else b""
        leading = 0
        while leading < len(data) and is_continuation(data[leading]):
            leading += 1
        head = min(leading, MAX_HEAD_BYTES)
        head_count[token_id] = head
        head_bytes[token_id, :head] = list(data[:head])
        has_rest[token_id] = head < len(data)
        chars, tail = split_utf8(data[head:])
        rest_classes.append(tuple(alphabet.class_ids(chars)))
        if tail:
            code = lead_bits(tail[0])
            for byte in tail[1:]:
                code = (code << 6) | (byte & 0x3F)
            tail_open[token_id] = pack_open(code, len(tail), sequence_length(tail[0]))
    return TokenSplits(head_count, head_bytes, has_rest, tail_open, tuple(rest_classes))


# ------------------------------------------------------------------------------ composites
def _class_projection(machine: automata.Machine) -> np.ndarray:
    """Class id -> the machine's own letter (classes with identical columns share one)."""
    columns = np.concatenate([machine.next_state.T, machine.output.T], axis=1)
    _, projection = np.unique(columns, axis=0, return_inverse=True)
    return projection.reshape(-1)


def _unique_sequences(splits: TokenSplits, machine: automata.Machine):
    """Distinct rest sequences as this machine sees them, padded with the no-op class.

    Returns (sequence id per token, [num_sequences, max_len] class ids)."""
    projection = _class_projection(machine)
    representative = {}
    for class_id, letter in enumerate(projection):
        representative.setdefault(int(letter), class_id)
    ids: dict[tuple[int, ...], int] = {}
    sequence_of_token = np.empty(splits.num_rows, np.int64)
    for token_id, classes in enumerate(splits.rest_classes):
        letters = tuple(representative[int(projection[c])] for c in classes)
        sequence_of_token[token_id] = ids.setdefault(letters, len(ids))
    width = max([len(s) for s in ids] + [1])
    noop = machine.num_classes  # `with_noop_class` appends it
    padded = np.full((len(ids), width), noop, np.int64)
    for letters, index in ids.items():
        padded[index, : len(letters)] = letters
    return sequence_of_token, padded


def _compress_rows(sequence_of_token: np.ndarray, *row_arrays: np.ndarray):
    """Merges sequences with identical table rows: (row id per token, unique row arrays)."""
    flat = np.ascontiguousarray(
        np.concatenate([a.reshape(a.shape[0], -1).astype(np.uint32) for a in row_arrays], axis=1)
    )
    # One opaque bytes value per row: np.unique then sorts with memcmp, far faster than axis=0.
    as_bytes = flat.view(np.dtype((np.void, flat.dtype.itemsize * flat.shape[1]))).reshape(-1)
    _, first, inverse = np.unique(as_bytes, return_index=True, return_inverse=True)
    row_of_token = inverse.reshape(-1)[sequence_of_token].astype(np.int32)
    return row_of_token, tuple(a[first] for a in row_arrays)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenTable:
    """A machine's effect per token row: row_of_token [V+1]; next_state [R, Q]; last_output [R, Q]
    (0 when the rest emits nothing, else its last output)."""

    machine: automata.Machine
    row_of_token: np.ndarray
    next_state: np.ndarray
    last_output: np.ndarray


def token_table(splits: TokenSplits, machine: automata.Machine) -> TokenTable:
    padded_machine = automata.with_noop_class(machine)
    sequence_of_token, sequences = _unique_sequences(splits, machine)
    num_sequences = sequences.shape[0]
    state = np.broadcast_to(np.arange(machine.num_states), (num_sequences, machine.num_states)).copy()
    last_output = np.zeros_like(state)
    for position in range(sequences.shape[1]):
        classes = sequences[:, position : position + 1]
        out = padded_machine.output[state, classes]
        last_output = np.where(out != 0, out, last_output)
        state = padded_machine.next_state[state, classes]
    row_of_token, (next_state, last_output) = _compress_rows(sequence_of_token, state, last_output)
    return TokenTable(machine, row_of_token, next_state.astype(np.int32), last_output.astype(np.int32))


@dataclasses.dataclass(frozen=True, eq=False)
class AUProgram:
    """What the rest of a token does to the AU mentions, per row and start state.

    Within a token the think/AU machine emits DIGIT d and END operations. The scan holds the
    mention being read; the token's effect is:
      * `lead_digits` (`lead_count` of them): digits before the token's first END, appended to
        the held mention (`lead_value`: the same digits as a number, modulo 2**32);
      * `has_end`: an END follows, which completes the held mention (if it has any digit);
      * `inner_keys` (`inner_count`): mentions started and completed inside the token;
      * `tail_key`: after the last END, the digits of a mention still open at the token's end
        (it becomes the held mention); without an END, the held mention simply grows.
    Mentions are given both as full keys (`au_keys`) and in the short form of `au_keys.pack_short`
    (`inner_short`, `tail_value`), which the fast path of the scan uses.
    """

    table: TokenTable
    lead_count: np.ndarray  # [R, Q] int32
    lead_digits: np.ndarray  # [R, Q, D] int32
    lead_value: np.ndarray  # [R, Q] uint32
    has_end: np.ndarray  # [R, Q] bool
    inner_count: np.ndarray  # [R, Q] int32
    inner_keys: np.ndarray  # [R, Q, E, KEY_WORDS] uint32
    inner_short: np.ndarray  # [R, Q, E] uint32 (0 = no mention)
    tail_key: np.ndarray  # [R, Q, KEY_WORDS] uint32
    tail_value: np.ndarray  # [R, Q] uint32


def au_program(splits: TokenSplits, machine: automata.Machine) -> AUProgram:
    padded_machine = automata.with_noop_class(machine)
    sequence_of_token, sequences = _unique_sequences(splits, machine)
    num_sequences, width = sequences.shape
    num_states = machine.num_states
    ops_of_sequences = padded_machine.output[:, sequences]  # [Q, N, W]
    digit_capacity = max(1, int((ops_of_sequences >= machines.OP_DIGIT0).sum(axis=-1).max(initial=0)))
    end_capacity = max(1, int((ops_of_sequences == machines.OP_END).sum(axis=-1).max(initial=0)))

    shape = (num_sequences, num_states)
    state = np.broadcast_to(np.arange(num_states), shape).copy()
    has_end = np.zeros(shape, bool)
    lead_count = np.zeros(shape, np.int32)
    lead_digits = np.zeros(shape + (digit_capacity,), np.int32)
    lead_value = np.zeros(shape, np.uint32)
    inner_count = np.zeros(shape, np.int32)
    inner_keys = np.zeros(shape + (end_capacity, au_keys.KEY_WORDS), np.uint32)
    inner_short = np.zeros(shape + (end_capacity,), np.uint32)
    current = np.zeros(shape + (au_keys.KEY_WORDS,), np.uint32)
    current_value = np.zeros(shape, np.uint32)
    rows, columns = np.indices(shape)
    for position in range(width):
        classes = sequences[:, position : position + 1]
        op = padded_machine.output[state, classes]
        digit = np.clip(op - machines.OP_DIGIT0, 0, 9).astype(np.uint32)
        is_digit = op >= machines.OP_DIGIT0
        is_end = op == machines.OP_END
        leading = is_digit & ~has_end
        slot = np.minimum(lead_count, digit_capacity - 1)
        lead_digits[rows, columns, slot] = np.where(leading, digit, lead_digits[rows, columns, slot])
        lead_count += leading
        grow = is_digit & has_end
        with np.errstate(over="ignore"):
            lead_value = np.where(leading, lead_value * np.uint32(10) + digit, lead_value).astype(np.uint32)
            current_value = np.where(grow, current_value * np.uint32(10) + digit, current_value).astype(np.uint32)
            current[..., 1:] += np.where(
                grow[..., None], au_keys.contribution_numpy(current[..., 0], digit), 0
            ).astype(np.uint32)
        current[..., 0] += grow.astype(np.uint32)
        inner_end = is_end & has_end
        slot = np.minimum(inner_count, end_capacity - 1)
        inner_keys[rows, columns, slot] = np.where(inner_end[..., None], current, inner_keys[rows, columns, slot])
        inner_short[rows, columns, slot] = np.where(
            inner_end, au_keys.pack_short_numpy(current[..., 0], current_value), inner_short[rows, columns, slot]
        )
        inner_count += inner_end
        current = np.where(is_end[..., None], np.uint32(0), current)
        current_value = np.where(is_end, np.uint32(0), current_value)
        has_end |= is_end
        state = padded_machine.next_state[state, classes]
    row_of_token, arrays = _compress_rows(
        sequence_of_token,
        state,
        lead_count,
        lead_digits,
        lead_value,
        has_end,
        inner_count,
        inner_keys,
        inner_short,
        current,
        current_value,
    )
    (next_state, lead_count, lead_digits, lead_value, has_end) = arrays[:5]
    (inner_count, inner_keys, inner_short, current, current_value) = arrays[5:]
    table = TokenTable(machine, row_of_token, next_state.astype(np.int32), np.zeros_like(next_state, np.int32))
    # Trim capacities to what the compressed rows need (0 inner slots when no token has one).
    digits_needed = max(1, int(lead_count.max(initial=0)))
    inner_needed = int(inner_count.max(initial=0))
    return AUProgram(
        table,
        lead_count,
        lead_digits[..., :digits_needed],
        lead_value,
        has_end,
        inner_count,
        inner_keys[:, :, :inner_needed],
        inner_short[:, :, :inner_needed],
        current,
        current_value,
    )


# Packed AU program entries (uint32 words), read with one gather per scan step.
# Short form (the fast path): lead count, lead value, has END, tail length, tail value, then E
# inner mentions in `au_keys.pack_short` form.
SHORT_LEAD_COUNT, SHORT_LEAD_VALUE, SHORT_HAS_END, SHORT_TAIL_LENGTH, SHORT_TAIL_VALUE, SHORT_INNER = range(6)
# Full form: lead count, has END, inner count, tail key (KEY_WORDS), D lead digits, E inner keys.
FULL_LEAD_COUNT, FULL_HAS_END, FULL_INNER_COUNT, FULL_TAIL = range(4)
FULL_LEAD_DIGITS = FULL_TAIL + au_keys.KEY_WORDS


def pack_au_program_short(program: AUProgram) -> np.ndarray:
    parts = [
        program.lead_count[..., None],
        program.lead_value[..., None],
        program.has_end[..., None],
        program.tail_key[..., :1],
        program.tail_value[..., None],
        program.inner_short,
    ]
    return np.concatenate([p.astype(np.uint32) for p in parts], axis=-1)


def pack_au_program_full(program: AUProgram) -> np.ndarray:
    rows, states = program.lead_count.shape
    parts = [
        program.lead_count[..., None],
        program.has_end[..., None],
        program.inner_count[..., None],
        program.tail_key,
        program.lead_digits,
        program.inner_keys.reshape(rows, states, -1),
    ]
    return np.concatenate([p.astype(np.uint32) for p in parts], axis=-1)
