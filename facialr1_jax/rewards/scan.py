"""The jitted scan: one `lax.scan` step per completion token, vectorised over the batch.

The carry holds, per completion row: the UTF-8 sequence left open by the previous tokens; the
state of each reward automaton (format, answer tags, whole-text prediction, think/AU); the last
outcome the answer automaton emitted; the AU mention being read (digit count and value). A step:

  1. feeds the token's head bytes (leading continuation bytes) to the open UTF-8 sequence; this
     yields at most a completed character and then one U+FFFD (a run of U+FFFD acts like one:
     `build_scan_tables` checks this for every automaton). Most tokens have no head and most
     steps need none of this, so on CPU it sits behind a batch-wide `lax.cond`;
  2. applies the token's precomputed effect on its rest (`tables.TokenTable`), and its AU
     program (`tables.AUProgram`): lead digits extend the held mention, an END completes it,
     inner mentions complete as they are, the tail becomes the held mention;
  3. opens the token's unfinished tail sequence, if any.

Completed AU mentions leave the scan in a one-word short form (`au_keys.pack_short`). After the
scan (`analyse`) the canonical ones ("AU" + a number below the cap) are OR-ed into bit words and
compared with the ground truth; the others ("AU01", "AU120") are counted once each by repeated
max-extraction, or by sorting when a row holds many. A mention of 10 or more digits does not fit
the short form: then a small AU-only scan over the recorded think trace recomputes exact keys
(`au_keys`). Shapes depend only on [B, T], so one compile serves all batches of a shape.
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
    short: jax.Array  # [R, Q, 5 + E] uint32, layout `tables.SHORT_*`
    full: jax.Array  # [R, Q, 7 + D + 4E] uint32, layout `tables.FULL_*`
    lead_slots: int = dataclasses.field(metadata=dict(static=True))  # D
    inner_slots: int = dataclasses.field(metadata=dict(static=True))  # E


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ScanTables:
    """Everything the scan reads, as device arrays (a pytree: pass it through jit/pjit)."""

    class_of_code_point: jax.Array  # [0x110000] int32
    head_count: jax.Array  # [V + 1]
    head_bytes: jax.Array  # [V + 1, 3]
    has_rest: jax.Array  # [V + 1] bool
    tail_open: jax.Array  # [V + 1] int32, packed (`tables.pack_open`)
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
        head_count=jnp.asarray(splits.head_count),
        head_bytes=jnp.asarray(splits.head_bytes),
        has_rest=jnp.asarray(splits.has_rest),
        tail_open=jnp.asarray(splits.tail_open),
        format=_machine_arrays(tables.token_table(splits, format_machine)),
        answer=_machine_arrays(tables.token_table(splits, answer_machine)),
        prediction=_machine_arrays(tables.token_table(splits, content)),
        think_au=_machine_arrays(program.table),
        au_program=AUProgramArrays(
            short=jnp.asarray(tables.pack_au_program_short(program)),
            full=jnp.asarray(tables.pack_au_program_full(program)),
            lead_slots=int(program.lead_digits.shape[-1]),
            inner_slots=int(program.inner_keys.shape[2]),
        ),
        vocab_size=byte_table.vocab_size,
        noop_class=alphabet.num_classes,
        replacement_class=replacement,
    )


def _check_no_digit_outside_ascii(alphabet: Alphabet, think_machine: automata.Machine) -> None:
    """Head characters are always multi-byte (or U+FFFD); the scan only handles END for them."""
    for class_id in np.unique(alphabet.class_of[128:]):
        if np.any(think_machine.output[:, class_id] >= machines.OP_DIGIT0):
            raise AssertionError(f"non-ASCII class {alphabet.classes[class_id]} appends an AU digit")


def _char_step(machine: MachineArrays, state, class_id):
    return machine.char_next[state, class_id], machine.char_output[state, class_id]


def _head_characters(t: ScanTables, open_sequence, head_count, head_bytes, has_rest):
    """Feeds a token's head bytes to the open UTF-8 sequence (`utf8` module rules).

    Returns (first class, second class, open sequence after the head). first: the completed
    character's class, or U+FFFD, or no-op; second: U+FFFD when a completed character is
    followed by stray bytes, else no-op. Further U+FFFD are dropped: reading several in a row
    is the same as one for every automaton (checked when the tables are built)."""
    code = open_sequence & tables.OPEN_CODE_MASK
    count = (open_sequence >> tables.OPEN_COUNT_SHIFT) & 0x7
    need = (open_sequence >> tables.OPEN_NEED_SHIFT) & 0x7
    batch = code.shape[0]
    completed = jnp.zeros((batch,), bool)
    completed_code = jnp.zeros((batch,), jnp.int32)
    replaced = jnp.zeros((batch,), bool)
    for j in range(tables.MAX_HEAD_BYTES):
        active = j < head_count
        byte = head_bytes[:, j]
        # The second byte's range depends on the lead: E0 (3 bytes, bits 0) A0-BF, ED (bits 0xD)
        # 80-9F, F0 (4 bytes, bits 0) 90-BF, F4 (bits 4) 80-8F; later bytes are 80-BF.
        second = count == 1
        low = jnp.where(second & (code == 0), jnp.where(need == 3, 0xA0, 0x90), 0x80)
        high = jnp.where(
            second & (((need == 3) & (code == 0xD)) | ((need == 4) & (code == 4))),
            jnp.where(need == 3, 0x9F, 0x8F),
            0xBF,
        )
        fits = (count > 0) & (byte >= low) & (byte <= high)
        grown = (code << 6) | (byte & 0x3F)
        done = fits & (count + 1 == need)
        completed = completed | (active & done)
        completed_code = jnp.where(active & done, grown, completed_code)
        replaced = replaced | (active & ~fits)
        code = jnp.where(active & fits, grown, code)
        count = jnp.where(active, jnp.where(fits & ~done, count + 1, 0), count)
    # A sequence still open when the token's rest starts is cut short: one U+FFFD.
    replaced = replaced | (has_rest & (count > 0))
    still_open = (count > 0) & ~has_rest
    open_sequence = jnp.where(
        still_open,
        code | (count << tables.OPEN_COUNT_SHIFT) | (need << tables.OPEN_NEED_SHIFT),
        0,
    )
    first = jnp.where(
        completed,
        t.class_of_code_point[completed_code],
        jnp.where(replaced, t.replacement_class, t.noop_class),
    )
    second = jnp.where(completed & replaced, t.replacement_class, t.noop_class)
    return first, second, open_sequence


def _cond_on_cpu(predicate, true_fn, false_fn, operand):
    """lax.cond on CPU, where skipping rarely needed work pays. Elsewhere always `true_fn` (it is
    correct whatever the predicate): a data-dependent branch in a device loop may need the
    predicate on the host every step, which costs more there than the predicated work."""
    return jax.lax.platform_dependent(
        operand,
        cpu=lambda op: jax.lax.cond(predicate, true_fn, false_fn, op),
        default=true_fn,
    )


def _au_step_short(program: AUProgramArrays, fields, head_end, held):
    """One token's effect on the held AU mention, fast form: held = (length [B], value [B]) with
    value the digits as a number modulo 2**32 (exact up to 9 digits). Returns the new held
    mention and the completed mentions in `au_keys.pack_short` form, [B, 2 + E] (0 = none):
    the one the token's head characters ended, the one its first END ended, the inner ones."""
    length, value = held
    lead_count = fields[:, tables.SHORT_LEAD_COUNT].astype(jnp.int32)
    has_end = fields[:, tables.SHORT_HAS_END] > 0
    prefix_length = jnp.where(head_end, 0, length)
    prefix_value = jnp.where(head_end, jnp.uint32(0), value)
    powers = jnp.asarray([10**i % 2**32 for i in range(program.lead_slots + 1)], jnp.uint32)
    end_length = prefix_length + lead_count
    end_value = prefix_value * powers[lead_count] + fields[:, tables.SHORT_LEAD_VALUE]
    head_mention = jnp.where(head_end, au_keys.pack_short_jax(length, value), jnp.uint32(0))
    end_mention = jnp.where(has_end, au_keys.pack_short_jax(end_length, end_value), jnp.uint32(0))
    inner = fields[:, tables.SHORT_INNER : tables.SHORT_INNER + program.inner_slots]
    mentions = jnp.concatenate([head_mention[:, None], end_mention[:, None], inner], axis=1)
    new_length = jnp.where(has_end, fields[:, tables.SHORT_TAIL_LENGTH].astype(jnp.int32), end_length)
    new_value = jnp.where(has_end, fields[:, tables.SHORT_TAIL_VALUE], end_value)
    return (new_length, new_value), mentions


