"""Stage 2 rewards computed inside jit, on the sampled token ids.

The Python oracle (`facialr1_jax.fea.answers`) defines the rewards on decoded text; this package
computes the same numbers from token ids with finite automata, so rewards never leave the device:

  byte_table  token id -> bytes for Hugging Face byte-level tokenizers (decode is exact)
  utf8        the decoder's replacement-character rule, spelled out
  alphabet    all Unicode code points sorted into the classes the rewards can tell apart
  automata    small Mealy machines: build, minimise, compose
  machines    the format, answer, prediction and think/AU automata (one per oracle rule)
  tables      the automata lifted to whole tokens (one scan step per token)
  au_keys     exact uint32 keys for AU mentions ("AU01" != "AU1")
  scan        the jitted `lax.scan` over tokens
  terms       reward terms, the REWARDS registry, the reward configuration
  api         make_reward_fn (the jitted function) and score_texts

    reward_fn = make_reward_fn(tokenizer, EMOTIONS, config.rewards)
    rewards = reward_fn(ids, mask, label_ids, au_multi_hot)   # {"format", "accuracy", "au", "total", ...}
"""

from facialr1_jax.rewards.api import (
    DEFAULT_AU_CAP,
    RewardFunction,
    RewardTables,
    encode_ground_truth,
    make_reward_fn,
    score_texts,
)
from facialr1_jax.rewards.byte_table import (
    NotByteLevelError,
    TokenByteTable,
    build_byte_table,
    decode_completion,
)
from facialr1_jax.rewards.terms import (
    REWARDS,
    RewardSettings,
    RewardTerm,
    register_reward,
    settings_from_config,
)

__all__ = [
    "DEFAULT_AU_CAP",
    "NotByteLevelError",
    "REWARDS",
    "RewardFunction",
    "RewardSettings",
    "RewardTables",
    "RewardTerm",
    "TokenByteTable",
    "build_byte_table",
    "decode_completion",
    "encode_ground_truth",
    "make_reward_fn",
    "register_reward",
    "score_texts",
    "settings_from_config",
]
