"""The CPU decode step's re-laid-out weights (`models.qwen2_5_vl.text.DecodeKernels`).

On one CPU device the engine decodes through (out, in) copies of the language model's matrices, q/k/v
and gate/up fused: the same maths as the model's projections with float32 sums in another order, so
generation with and without them agrees to rounding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from facialr1_jax.models import get_preset, init_model
from facialr1_jax.models.qwen2_5_vl.layers import out_in_dense
from facialr1_jax.parallel import make_mesh
from facialr1_jax.sampling import Engine
from tests.sampling.prompts import image_prompts, prompt_batch


@pytest.fixture(scope="module")
def tied_model():
    return init_model(get_preset("tiny", tie_word_embeddings=True), seed=5)


def test_kernels_are_the_projections_transposed_and_fused(tiny_model, tied_model):
    for model in (tiny_model, tied_model):
        kernels = model.decode_kernels()
        layer, fused = model.language_model.layers[1], kernels.layers[1]
        attention, mlp = layer.self_attn, layer.mlp
        as_matrix = lambda p: np.asarray(p.kernel[...]).reshape(int(np.prod(p.in_shape)), -1)
        np.testing.assert_array_equal(np.asarray(fused.qkv), np.concatenate(
            [as_matrix(p).T for p in (attention.q_proj, attention.k_proj, attention.v_proj)]))
        np.testing.assert_array_equal(np.asarray(fused.qkv_bias), np.concatenate(
            [np.asarray(p.bias[...]).ravel() for p in (attention.q_proj, attention.k_proj, attention.v_proj)]))
        np.testing.assert_array_equal(np.asarray(fused.out), as_matrix(attention.o_proj).T)
        np.testing.assert_array_equal(np.asarray(fused.gate_up),
                                      np.concatenate([as_matrix(mlp.gate_proj).T, as_matrix(mlp.up_proj).T]))
        np.testing.assert_array_equal(np.asarray(fused.down), as_matrix(mlp.down_proj).T)
        assert len(kernels.layers) == len(model.language_model.layers)
    # The head is (vocab, hidden): the untied kernel transposed, the tied embedding as it is.
    np.testing.assert_array_equal(np.asarray(tiny_model.decode_kernels().head),
                                  np.asarray(tiny_model.lm_head.kernel[...]).T)
    np.testing.assert_array_equal(np.asarray(tied_model.decode_kernels().head),
                                  np.asarray(tied_model.language_model.embed_tokens[...]))


def test_out_in_dense_is_a_projection(tiny_model):
    projection = tiny_model.language_model.layers[0].self_attn.q_proj  # (hidden) -> (heads, head_dim), biased
    x = jax.random.normal(jax.random.key(0), (3, 2, projection.in_shape[0]))
    kernel, bias = projection.out_in_kernel()
    got = out_in_dense(x, kernel, bias, jnp.float32)
    np.testing.assert_allclose(np.asarray(got).reshape(3, 2, *projection.out_shape), np.asarray(projection(x)),
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("which", ["untied", "tied"])
def test_generation_with_kernels_equals_without(which, tiny_model, tied_model, tiny_config):
    model = tiny_model if which == "untied" else tied_model
    batch = prompt_batch(model.config, image_prompts(tiny_config))
    params = nnx.state(model)
    runs = {}
    for kernels in (True, False):
        engine = Engine.for_model(model, decode_kernels=kernels)
        assert engine.decode_kernels is kernels
        greedy = engine.generate(params, batch, max_new_tokens=6, num_samples=2, temperature=0.0,
                                 stop_token_ids=(), return_logits=True)
        sampled = engine.generate(params, batch, max_new_tokens=6, num_samples=3, temperature=1.0,
                                  rng=jax.random.key(7), stop_token_ids=())
        runs[kernels] = jax.device_get((greedy, sampled))
        assert engine._kernels_program._cache_size() == int(kernels)  # built (once) only when asked for
    (greedy, sampled), (plain_greedy, plain_sampled) = runs[True], runs[False]
    np.testing.assert_array_equal(greedy.tokens, plain_greedy.tokens)
    np.testing.assert_allclose(greedy.logits, plain_greedy.logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(sampled.tokens, plain_sampled.tokens)
    np.testing.assert_allclose(sampled.log_probs, plain_sampled.log_probs, atol=1e-5)


def test_kernels_default_to_one_cpu_device(tiny_model):
    assert Engine.for_model(tiny_model).decode_kernels is (jax.default_backend() == "cpu")
    if len(jax.devices()) >= 2:
        mesh = make_mesh({"data": 2}, devices=jax.devices()[:2])
        assert Engine.for_model(tiny_model, mesh=mesh).decode_kernels is False