def _au_step_full(program: AUProgramArrays, fields, head_end, held):
    """`_au_step_short` with exact keys for mentions of any length: held = (length [B], blocks
    [B, 3]); returns completed keys [B, 2 + E, KEY_WORDS] with length 0 = none."""
    batch = head_end.shape[0]
    length, blocks = held
    lead_count = fields[:, tables.FULL_LEAD_COUNT].astype(jnp.int32)
    has_end = fields[:, tables.FULL_HAS_END] > 0
    tail = fields[:, tables.FULL_TAIL : tables.FULL_TAIL + au_keys.KEY_WORDS]
    prefix_length = jnp.where(head_end, 0, length)
    contribution = jnp.zeros((batch, 3), jnp.uint32)
    for j in range(program.lead_slots):
        term = au_keys.contribution_jax(prefix_length + j, fields[:, tables.FULL_LEAD_DIGITS + j])
        contribution = contribution + jnp.where((j < lead_count)[:, None], term, jnp.uint32(0))
    end_length = prefix_length + lead_count
    end_blocks = jnp.where(head_end[:, None], jnp.uint32(0), blocks) + contribution
    inner_start = tables.FULL_LEAD_DIGITS + program.lead_slots
    inner = fields[:, inner_start : inner_start + program.inner_slots * au_keys.KEY_WORDS]
    inner = inner.reshape(batch, program.inner_slots, au_keys.KEY_WORDS)
    head_key = jnp.concatenate([jnp.where(head_end, length, 0)[:, None].astype(jnp.uint32), blocks], axis=1)
    end_key = jnp.concatenate([jnp.where(has_end, end_length, 0)[:, None].astype(jnp.uint32), end_blocks], axis=1)
    keys = jnp.concatenate([head_key[:, None], end_key[:, None], inner], axis=1)
    new_length = jnp.where(has_end, tail[:, 0].astype(jnp.int32), end_length)
    new_blocks = jnp.where(has_end[:, None], tail[:, 1:], end_blocks)
    return (new_length, new_blocks), keys


