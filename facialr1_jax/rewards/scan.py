"""The jitted scan: one `lax.scan` step per completion token, vectorised over the batch.

The carry holds, per completion row: the UTF-8 sequence left open by the previous tokens; the
state of each reward automaton (format, answer tags, whole-text prediction, think/AU); the last
outcome the answer automaton emitted; the AU mention being read (`au_keys`). A step:

  1. feeds the token's head bytes (leading continuation bytes) to the open UTF-8 sequence; this
     yields at most a completed character and then one U+FFFD (a run of U+FFFD acts like one:
     `tables_from_tokenizer` checks this for every automaton), applied character by character;
  2. applies the token's precomputed effect on its rest (`tables.TokenTable`, `AUProgram`);
  3. opens the token's unfinished tail sequence, if any.

AU mentions completed in a step are emitted as keys; after the scan they are de-duplicated by
sorting (set semantics: "AU01" twice counts once), the canonical ones go into a multi-hot over
AU numbers [0, cap), and all count towards |P|. Nothing here depends on the batch size or the
number of tokens, so one compile serves every batch of the same shape.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from facialr1_jax.rewards import au_keys, automata, machines, tables
from facialr1_jax.rewards.alphabet import Alphabet
from facialr1_jax.rewards.byte_table import TokenByteTable


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class MachineArrays:
    char_next: jax.Array  # [Q, C + 1] (last class = no-op)
    char_output: jax.Array  # [Q, C + 1]
    token_row: jax.Array  # [V + 1]
    token_next: jax.Array  # [R, Q]
    token_last_output: jax.Array  # [R, Q]
    final_value: jax.Array  # [Q]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AUProgramArrays:
    lead_count: jax.Array  # [R, Q]
    lead_digits: jax.Array  # [R, Q, D]
    has_end: jax.Array  # [R, Q]
    inner_count: jax.Array  # [R, Q]
    inner_keys: jax.Array  # [R, Q, E, KEY_WORDS]
    tail_key: jax.Array  # [R, Q, KEY_WORDS]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ScanTables:
    """Everything the scan reads, as device arrays (a pytree: pass it through jit/pjit)."""

    class_of_code_point: jax.Array  # [0x110000] int32
    second_byte_bounds: jax.Array  # [256, 2] int32
    head_count: jax.Array  # [V + 1]
    head_bytes: jax.Array  # [V + 1, 3]
    has_rest: jax.Array  # [V + 1] bool
    tail_count: jax.Array
    tail_lead: jax.Array
    tail_code: jax.Array
    tail_need: jax.Array
    format: MachineArrays
    answer: MachineArrays
    prediction: MachineArrays
    think_au: MachineArrays
    au_program: AUProgramArrays
    vocab_size: int = dataclasses.field(metadata=dict(static=True))
    noop_class: int = dataclasses.field(metadata=dict(static=True))
    replacement_class: int = dataclasses.field(metadata=dict(static=True))


def _machine_arrays(table: tables.TokenTable) -> MachineArrays:
    padded = automata.with_noop_class(table.machine)
    return MachineArrays(
        char_next=jnp.asarray(padded.next_state, jnp.int32),
        char_output=jnp.asarray(padded.output, jnp.int32),
        token_row=jnp.asarray(table.row_of_token, jnp.int32),
        token_next=jnp.asarray(table.next_state, jnp.int32),
        token_last_output=jnp.asarray(table.last_output, jnp.int32),
        final_value=jnp.asarray(table.machine.final_value, jnp.int32),
    )


def build_scan_tables(
    byte_table: TokenByteTable,
    alphabet: Alphabet,
    content: automata.Machine,
) -> ScanTables:
    """Device tables for one tokenizer and one label vocabulary (its content machine)."""
    replacement = alphabet.replacement_class
    format_machine = machines.format_machine(alphabet)
    answer_machine = machines.answer_machine(alphabet, content)
    think_machine = machines.think_au_machine(alphabet)
    for machine in (format_machine, answer_machine, content, think_machine):
        if not automata.is_idempotent_silent(machine, replacement):
            raise AssertionError(
                f"automaton {machine.name!r}: two U+FFFD in a row differ from one; the scan "
                "collapses runs of them"
            )
    _check_no_digit_outside_ascii(alphabet, think_machine)
    splits = tables.split_tokens(byte_table, alphabet)
    program = tables.au_program(splits, think_machine)
    return ScanTables(
        class_of_code_point=jnp.asarray(alphabet.class_of, jnp.int32),
        second_byte_bounds=jnp.asarray(tables.second_byte_bounds()),
        head_count=jnp.asarray(splits.head_count),
        head_bytes=jnp.asarray(splits.head_bytes),
        has_rest=jnp.asarray(splits.has_rest),
        tail_count=jnp.asarray(splits.tail_count),
        tail_lead=jnp.asarray(splits.tail_lead),
        tail_code=jnp.asarray(splits.tail_code),
        tail_need=jnp.asarray(splits.tail_need),
        format=_machine_arrays(tables.token_table(splits, format_machine)),
        answer=_machine_arrays(tables.token_table(splits, answer_machine)),
        prediction=_machine_arrays(tables.token_table(splits, content)),
        think_au=_machine_arrays(program.table),
        au_program=AUProgramArrays(
            lead_count=jnp.asarray(program.lead_count, jnp.int32),
            lead_digits=jnp.asarray(program.lead_digits, jnp.int32),
            has_end=jnp.asarray(program.has_end),
            inner_count=jnp.asarray(program.inner_count, jnp.int32),
            inner_keys=jnp.asarray(program.inner_keys),
            tail_key=jnp.asarray(program.tail_key),
        ),
        vocab_size=byte_table.vocab_size,
        noop_class=alphabet.num_classes,
        replacement_class=replacement,
    )


def _check_no_digit_outside_ascii(alphabet: Alphabet, think_machine: automata.Machine) -> None:
    """Head characters are always multi-byte (or U+FFFD); the scan only handles END for them."""
    ascii_classes = set(alphabet.class_of[:128].tolist())
    for class_id in range(alphabet.num_classes):
        if class_id in ascii_classes:
            continue
        if np.any(think_machine.output[:, class_id] >= machines.OP_DIGIT0):
            raise AssertionError(f"non-ASCII class {alphabet.classes[class_id]} appends an AU digit")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ScanResult:
    """Per row: format_match [B] bool; answer_found [B] bool (a tag pair exists); outcome [B]
    int32 (the prediction's outcome: last tag pair's content, else the whole text); think_closed
    [B] bool; au_keys [B, N, KEY_WORDS] uint32 with au_key_valid [B, N] (mentions in the first
    think block, duplicates included; all invalid when the block is not closed)."""

    format_match: jax.Array
    answer_found: jax.Array
    outcome: jax.Array
    think_closed: jax.Array
    au_keys: jax.Array
    au_key_valid: jax.Array


def _char_step(machine: MachineArrays, state, class_id):
    return machine.char_next[state, class_id], machine.char_output[state, class_id]


def scan_completions(t: ScanTables, ids: jax.Array, mask: jax.Array) -> ScanResult:
    """Runs every automaton over the completions ids [B, T] (tokens where mask is true)."""
    batch = ids.shape[0]
    ids = ids.astype(jnp.int32)
    keep = mask.astype(bool) & (ids >= 0) & (ids < t.vocab_size)
    token = jnp.where(keep, ids, t.vocab_size).T  # [T, B], empty row for dropped tokens
    per_token = dict(
        head_count=t.head_count[token],
        head_bytes=t.head_bytes[token],
        has_rest=t.has_rest[token],
        tail_count=t.tail_count[token],
        tail_lead=t.tail_lead[token],
        tail_code=t.tail_code[token],
        tail_need=t.tail_need[token],
        format_row=t.format.token_row[token],
        answer_row=t.answer.token_row[token],
        prediction_row=t.prediction.token_row[token],
        think_row=t.think_au.token_row[token],
    )
    zeros = jnp.zeros((batch,), jnp.int32)
    carry = dict(
        open_count=zeros,  # bytes of the open UTF-8 sequence seen so far (0 = none)
        open_code=zeros,
        open_lead=zeros,
        open_need=zeros,
        format=zeros,
        answer=zeros,
        answer_last=zeros,
        prediction=zeros,
        think=zeros,
        au_key=jnp.zeros((batch, au_keys.KEY_WORDS), jnp.uint32),
    )
    program = t.au_program
    inner_slots = program.inner_keys.shape[2]
    lead_slots = program.lead_digits.shape[2]

    def step(carry, x):
        # 1. Head bytes against the open sequence -> first character, then maybe one U+FFFD.
        count, code, lead, need = carry["open_count"], carry["open_code"], carry["open_lead"], carry["open_need"]
        completed = jnp.zeros((batch,), bool)
        completed_code = zeros
        replaced = jnp.zeros((batch,), bool)
        for j in range(tables.MAX_HEAD_BYTES):
            active = j < x["head_count"]
            byte = x["head_bytes"][:, j]
            bounds = t.second_byte_bounds[lead]
            low = jnp.where(count == 1, bounds[:, 0], 0x80)
            high = jnp.where(count == 1, bounds[:, 1], 0xBF)
            fits = (count > 0) & (byte >= low) & (byte <= high)
            grown = (code << 6) | (byte & 0x3F)
            done = fits & (count + 1 == need)
            completed = completed | (active & done)
            completed_code = jnp.where(active & done, grown, completed_code)
            replaced = replaced | (active & ~fits)
            code = jnp.where(active & fits, grown, code)
            count = jnp.where(active, jnp.where(fits & ~done, count + 1, 0), count)
        replaced = replaced | (x["has_rest"] & (count > 0))
        first = jnp.where(
            completed,
            t.class_of_code_point[completed_code],
            jnp.where(replaced, t.replacement_class, t.noop_class),
        )
        second = jnp.where(completed & replaced, t.replacement_class, t.noop_class)
        # 3 (computed now, applied at the end). The token's own unfinished tail.
        has_rest = x["has_rest"]
        new_open = dict(
            open_count=jnp.where(has_rest, x["tail_count"], count),
            open_code=jnp.where(has_rest, x["tail_code"], code),
            open_lead=jnp.where(has_rest, x["tail_lead"], lead),
            open_need=jnp.where(has_rest, x["tail_need"], need),
        )

        # 2. Automata: head characters, then the token's rest.
        out = dict(new_open)
        for name, row_name in (("format", "format_row"), ("prediction", "prediction_row")):
            machine: MachineArrays = getattr(t, name)
            state = carry[name]
            for class_id in (first, second):
                state, _ = _char_step(machine, state, class_id)
            out[name] = machine.token_next[x[row_name], state]

        state, last = carry["answer"], carry["answer_last"]
        for class_id in (first, second):
            state, emitted = _char_step(t.answer, state, class_id)
            last = jnp.where(emitted > 0, emitted, last)
        row = x["answer_row"]
        emitted = t.answer.token_last_output[row, state]
        out["answer_last"] = jnp.where(emitted > 0, emitted, last)
        out["answer"] = t.answer.token_next[row, state]

        state, key = carry["think"], carry["au_key"]
        empty_key = jnp.zeros_like(key)
        head_key, head_valid = key, jnp.zeros((batch,), bool)
        for class_id in (first, second):
            state, op = _char_step(t.think_au, state, class_id)
            ended = op == machines.OP_END
            head_key = jnp.where(ended[:, None], key, head_key)
            head_valid = head_valid | ended
            key = jnp.where(ended[:, None], empty_key, key)
        row = x["think_row"]
        lead_count = program.lead_count[row, state]
        lead_digits = program.lead_digits[row, state]
        for i in range(lead_slots):
            key = au_keys.append_digit_jax(key, lead_digits[:, i], i < lead_count)
        has_end = program.has_end[row, state]
        first_end_valid = has_end & (key[:, 0] > 0)
        inner_valid = jnp.arange(inner_slots)[None, :] < program.inner_count[row, state][:, None]
        emitted_keys = jnp.concatenate(
            [head_key[:, None], key[:, None], program.inner_keys[row, state]], axis=1
        )
        emitted_valid = jnp.concatenate(
            [head_valid[:, None], first_end_valid[:, None], inner_valid], axis=1
        )
        out["au_key"] = jnp.where(has_end[:, None], program.tail_key[row, state], key)
        out["think"] = t.think_au.token_next[row, state]
        return out, (emitted_keys, emitted_valid)

    final, (keys, valid) = jax.lax.scan(step, carry, per_token)

    # End of text: an open sequence decodes as one U+FFFD. It cannot complete a tag, so only the
    # format and whole-text automata can change; a think/AU END here would be inside an unclosed
    # think block, whose mentions are discarded anyway.
    last_char = jnp.where(final["open_count"] > 0, t.replacement_class, t.noop_class)
    format_state, _ = _char_step(t.format, final["format"], last_char)
    prediction_state, _ = _char_step(t.prediction, final["prediction"], last_char)

    answer_found = final["answer_last"] > 0
    outcome = jnp.where(
        answer_found, final["answer_last"] - 1, t.prediction.final_value[prediction_state]
    )
    think_closed = t.think_au.final_value[final["think"]] > 0
    keys = jnp.transpose(keys, (1, 0, 2, 3)).reshape(batch, -1, au_keys.KEY_WORDS)
    valid = jnp.transpose(valid, (1, 0, 2)).reshape(batch, -1) & think_closed[:, None]
    return ScanResult(
        format_match=t.format.final_value[format_state] > 0,
        answer_found=answer_found,
        outcome=outcome,
        think_closed=think_closed,
        au_keys=keys,
        au_key_valid=valid,
    )


def au_counts(keys: jax.Array, valid: jax.Array, truth: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(|P|, |P & T|, |T|) per row from mention keys [B, N, W] and the truth multi-hot [B, cap]."""
    batch, cap = truth.shape
    invalid = (~valid).astype(jnp.uint32)
    operands = (invalid,) + tuple(keys[..., w] for w in range(au_keys.KEY_WORDS))
    ordered = jax.lax.sort(operands, dimension=1, num_keys=len(operands))
    sorted_valid = ordered[0] == 0
    sorted_keys = jnp.stack(ordered[1:], axis=-1)
    differs = jnp.any(sorted_keys[:, 1:] != sorted_keys[:, :-1], axis=-1)
    new = jnp.concatenate([jnp.ones((batch, 1), bool), differs], axis=1)
    predicted = jnp.sum(sorted_valid & new, axis=1).astype(jnp.int32)

    canonical, number = au_keys.canonical_number_jax(keys, cap)
    hit = valid & canonical
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], number.shape)
    found = jnp.zeros((batch, cap), bool).at[rows, jnp.where(hit, number, cap)].max(hit, mode="drop")
    truth = truth.astype(bool)
    overlap = jnp.sum(found & truth, axis=1).astype(jnp.int32)
    return predicted, overlap, jnp.sum(truth, axis=1).astype(jnp.int32)
