"""The `synth` config section as a checked, immutable settings object.

`SynthSettings.from_config(config)` reads `config.synth` (configs/synth.py documents every knob)
and rejects wrong values with `config_validation.ConfigError` naming the key, before any model is
loaded. The settings that change what a run writes (`output_fingerprint`) are stored in the
workdir's manifest, so a resumed run cannot silently mix shards made under different settings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from facialr1_jax.config_validation import ConfigError
from facialr1_jax.fea.prompts import VARIANTS
from facialr1_jax.synth.attempts import PROMPT_MODES

AU_CHECK_MODES = ("exact", "f1", "off")


def _split_list(text: str) -> tuple[str, ...]:
    """"a, b,c" -> ("a", "b", "c"); empty items dropped."""
    return tuple(item.strip() for item in str(text).split(",") if item.strip())


@dataclasses.dataclass(frozen=True)
class SynthSettings:
    """Everything stage 3 needs besides the model and the records (see configs/synth.py)."""

    checkpoint: str = ""
    input_jsonl: str = ""
    known_jsonl: tuple[str, ...] = ()
    max_records: int = 0
    batch_size: int = 32
    max_new_tokens: int = 160
    max_prompt_tokens: int = 1024
    prompt_variant: str = ""
    prompt_mode: str = "synthesis"
    max_attempts: int = 6
    feedback_history: int = 0
    num_candidates: int = 1
    temperature: float = 0.7
    check_aus: str = "exact"
    au_f1_threshold: float = 0.8
    check_label: bool = True
    require_format: bool = True
    ban_hedges: bool = False
    hedge_words: tuple[str, ...] = ()
    dedup_descriptions: bool = True
    shard_size: int = 256
    round: int = 1
    seed: int = 0

    def __post_init__(self):
        positive = ("batch_size", "max_new_tokens", "max_prompt_tokens", "max_attempts", "num_candidates",
                    "shard_size", "round")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"config.synth.{name} = {value!r} must be an integer >= 1")
        for name in ("max_records", "feedback_history"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"config.synth.{name} = {value!r} must be an integer >= 0 (0 = no limit)")
        if self.check_aus not in AU_CHECK_MODES:
            raise ConfigError(f"config.synth.check_aus = {self.check_aus!r} is not one of {', '.join(AU_CHECK_MODES)}")
        if not (isinstance(self.au_f1_threshold, (int, float)) and 0.0 <= self.au_f1_threshold <= 1.0):
            raise ConfigError(f"config.synth.au_f1_threshold = {self.au_f1_threshold!r} must be in [0, 1]")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ConfigError(f"config.synth.temperature = {self.temperature!r} must be a finite number > 0")
        if self.prompt_mode not in PROMPT_MODES:
            raise ConfigError(f"config.synth.prompt_mode = {self.prompt_mode!r} is not one of {', '.join(PROMPT_MODES)}")
        if self.prompt_variant and self.prompt_variant not in VARIANTS:
            raise ConfigError(f"config.synth.prompt_variant = {self.prompt_variant!r} is not one of "
                              f"'' (the checkpoint's), {', '.join(VARIANTS)}")
        bad_words = [word for word in self.hedge_words if not word.replace("'", "").isalpha()]
        if bad_words:
            raise ConfigError(f"config.synth.hedge_words: {bad_words} are not words (letters and apostrophes only)")

    @classmethod
    def from_config(cls, config: Any) -> "SynthSettings":
        """From `config.synth` (plus `config.seed`); missing optional keys keep their defaults."""
        if "synth" not in config:
            raise ConfigError("the config has no synth section (use configs/synth.py or configs/pipeline.py)")
        s = config.synth
        defaults = cls()

        def get(name: str, default: Any) -> Any:
            return s[name] if name in s else default

        return cls(
            checkpoint=str(get("checkpoint", "")),
            input_jsonl=str(get("input_jsonl", "")),
            known_jsonl=_split_list(get("known_jsonl", "")),
            max_records=get("max_records", defaults.max_records),
            batch_size=get("batch_size", defaults.batch_size),
            max_new_tokens=get("max_new_tokens", defaults.max_new_tokens),
            max_prompt_tokens=get("max_prompt_tokens", defaults.max_prompt_tokens),
            prompt_variant=str(get("prompt_variant", "")),
            prompt_mode=str(get("prompt_mode", defaults.prompt_mode)),
            max_attempts=get("max_attempts", defaults.max_attempts),
            feedback_history=get("feedback_history", defaults.feedback_history),
            num_candidates=get("num_candidates", defaults.num_candidates),
            temperature=get("temperature", defaults.temperature),
            check_aus=get("check_aus", defaults.check_aus),
            au_f1_threshold=get("au_f1_threshold", defaults.au_f1_threshold),
            check_label=bool(get("check_label", defaults.check_label)),
            require_format=bool(get("require_format", defaults.require_format)),
            ban_hedges=bool(get("ban_hedges", defaults.ban_hedges)),
            hedge_words=tuple(word.lower() for word in _split_list(get("hedge_words", ""))),
            dedup_descriptions=bool(get("dedup_descriptions", defaults.dedup_descriptions)),
            shard_size=get("shard_size", defaults.shard_size),
            round=get("round", defaults.round),
            seed=int(config.seed) if "seed" in config else 0,
        )

    @property
    def greedy(self) -> bool:
        return self.num_candidates == 1

    def output_fingerprint(self) -> dict[str, Any]:
        """The settings that decide which records a run writes and how (stored in the manifest).

        Batch size is included: it decides which prompts share an engine call, which can move
        greedy ties by rounding; a resumed run must batch exactly as the interrupted one did.
        """
        keep = ("batch_size", "max_new_tokens", "max_prompt_tokens", "prompt_variant", "prompt_mode", "max_attempts",
                "feedback_history", "num_candidates", "temperature", "check_aus", "au_f1_threshold", "check_label",
                "require_format", "ban_hedges", "hedge_words", "dedup_descriptions", "shard_size", "round", "seed")
        out = {name: getattr(self, name) for name in keep}
        out["hedge_words"] = list(self.hedge_words)
        out["temperature"] = None if self.greedy else float(self.temperature)
        return out