def scan_completions(t: ScanTables, ids: jax.Array, mask: jax.Array):
    """Runs every automaton over the completions ids [B, T] (tokens where mask is true).

    Returns (summary dict of [B] arrays, mentions [B, T * (2 + E)] in short form
    (`au_keys.pack_short`, 0 = none), think trace). The think trace (per token: the think/AU row,
    the state where its rest starts, whether its head ended a mention; each [T, B]) lets
    `exact_mentions` recompute full keys when a mention is too long for the short form.
    Mentions outside a closed first think block are included; the caller drops them."""
    batch = ids.shape[0]
    ids = ids.astype(jnp.int32)
    keep = mask.astype(bool) & (ids >= 0) & (ids < t.vocab_size)
    token = jnp.where(keep, ids, t.vocab_size).T  # [T, B]; dropped tokens use the empty row
    per_token = dict(
        head_count=t.head_count[token],
        head_bytes=t.head_bytes[token],
        has_rest=t.has_rest[token],
        tail_open=t.tail_open[token],
        format_row=t.format.token_row[token],
        answer_row=t.answer.token_row[token],
        prediction_row=t.prediction.token_row[token],
        think_row=t.think_au.token_row[token],
    )
    zeros = jnp.zeros((batch,), jnp.int32)
    carry = dict(
        open=zeros,  # the open UTF-8 sequence, packed (`tables.pack_open`)
        format=zeros,
        answer=zeros,
        answer_last=zeros,
        prediction=zeros,
        think=zeros,
        au_held=(zeros, jnp.zeros((batch,), jnp.uint32)),
    )

    def head(operand):
        carry, x = operand
        first, second, open_sequence = _head_characters(
            t, carry["open"], x["head_count"], x["head_bytes"], x["has_rest"]
        )
        out = dict(carry, open=open_sequence)
        for name in ("format", "prediction"):
            machine: MachineArrays = getattr(t, name)
            state = carry[name]
            for class_id in (first, second):
                state, _ = _char_step(machine, state, class_id)
            out[name] = state
        state, last = carry["answer"], carry["answer_last"]
        for class_id in (first, second):
            state, emitted = _char_step(t.answer, state, class_id)
            last = jnp.where(emitted > 0, emitted, last)
        out["answer"], out["answer_last"] = state, last
        state, ended = carry["think"], jnp.zeros((batch,), bool)
        for class_id in (first, second):
            state, op = _char_step(t.think_au, state, class_id)
            ended = ended | (op == machines.OP_END)
        out["think"] = state
        return out, ended

    def no_head(operand):
        carry, _ = operand
        return dict(carry), jnp.zeros((batch,), bool)

    def step(carry, x):
        needs_head = jnp.any((x["head_count"] > 0) | (x["has_rest"] & (carry["open"] != 0)))
        carry, head_end = _cond_on_cpu(needs_head, head, no_head, (carry, x))
        fields = t.au_program.short[x["think_row"], carry["think"]]
        held, mentions = _au_step_short(t.au_program, fields, head_end, carry["au_held"])
        emitted = t.answer.token_last_output[x["answer_row"], carry["answer"]]
        out = dict(
            open=jnp.where(x["has_rest"], x["tail_open"], carry["open"]),
            format=t.format.token_next[x["format_row"], carry["format"]],
            prediction=t.prediction.token_next[x["prediction_row"], carry["prediction"]],
            answer=t.answer.token_next[x["answer_row"], carry["answer"]],
            answer_last=jnp.where(emitted > 0, emitted, carry["answer_last"]),
            think=t.think_au.token_next[x["think_row"], carry["think"]],
            au_held=held,
        )
        return out, (mentions, carry["think"], head_end)

    final, (mentions, think_states, head_ends) = jax.lax.scan(step, carry, per_token)

    # End of text: an open sequence decodes as one U+FFFD. It cannot complete a tag, so only the
    # format and whole-text automata can change; a think/AU END here would be inside an unclosed
    # think block, whose mentions are discarded anyway.
    last_char = jnp.where(final["open"] != 0, t.replacement_class, t.noop_class)
    format_state, _ = _char_step(t.format, final["format"], last_char)
    prediction_state, _ = _char_step(t.prediction, final["prediction"], last_char)
    answer_found = final["answer_last"] > 0
    summary = dict(
        format_match=t.format.final_value[format_state] > 0,
        answer_found=answer_found,
        outcome=jnp.where(answer_found, final["answer_last"] - 1, t.prediction.final_value[prediction_state]),
        think_closed=t.think_au.final_value[final["think"]] > 0,
    )
    # [T, B, S] -> [B, T * S] (sorting and reductions below run along axis 1).
    mentions = jnp.moveaxis(mentions, 0, 1).reshape(batch, -1)
    return summary, mentions, (per_token["think_row"], think_states, head_ends)


