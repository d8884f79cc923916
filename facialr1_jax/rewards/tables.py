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
from facialr1_jax.rewards.utf8 import is_continuation, second_byte_range, sequence_length, split_utf8

MAX_HEAD_BYTES = 3


@dataclasses.dataclass(frozen=True)
class TokenSplits:
    """Per token (vocab_size + 1 rows; the last is the empty token)."""

    head_count: np.ndarray  # [V+1] int32, 0..3 leading continuation bytes handled by the scan
    head_bytes: np.ndarray  # [V+1, 3] int32
    has_rest: np.ndarray  # [V+1] bool, bytes after the head (the pending sequence must end)
    tail_count: np.ndarray  # [V+1] int32, bytes of the unfinished sequence at the end (0..3)
    tail_lead: np.ndarray  # [V+1] int32, its first byte
    tail_code: np.ndarray  # [V+1] int32, its code point bits so far
    tail_need: np.ndarray  # [V+1] int32, bytes its sequence needs in total
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
    tail_count = np.zeros(rows, np.int32)
    tail_lead = np.zeros(rows, np.int32)
    tail_code = np.zeros(rows, np.int32)
    tail_need = np.zeros(rows, np.int32)
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
            tail_count[token_id] = len(tail)
            tail_lead[token_id] = tail[0]
            code = lead_bits(tail[0])
            for byte in tail[1:]:
                code = (code << 6) | (byte & 0x3F)
            tail_code[token_id] = code
            tail_need[token_id] = sequence_length(tail[0])
    return TokenSplits(
        head_count, head_bytes, has_rest, tail_count, tail_lead, tail_code, tail_need, tuple(rest_classes)
    )


def second_byte_bounds() -> np.ndarray:
    """[256, 2] int32: allowed range of the byte after each lead byte (the scan's lookup)."""
    return np.array([second_byte_range(lead) for lead in range(256)], dtype=np.int32)


# ------------------------------------------------------------------------------ composites
def _class_projection(machine: automata.Machine) -> np.ndarray:
    """Class id -> the machine's own letter (classes with identical columns share one)."""
    columns = np.concatenate([machine.next_state.T, machine.output.T], axis=1)
    _, projection = np.unique(columns, axis=0, return_inverse=True)
    return projection.reshape(-1)


def _unique_sequences(splits: TokenSplits, machine: automata.Machine):
    """Distinct rest sequences as this machine sees them, padded with the no-op class.

    Returns (sequence id per token, [num_sequences, max_len] class ids, noop class id)."""
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
    return sequence_of_token, padded, noop


def _compress_rows(sequence_of_token: np.ndarray, *row_arrays: np.ndarray):
    """Merges sequences with identical table rows: (row id per token, unique row arrays)."""
    flat = np.concatenate([a.reshape(a.shape[0], -1).astype(np.int64) for a in row_arrays], axis=1)
    _, first, inverse = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    row_of_token = inverse.reshape(-1)[sequence_of_token].astype(np.int32)
    return row_of_token, tuple(a[first] for a in row_arrays)


@dataclasses.dataclass(frozen=True)
class TokenTable:
    """A machine's effect per token row: row_of_token [V+1]; next_state [R, Q]; last_output [R, Q]
    (0 when the rest emits nothing, else its last output)."""

    machine: automata.Machine
    row_of_token: np.ndarray
    next_state: np.ndarray
    last_output: np.ndarray


def token_table(splits: TokenSplits, machine: automata.Machine) -> TokenTable:
    padded_machine = automata.with_noop_class(machine)
    sequence_of_token, sequences, _ = _unique_sequences(splits, machine)
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


@dataclasses.dataclass(frozen=True)
class AUProgram:
    """What the rest of a token does to the AU mentions, per row and start state.

    Within a token the think/AU machine emits DIGIT d and END operations. The scan holds the
    mention being read (its key); the token's effect is:
      * `lead_digits` (`lead_count` of them): digits before the token's first END, appended to
        the held mention;
      * `has_end`: an END follows, which completes the held mention (if it has any digit);
      * `inner_keys` (`inner_count`): mentions started and completed inside the token;
      * `tail_key`: after the last END, the digits of a mention still open at the token's end
        (it becomes the held mention); without an END, the held mention simply grows.
    """

    table: TokenTable
    lead_count: np.ndarray  # [R, Q] int32
    lead_digits: np.ndarray  # [R, Q, D] int32
    has_end: np.ndarray  # [R, Q] bool
    inner_count: np.ndarray  # [R, Q] int32
    inner_keys: np.ndarray  # [R, Q, E, KEY_WORDS] uint32
    tail_key: np.ndarray  # [R, Q, KEY_WORDS] uint32


def au_program(splits: TokenSplits, machine: automata.Machine) -> AUProgram:
    padded_machine = automata.with_noop_class(machine)
    sequence_of_token, sequences, _ = _unique_sequences(splits, machine)
    num_sequences, width = sequences.shape
    num_states = machine.num_states
    is_digit_op = padded_machine.output >= machines.OP_DIGIT0
    digit_capacity = max(1, int(is_digit_op[:, sequences].sum(axis=-1).max(initial=0)))
    end_capacity = max(1, int((padded_machine.output == machines.OP_END)[:, sequences].sum(axis=-1).max(initial=0)))

    shape = (num_sequences, num_states)
    state = np.broadcast_to(np.arange(num_states), shape).copy()
    has_end = np.zeros(shape, bool)
    lead_count = np.zeros(shape, np.int32)
    lead_digits = np.zeros(shape + (digit_capacity,), np.int32)
    inner_count = np.zeros(shape, np.int32)
    inner_keys = np.zeros(shape + (end_capacity,) + (au_keys.KEY_WORDS,), np.uint32)
    current = au_keys.empty_key_numpy(shape)
    rows, columns = np.indices(shape)
    for position in range(width):
        classes = sequences[:, position : position + 1]
        op = padded_machine.output[state, classes]
        digit = np.clip(op - machines.OP_DIGIT0, 0, 9).astype(np.uint32)
        is_digit = op >= machines.OP_DIGIT0
        is_end = op == machines.OP_END
        leading = is_digit & ~has_end
        lead_digits[rows, columns, np.minimum(lead_count, digit_capacity - 1)] = np.where(
            leading, digit, lead_digits[rows, columns, np.minimum(lead_count, digit_capacity - 1)]
        )
        lead_count += leading
        current = au_keys.append_digit_numpy(current, digit, is_digit & has_end)
        inner_end = is_end & has_end
        slot = np.minimum(inner_count, end_capacity - 1)
        inner_keys[rows, columns, slot] = np.where(inner_end[..., None], current, inner_keys[rows, columns, slot])
        inner_count += inner_end
        current = np.where(is_end[..., None], au_keys.empty_key_numpy(shape), current)
        has_end |= is_end
        state = padded_machine.next_state[state, classes]
    row_of_token, arrays = _compress_rows(
        sequence_of_token, state, lead_count, lead_digits, has_end, inner_count, inner_keys, current
    )
    next_state, lead_count, lead_digits, has_end, inner_count, inner_keys, current = arrays
    table = TokenTable(machine, row_of_token, next_state.astype(np.int32), np.zeros_like(next_state, np.int32))
    # Trim capacities to what the compressed rows need.
    digits_needed = max(1, int(lead_count.max(initial=0)))
    inner_needed = max(1, int(inner_count.max(initial=0)))
    return AUProgram(
        table,
        lead_count,
        lead_digits[..., :digits_needed],
        has_end,
        inner_count,
        inner_keys[:, :, :inner_needed],
        current,
    )

