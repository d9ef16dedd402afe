"""Every form of a stack of blocks starts from the same weights for a seed: the list of blocks,
the scanned stack (scan_layers, [L, ...]) and the pipelined stacks ([S, Lp, ...], circular
[R, S, Lp, ...]) hold the same values layer by layer, and so do the parameters drawn before and
after the blocks. So every layout, pipelined ones included, compares with the plain one-device
model (tests/test_sharding.py trains them side by side)."""
from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from lm.models import ModelConfig, build
from lm.models.transformer import block_stack_axes
from lm.train.optimizer import decay_mask

# Learned positions and an untied head: parameters drawn before and after the blocks, so a stack
# that drew a different number of keys than the list would shift them too.
BASE = dict(vocab_size=37, num_layers=4, d_model=16, num_heads=2, num_kv_heads=1, max_len=8,
            positions="learned", tie_embeddings=False, use_bias=True)
# Blocks of other shapes draw other numbers of keys: no bias, gated MLP, one norm per block.
LLAMA_LIKE = dict(norm="rmsnorm", mlp="swiglu", block="parallel", use_bias=False)
FORMS = {
    "scan": dict(scan_layers=True),
    "gpipe_s2": dict(pipeline_stages=2),
    "gpipe_s4": dict(pipeline_stages=4),
    "circular_s2_r2": dict(pipeline_stages=2, pipeline_repeats=2),
    "gpipe_s2_scan": dict(pipeline_stages=2, scan_layers=True),
}
SEED = 7


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{**BASE, **overrides})


def initial_params(cfg: ModelConfig, seed: int = SEED) -> dict:
    return jax.tree.map(np.asarray, nnx.split(build(cfg, seed))[1].to_pure_dict())


def as_list_of_layers(params: dict, cfg: ModelConfig) -> dict:
    """Parameters (or gradients) with every stack of blocks ('blocks', 'encoder_blocks', ...) as
    the list form's {l: block l}: a stack's leading axes are a reshape of the layer index."""
    lead = block_stack_axes(cfg)
    if lead == 0:
        return params

    def unstack(blocks):
        layers = jax.tree.map(lambda w: w.reshape(-1, *w.shape[lead:]), blocks)
        count = jax.tree.leaves(layers)[0].shape[0]
        return {layer: jax.tree.map(lambda w: w[layer], layers) for layer in range(count)}
    return {name: unstack(value) if name.endswith("blocks") else value
            for name, value in params.items()}


def assert_same_values(got: dict, want: dict):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))


def assert_starts_like_the_list(stacked: ModelConfig, plain: ModelConfig):
    """Same seed: the stacked form's parameters, unstacked, equal the list form's exactly."""
    assert_same_values(as_list_of_layers(initial_params(stacked), stacked), initial_params(plain))


@pytest.mark.parametrize("form", list(FORMS.values()), ids=list(FORMS))
@pytest.mark.parametrize("arch", ["decoder", "prefix_decoder", "encoder"])
def test_stacked_forms_start_from_the_list_of_layers_weights(arch, form):
    assert_starts_like_the_list(config(arch=arch, **form), config(arch=arch))


@pytest.mark.parametrize("form", [FORMS["scan"], FORMS["gpipe_s2"]], ids=["scan", "gpipe_s2"])
def test_blocks_of_another_shape_start_from_the_list_of_layers_weights(form):
    assert_starts_like_the_list(config(**LLAMA_LIKE, **form), config(**LLAMA_LIKE))


def test_scanned_encoder_decoder_starts_from_the_list_of_layers_weights():
    """Two stacks of different blocks, one after the other, with a norm drawn between them."""
    encoder_decoder = dict(arch="encoder_decoder", num_encoder_layers=3)
    assert_starts_like_the_list(config(**encoder_decoder, scan_layers=True),
                                config(**encoder_decoder))


def test_layers_of_a_stack_differ():
    """Each layer draws its own keys (the same values would mean every layer shares one key)."""
    cfg = config(pipeline_stages=2)
    kernel = initial_params(cfg)["blocks"]["mlp"]["wi"]["kernel"].reshape(4, 16, 64)
    for layer in range(1, 4):
        assert not np.allclose(kernel[layer], kernel[0])


def test_list_of_layers_keeps_its_initial_values():
    """The plain model's initial weights for seed 0, as they were when the stacked forms were
    made to match them: the recorded results (the demo's validation loss) depend on them."""
    params = initial_params(config(), seed=0)
    np.testing.assert_allclose(params["embed"]["embedding"][0, :3],
                               [0.0200803, -0.0181267, -0.0149634], rtol=1e-5)
    np.testing.assert_allclose(params["blocks"][3]["mlp"]["wi"]["kernel"][0, :3],
                               [0.0070367, -0.0197330, 0.0401484], rtol=1e-5)
    np.testing.assert_allclose(params["head"]["kernel"][0, :3],
                               [0.0155869, -0.0247135, -0.0111013], rtol=1e-5)


@pytest.mark.parametrize("form", [FORMS["scan"], FORMS["gpipe_s2"], FORMS["circular_s2_r2"]],
                         ids=["scan", "gpipe_s2", "circular_s2_r2"])
def test_stacked_forms_decay_the_same_weights(form):
    """Weight decay spares norms' scales and biases in every form: a stack's leading axes do
    not make a scale [L, D] a matrix."""
    cfg = config(**form)
    stacked = initial_params(cfg)
    decays = jax.tree.map(lambda decay, w: np.full(w.shape, decay),
                          decay_mask(stacked, block_stack_axes(cfg)), stacked)
    per_layer = jax.tree.map(lambda decay: bool(decay.all()), as_list_of_layers(decays, cfg))
    assert per_layer == decay_mask(initial_params(config()))