def exact_mentions(program: AUProgramArrays, think_trace) -> jax.Array:
    """Full keys [B, T * (2 + E), KEY_WORDS] (length 0 = none) of the mentions, from the think
    trace of `scan_completions`: a second, AU-only scan, run when a mention has 10+ digits."""
    rows, states, head_ends = think_trace
    batch = rows.shape[1]
    held = (jnp.zeros((batch,), jnp.int32), jnp.zeros((batch, 3), jnp.uint32))

    def step(held, x):
        row, state, head_end = x
        return _au_step_full(program, program.full[row, state], head_end, held)

    _, keys = jax.lax.scan(step, held, (rows, states, head_ends))
    keys = jnp.moveaxis(keys, 0, 1)
    return keys.reshape(batch, -1, au_keys.KEY_WORDS)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Analysis:
    """Per row: format_match, answer_found (a tag pair exists), think_closed [B] bool; outcome
    [B] int32 (of the prediction: the last tag pair's content, else the whole text);
    au_predicted |P|, au_matched |P & T|, au_truth |T| [B] int32."""

    format_match: jax.Array
    answer_found: jax.Array
    outcome: jax.Array
    think_closed: jax.Array
    au_predicted: jax.Array
    au_matched: jax.Array
    au_truth: jax.Array


def analyse(t: ScanTables, ids: jax.Array, mask: jax.Array, truth: jax.Array) -> Analysis:
    """Scans the completions and counts AU mentions against the truth multi-hot [B, cap].

    The scan keeps mentions in short form; when some mention in the batch has 10 or more
    digits (rare: "AU" + a 10-digit number), their full keys are recomputed from the think
    trace by a small AU-only scan."""
    truth = truth.astype(bool)
    summary, short, think_trace = scan_completions(t, ids, mask)
    closed = summary["think_closed"][:, None]
    short = jnp.where(closed, short, jnp.uint32(0))

    def from_short(_):
        return _count_short(short, truth)

    def from_full(_):
        keys = exact_mentions(t.au_program, think_trace)
        return _count_full(keys, closed & (keys[..., 0] > 0), truth)

    predicted, matched = jax.lax.cond(jnp.any(short == jnp.uint32(au_keys.LONG)), from_full, from_short, None)
    return Analysis(
        format_match=summary["format_match"],
        answer_found=summary["answer_found"],
        outcome=summary["outcome"],
        think_closed=summary["think_closed"],
        au_predicted=predicted,
        au_matched=matched,
        au_truth=jnp.sum(truth, axis=1).astype(jnp.int32),
    )


