"""Building the jitted reward function, and scoring plain texts with it.

    reward_fn = make_reward_fn(tokenizer, EMOTIONS, config.rewards)
    out = reward_fn(ids, mask, label_ids, au_multi_hot)     # dict of [B] arrays

Inputs of the reward function:
  ids          [B, T] int32 completion token ids (as sampled);
  mask         [B, T] bool, the completion mask: tokens up to and including the end-of-turn token.
               The text scored is `byte_table.decode_completion(tokenizer, ids, mask)`: kept
               tokens in order, special tokens (end-of-turn, pad) contributing nothing, ids
               outside the tokenizer's vocabulary ignored;
  label_ids    [B] int32 index into the label vocabulary (`emotions`), -1 for no label
               (accuracy 0.5, as for an empty label); other out-of-range ids give NaN;
  au_multi_hot [B, cap] bool, ground-truth AU numbers: column n is "AU<n>". The cap is the
               array's width (100 covers every FACS code). Ground-truth strings that are not
               "AU" + a number below the cap without leading zeros cannot be represented, and
               `encode_ground_truth` rejects them. Predicted mentions are handled exactly
               whatever their form: "AU01", "AU120" or "AU999" never equal a ground-truth AU and
               only raise |P|, each distinct string once.

Output: "format", "accuracy", "au" (unweighted, as in `fea.answers`), any optional term with a
non-zero weight ("length", "repetition"), "total" (clamped weighted sum), and the AU counts
"au_predicted" |P|, "au_matched" |P & T|, "au_truth" |T| (int32).

`RewardFunction.apply(tables, ...)` is the same computation as a pure function of its tables, for
use inside a larger jitted step (pass `reward_fn.tables` as an argument there).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from facialr1_jax.fea import emotions as fea_emotions
from facialr1_jax.rewards import alphabet as alphabet_lib
from facialr1_jax.rewards import machines, scan, terms
from facialr1_jax.rewards.byte_table import TokenByteTable, build_byte_table

DEFAULT_AU_CAP = 100


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RewardTables:
    scan: scan.ScanTables
    labels: terms.LabelArrays


@dataclasses.dataclass(frozen=True, eq=False)
class RewardFunction:
    """The reward function for one tokenizer, label vocabulary and configuration."""

    tables: RewardTables
    labels: tuple[str, ...]
    settings: terms.RewardSettings
    byte_table: TokenByteTable

    def apply(self, tables: RewardTables, ids, mask, label_ids, au_multi_hot) -> dict[str, jax.Array]:
        """The reward computation as a pure function of the tables (jit it, or call it inside a
        jitted step with `reward_fn.tables` passed as an argument)."""
        au_multi_hot = jnp.asarray(au_multi_hot).astype(bool)
        inputs = terms.TermInputs(
            result=scan.analyse(tables.scan, ids, mask, au_multi_hot),
            ids=jnp.asarray(ids),
            mask=jnp.asarray(mask).astype(bool),
            label_ids=jnp.asarray(label_ids),
            au_multi_hot=au_multi_hot,
            labels=tables.labels,
            settings=self.settings,
        )
        return terms.compute_terms(inputs)

    @functools.cached_property
    def _jitted(self):
        return jax.jit(self.apply)

    def __call__(self, ids, mask, label_ids, au_multi_hot) -> dict[str, jax.Array]:
        _check_shapes(ids, mask, label_ids, au_multi_hot)
        return self._jitted(self.tables, ids, mask, label_ids, au_multi_hot)

    def label_id(self, label: str | None) -> int:
        """Index of `label` in the vocabulary; -1 for None/blank. Raises for unknown labels."""
        if label is None or not str(label).strip():
            return -1
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"label {label!r} is not in the reward's label vocabulary {self.labels}") from None


def _check_shapes(ids, mask, label_ids, au_multi_hot) -> None:
    if len(np.shape(ids)) != 2:
        raise ValueError(f"ids must be [batch, tokens], got shape {np.shape(ids)}")
    if np.shape(mask) != np.shape(ids):
        raise ValueError(f"mask shape {np.shape(mask)} differs from ids shape {np.shape(ids)}")
    batch = np.shape(ids)[0]
    if np.shape(label_ids) != (batch,):
        raise ValueError(f"label_ids must be [{batch}], got shape {np.shape(label_ids)}")
    if len(np.shape(au_multi_hot)) != 2 or np.shape(au_multi_hot)[0] != batch:
        raise ValueError(f"au_multi_hot must be [{batch}, cap], got shape {np.shape(au_multi_hot)}")


def make_reward_fn(
    tokenizer,
    emotions: Sequence[str] = fea_emotions.EMOTIONS,
    config: Mapping | None = None,
    **overrides,
) -> RewardFunction:
    """Builds the tables (about 3 s for a small vocabulary, dominated by classifying Unicode) and
    returns the jitted reward function.

    tokenizer: a Hugging Face byte-level tokenizer, or a `TokenByteTable` (token bytes given
    directly); emotions: the label vocabulary (label id = index); config: a `c.rewards`-style
    mapping (see `terms`), keyword overrides on top."""
    settings = terms.settings_from_config(config, **overrides)
    labels = tuple(emotions)
    if not labels:
        raise ValueError("the label vocabulary `emotions` is empty")
    outcomes = machines.label_outcomes(labels, settings.accuracy_mode)
    exact_characters = frozenset("".join(labels)) if settings.accuracy_mode == "exact" else frozenset()
    alphabet = alphabet_lib.build_alphabet(exact_characters)
    content = machines.content_machine(alphabet, outcomes)
    byte_table = tokenizer if isinstance(tokenizer, TokenByteTable) else build_byte_table(tokenizer)
    tables = RewardTables(
        scan=scan.build_scan_tables(byte_table, alphabet, content),
        labels=terms.LabelArrays(
            accepts=jnp.asarray(outcomes.accepts), empty_label=jnp.asarray(outcomes.empty_label)
        ),
    )
    return RewardFunction(tables, labels, settings, byte_table)


_CANONICAL_AU = re.compile(r"AU(0|[1-9][0-9]*)")


def encode_ground_truth(aus_per_row: Sequence[Iterable[str] | None], cap: int = DEFAULT_AU_CAP) -> np.ndarray:
    """[B, cap] bool multi-hot from per-row AU strings ("AU12"; case-insensitive like the
    oracle's upper-casing). Raises ValueError naming the row for anything else."""
    multi_hot = np.zeros((len(aus_per_row), cap), dtype=bool)
    for row, aus in enumerate(aus_per_row):
        if aus is None:
            continue
        if isinstance(aus, str):
            raise TypeError(f"row {row}: ground-truth AUs must be a list of strings, got the string {aus!r}")
        for au in aus:
            match = _CANONICAL_AU.fullmatch(str(au).upper())
            if match is None or int(match.group(1)) >= cap:
                raise ValueError(
                    f"row {row}: ground-truth AU {au!r} is not 'AU' + a number below {cap} without "
                    "leading zeros, which the jitted AU reward cannot represent"
                )
            multi_hot[row, int(match.group(1))] = True
    return multi_hot


def _next_power_of_two(n: int, minimum: int) -> int:
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


# score_texts keeps the reward functions it built (tables and compiled code), keyed by the
# tokenizer object (held here, so its id stays unique), labels and modes.
_SCORE_CACHE: dict[tuple, tuple[object, RewardFunction]] = {}
_SCORE_CACHE_SIZE = 8
_BUNDLED: list = []


def _bundled_tokenizer():
    if not _BUNDLED:
        from facialr1_jax.data.tokenizer import load_tokenizer

        _BUNDLED.append(load_tokenizer())
    return _BUNDLED[0]


def _reward_fn_for(tokenizer, labels: tuple[str, ...], accuracy_mode: str, au_mode: str) -> RewardFunction:
    key = (id(tokenizer), labels, accuracy_mode, au_mode)
    if key not in _SCORE_CACHE:
        if len(_SCORE_CACHE) >= _SCORE_CACHE_SIZE:
            _SCORE_CACHE.pop(next(iter(_SCORE_CACHE)))
        reward_fn = make_reward_fn(tokenizer, labels, accuracy_mode=accuracy_mode, au_mode=au_mode)
        _SCORE_CACHE[key] = (tokenizer, reward_fn)
    return _SCORE_CACHE[key][1]


def score_texts(
    texts: Sequence[str],
    labels: Sequence[str | None],
    aus: Sequence[Iterable[str] | None],
    tokenizer=None,
    accuracy_mode: str = "normalized",
    au_mode: str = "2f1-1",
    batch_size: int = 1024,
) -> dict[str, np.ndarray]:
    """Scores texts with the jitted rewards: tokenizes each text (the bundled tokenizer when None;
    no special tokens added, and special-token strings such as "<|im_end|>" inside a text kept as
    plain text), runs the reward function and returns numpy arrays "format", "accuracy", "au",
    "total" (default weights 1, clamp [-10, 10]), equal to `fea.answers.total_reward` per text.

    Precisely, the rewards score `tokenizer.decode(tokenizer.encode(text))`: the text itself for
    a byte-level tokenizer without a normaliser (ours); a tokenizer with a normaliser (Qwen2's
    applies NFC) scores the normalised text, as it would its own samples.
    The label vocabulary is the eight emotions plus any other label given, in first-seen order.
    """
    if not len(texts) == len(labels) == len(aus):
        raise ValueError(f"{len(texts)} texts, {len(labels)} labels and {len(aus)} AU lists differ in length")
    if tokenizer is None:
        tokenizer = _bundled_tokenizer()
    vocabulary = list(fea_emotions.EMOTIONS)
    for label in labels:
        if label is not None and str(label).strip() and label not in vocabulary:
            vocabulary.append(label)
    reward_fn = _reward_fn_for(tokenizer, tuple(vocabulary), accuracy_mode, au_mode)

    truth = encode_ground_truth(aus)
    label_ids = np.array([reward_fn.label_id(label) for label in labels], dtype=np.int32)
    encoded = [tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True) for text in texts]
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in ("format", "accuracy", "au", "total")}
    for start in range(0, len(texts), batch_size):
        chunk = encoded[start : start + batch_size]
        rows = _next_power_of_two(len(chunk), 8)
        width = _next_power_of_two(max([len(e) for e in chunk] + [1]), 16)
        ids = np.zeros((rows, width), np.int32)
        mask = np.zeros((rows, width), bool)
        for row, token_ids in enumerate(chunk):
            ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = True
        chunk_labels = np.full(rows, -1, np.int32)
        chunk_labels[: len(chunk)] = label_ids[start : start + len(chunk)]
        chunk_truth = np.zeros((rows, truth.shape[1]), bool)
        chunk_truth[: len(chunk)] = truth[start : start + len(chunk)]
        result = reward_fn(ids, mask, chunk_labels, chunk_truth)
        for name in outputs:
            outputs[name].append(np.asarray(result[name])[: len(chunk)])
    return {name: np.concatenate(parts) if parts else np.zeros(0, np.float32) for name, parts in outputs.items()}
