"""benchmarks/accelerator_report.py on CPU: the byte count behind the decode bandwidth share, the
datasheet lookup, and the report's structure (the decode and SFT parts at toy size run under
`pytest -m slow`)."""

from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import accelerator_report  # noqa: E402

from facialr1_jax import models  # noqa: E402


@pytest.mark.parametrize("tied", [False, True])
def test_decode_bytes_count_the_weights_a_step_multiplies_by_and_the_whole_cache(tied):
    config = models.get_preset("tiny", tie_word_embeddings=tied)
    model = models.init_model(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    text = config.text_config
    counted = accelerator_report.decode_bytes_per_step(model, prompts=3, rows=12, prompt_slots=40,
                                                       completion_slots=16, cache_itemsize=2)
    # By hand from the config: per decoder layer q/k/v (with biases), o, the gated MLP, two norms.
    d, heads, kv, hd, inter = (text.hidden_size, text.num_attention_heads, text.num_key_value_heads, text.head_dim,
                               text.intermediate_size)
    per_layer = d * heads * hd + heads * hd + 2 * (d * kv * hd + kv * hd) + heads * hd * d + 3 * d * inter + 2 * d
    weights = text.num_hidden_layers * per_layer + d + text.vocab_size * d  # + final norm + vocab projection
    assert counted["weight_bytes"] == 2 * weights
    per_slot = 2 * text.num_hidden_layers * kv * hd * 2
    assert counted["kv_cache_bytes"] == per_slot * (3 * 40 + 12 * 16)
    assert counted["decode_bytes_per_step"] == counted["weight_bytes"] + counted["kv_cache_bytes"]


def test_datasheet_lookup_by_device_kind():
    assert accelerator_report.datasheet_for("NVIDIA H200") == (989.4e12, 4.8e12)
    assert accelerator_report.datasheet_for("NVIDIA H100 80GB HBM3") == (989.4e12, 3.35e12)
    assert accelerator_report.datasheet_for("cpu") == (None, None)


def test_copy_and_matmul_parts_report_rates_and_unknown_parts_are_refused(tmp_path):
    out = tmp_path / "report.json"
    results = accelerator_report.main(["--preset", "tiny", "--parts", "copy,matmul", "--copy_gib", "0.01",
                                       "--matmul_size", "128", "--out", str(out)])
    assert results["failures"] == {}
    assert np.isclose(results["copy_bytes_per_s"], results["copy_bytes"] / results["copy_s"], rtol=1e-9)
    assert np.isclose(results["matmul_flops_per_s"], 2 * 128**3 / results["matmul_s"], rtol=1e-9)
    assert out.exists()
    with pytest.raises(SystemExit, match="unknown part"):
        accelerator_report.main(["--preset", "tiny", "--parts", "copy,decoding"])


@pytest.mark.slow
def test_decode_and_sft_parts_at_toy_size():
    results = accelerator_report.main(
        ["--preset", "tiny", "--parts", "decode,sft", "--new_tokens", "8", "--prompt_length", "96", "--seq", "128",
         "--target_tokens", "32", "--image_px", "112", "--steps", "2", "--repeats", "2"])
    assert results["failures"] == {}
    assert results["decode_rows"] == 32 and results["decode_step_ms"] > 0
    assert np.isclose(results["decode_bytes_per_s"] * results["decode_step_ms"] / 1e3,
                      results["decode_bytes_per_step"], rtol=1e-3)
    assert results["sft_model_flops_per_step"] > 0 and results["sft_step_s"] > 0