def _found_bits(canonical, number, cap: int):
    """[B, cap] bool: which AU numbers occur among the canonical mentions [B, N] (an OR of
    one-bit words, much cheaper on CPU than a scatter)."""
    word = number // 32
    bit = jnp.left_shift(jnp.uint32(1), (number % 32).astype(jnp.uint32))
    words = [
        jnp.bitwise_or.reduce(jnp.where(canonical & (word == w), bit, jnp.uint32(0)), axis=1)
        for w in range((cap + 31) // 32)
    ]
    bits = jnp.stack(words, axis=1)
    positions = jnp.arange(cap)
    return ((bits[:, positions // 32] >> (positions % 32).astype(jnp.uint32)) & 1) > 0


# Distinct non-canonical mentions per row found by repeated max-extraction before falling back
# to sorting whole rows (a row rarely holds more than a couple of "AU01"-like mentions).
EXTRACTION_ROUNDS = 4


def _distinct_nonzero(values):
    """Exact number of distinct non-zero uint32 values per row of [B, N]."""

    def by_sorting(values):
        ordered = jnp.sort(values, axis=1)
        previous = jnp.concatenate([jnp.zeros_like(ordered[:, :1]), ordered[:, :-1]], axis=1)
        return jnp.sum((ordered != 0) & (ordered != previous), axis=1).astype(jnp.int32)

    count = jnp.zeros(values.shape[:1], jnp.int32)
    remaining = values
    for _ in range(EXTRACTION_ROUNDS):
        largest = jnp.max(remaining, axis=1)
        count = count + (largest != 0)
        remaining = jnp.where(remaining == largest[:, None], jnp.uint32(0), remaining)
    return jax.lax.cond(jnp.any(remaining != 0), by_sorting, lambda v: count, values)


def _count_short(short, truth):
    """(|P|, |P & T|) from short-form mentions [B, N] (0 = none; no LONG among them)."""
    cap = truth.shape[1]
    canonical, number = au_keys.short_canonical_number_jax(short, cap)
    found = _found_bits(canonical, number, cap)
    other = jnp.where((short != 0) & ~canonical, short, jnp.uint32(0))
    other_count = jax.lax.cond(
        jnp.any(other != 0), _distinct_nonzero, lambda v: jnp.zeros(v.shape[:1], jnp.int32), other
    )
    predicted = jnp.sum(found, axis=1).astype(jnp.int32) + other_count
    return predicted, jnp.sum(found & truth, axis=1).astype(jnp.int32)


def _count_full(keys, valid, truth):
    """(|P|, |P & T|) from exact keys [B, N, KEY_WORDS]."""
    cap = truth.shape[1]
    canonical, number = au_keys.canonical_number_jax(keys, cap)
    found = _found_bits(valid & canonical, number, cap)
    matched = jnp.sum(found & truth, axis=1).astype(jnp.int32)
    return jnp.sum(found, axis=1).astype(jnp.int32) + _distinct_keys(keys, valid & ~canonical), matched


def _distinct_keys(keys, valid):
    """Number of distinct valid keys per row (lexicographic sort of the key words)."""
    batch = keys.shape[0]
    invalid = (~valid).astype(jnp.uint32)
    operands = (invalid,) + tuple(keys[..., w] for w in range(au_keys.KEY_WORDS))
    ordered = jax.lax.sort(operands, dimension=1, num_keys=len(operands))
    sorted_valid = ordered[0] == 0
    sorted_keys = jnp.stack(ordered[1:], axis=-1)
    differs = jnp.any(sorted_keys[:, 1:] != sorted_keys[:, :-1], axis=-1)
    new = jnp.concatenate([jnp.ones((batch, 1), bool), differs], axis=1)
    return jnp.sum(sorted_valid & new, axis=1).astype(jnp.int32)
