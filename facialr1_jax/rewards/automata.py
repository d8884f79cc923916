"""Small deterministic automata over character classes: building, minimising, composing.

A `Machine` is a Mealy machine over the class ids of an `Alphabet`: from state q on class c it goes
to next_state[q, c] and emits output[q, c] (0 = nothing; each reward gives the other codes a
meaning). `final_value[q]` is what the state means when the text ends there (accept / outcome).
Machines are built by exploring a readable Python step function from the start state
(`explore`), then minimised (`minimize`) so the token tables stay small.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Machine:
    name: str
    next_state: np.ndarray  # [num_states, num_classes] int32
    output: np.ndarray  # [num_states, num_classes] int32
    final_value: np.ndarray  # [num_states] int32
    start: int = 0

    @property
    def num_states(self) -> int:
        return int(self.next_state.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.next_state.shape[1])

    def run(self, class_ids: Sequence[int], state: int | None = None) -> tuple[int, list[int]]:
        """Reference run over a class sequence: (final state, non-zero outputs in order)."""
        state = self.start if state is None else state
        outputs = []
        for class_id in class_ids:
            out = int(self.output[state, class_id])
            state = int(self.next_state[state, class_id])
            if out:
                outputs.append(out)
        return state, outputs


StepFunction = Callable[[Hashable, int], tuple[Hashable, int]]


def explore(
    name: str,
    start: Hashable,
    step: StepFunction,
    num_classes: int,
    final_value: Callable[[Hashable], int],
    max_states: int = 200_000,
) -> Machine:
    """Breadth-first enumeration of the states reachable from `start` under `step`."""
    index: dict[Hashable, int] = {start: 0}
    order: list[Hashable] = [start]
    queue = collections.deque([start])
    transitions: list[list[tuple[int, int]]] = []
    while queue:
        state = queue.popleft()
        row = []
        for class_id in range(num_classes):
            target, out = step(state, class_id)
            if target not in index:
                if len(index) >= max_states:
                    raise RuntimeError(f"automaton {name!r} exceeds {max_states} states")
                index[target] = len(order)
                order.append(target)
                queue.append(target)
            row.append((index[target], out))
        transitions.append(row)
    table = np.array(transitions, dtype=np.int32).reshape(len(order), num_classes, 2)
    finals = np.array([final_value(state) for state in order], dtype=np.int32)
    return Machine(name, table[..., 0].copy(), table[..., 1].copy(), finals, 0)


def minimize(machine: Machine) -> Machine:
    """The smallest machine with the same outputs on every input (Moore partition refinement
    over final values and per-class (output, successor block) signatures)."""
    _, block = np.unique(machine.final_value, return_inverse=True)
    block = block.astype(np.int64).reshape(-1)
    num_blocks = int(block.max()) + 1
    while True:
        signature = np.concatenate(
            [block[:, None], machine.output.astype(np.int64), block[machine.next_state]], axis=1
        )
        _, refined = np.unique(signature, axis=0, return_inverse=True)
        refined = refined.reshape(-1)
        count = int(refined.max()) + 1
        if count == num_blocks:
            break
        block, num_blocks = refined, count
    # Renumber so that the start state is 0 and the rest follow in first-seen order.
    order = [int(block[machine.start])] + [b for b in dict.fromkeys(block.tolist()) if b != block[machine.start]]
    renumber = np.empty(num_blocks, dtype=np.int32)
    renumber[order] = np.arange(num_blocks, dtype=np.int32)
    representative = np.zeros(num_blocks, dtype=np.int64)
    representative[renumber[block]] = np.arange(machine.num_states)
    return Machine(
        machine.name,
        renumber[block[machine.next_state[representative]]],
        machine.output[representative].copy(),
        machine.final_value[representative].copy(),
        0,
    )


def with_noop_class(machine: Machine) -> Machine:
    """Adds one class (the last id) that changes nothing: padding for token and head slots."""
    states = np.arange(machine.num_states, dtype=np.int32)[:, None]
    return dataclasses.replace(
        machine,
        next_state=np.concatenate([machine.next_state, states], axis=1),
        output=np.concatenate([machine.output, np.zeros_like(states)], axis=1),
    )


def is_idempotent_silent(machine: Machine, class_id: int) -> bool:
    """True when reading `class_id` twice is the same as once and the second read emits nothing,
    so a run of such characters may be shortened to one."""
    once = machine.next_state[:, class_id]
    return bool(np.all(machine.next_state[once, class_id] == once) and np.all(machine.output[once, class_id] == 0))


def kmp_step(pattern: Sequence[str], matched: int, letter: str) -> int:
    """Knuth-Morris-Pratt: the length of the longest prefix of `pattern` that is a suffix of
    (the `matched` prefix + `letter`). `matched` < len(pattern)."""
    while True:
        if letter == pattern[matched]:
            return matched + 1
        if matched == 0:
            return 0
        # Longest proper border of pattern[:matched].
        matched = _border(tuple(pattern[:matched]))


def _border(prefix: tuple[str, ...]) -> int:
    for length in range(len(prefix) - 1, 0, -1):
        if prefix[:length] == prefix[-length:]:
            return length
    return 0


def subset_construction(
    name: str,
    start: frozenset,
    step: Callable[[Hashable, int], Iterable[Hashable]],
    num_symbols: int,
    final_value: Callable[[frozenset], int],
) -> Machine:
    """DFA of an NFA given by `step(nfa_state, symbol)` -> successor NFA states."""

    def dfa_step(states: frozenset, symbol: int):
        return frozenset(t for s in states for t in step(s, symbol)), 0

    return explore(name, start, dfa_step, num_symbols, final_value)


def lift(machine: Machine, symbols_of_class: Sequence[Sequence[int]], name: str | None = None) -> Machine:
    """A silent machine over symbols -> the same machine over classes, where each class reads its
    symbol sequence (one character may fold to several letters)."""
    if np.any(machine.output):
        raise ValueError(f"lift() needs a silent machine; {machine.name!r} has outputs")
    states = np.arange(machine.num_states)
    columns = []
    for symbols in symbols_of_class:
        current = states
        for symbol in symbols:
            current = machine.next_state[current, symbol]
        columns.append(current)
    next_state = np.stack(columns, axis=1).astype(np.int32)
    return Machine(name or machine.name, next_state, np.zeros_like(next_state), machine.final_value, machine.start)
