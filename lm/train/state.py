"""Train state and its sharded creation (parameters are initialised already sharded, under jit)."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from lm import models, peft as peft_lib
from lm.models.heads import attach_heads
from lm.parallel import sharding as shd
from lm.parallel.axes import axis_rules
from lm.parallel.rules import LAYOUTS, Layout


@flax.struct.dataclass
class TrainState:
    step: jax.Array   # int32 scalar: optimizer updates applied so far
    params: Any       # pure dict, the structure of nnx.split(model)[1].to_pure_dict()
    opt_state: Any


def build_model(cfg: models.ModelConfig, peft: peft_lib.PeftConfig = peft_lib.PeftConfig(),
                heads: tuple[str, ...] = (), seed: int = 0) -> nnx.Module:
    """The model with ``peft``'s parameters and the scalar ``heads`` (lm.models.heads) attached."""
    model = peft_lib.build(cfg, peft, seed)
    attach_heads(model, cfg, heads, seed)
    return model


def abstract_model(cfg: models.ModelConfig, peft: peft_lib.PeftConfig = peft_lib.PeftConfig(),
                   heads: tuple[str, ...] = ()) -> tuple[nnx.GraphDef, nnx.State]:
    """Graph definition and parameter shapes of the model with ``peft`` and ``heads`` attached,
    without allocating memory."""
    return nnx.split(nnx.eval_shape(lambda: build_model(cfg, peft, heads)))


def param_count(abstract_state: nnx.State) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(abstract_state.to_pure_dict()))


def state_shardings(abstract_state: nnx.State, optimizer: optax.GradientTransformation,
                    mesh: Mesh, layout: Layout = LAYOUTS["standard"]) -> TrainState:
    """Shardings of every TrainState leaf: parameters by the layout's parameter rules, optimizer
    state by its optimizer rules (the same table except under ZeRO-1)."""
    params = abstract_state.to_pure_dict()
    params_shardings = shd.param_shardings(abstract_state, mesh, layout.params)
    mirror_shardings = shd.param_shardings(abstract_state, mesh, layout.optimizer)
    opt_shapes = jax.eval_shape(optimizer.init, params)
    return TrainState(step=shd.replicated(mesh), params=params_shardings,
                      opt_state=shd.like_params(opt_shapes, params, mirror_shardings, mesh))


def abstract_train_state(abstract_state: nnx.State, optimizer: optax.GradientTransformation,
                         shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs with shardings: the restore target and the compile-only input."""
    params = abstract_state.to_pure_dict()
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(optimizer.init, params))
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def create_state(cfg: models.ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh,
                 seed: int, layout: Layout = LAYOUTS["standard"],
                 peft: peft_lib.PeftConfig = peft_lib.PeftConfig(),
                 heads: tuple[str, ...] = ()) -> tuple[nnx.GraphDef, TrainState]:
    """Initialises parameters (of the model with ``peft`` attached) and optimizer state directly
    into their shardings."""
    graphdef, abstract_state = abstract_model(cfg, peft, heads)
    shardings = state_shardings(abstract_state, optimizer, mesh, layout)

    def init() -> TrainState:
        params = nnx.split(build_model(cfg, peft, heads, seed))[1].to_pure_dict()
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=optimizer.init(params))
    with axis_rules(mesh, layout.params):
        state = jax.jit(init, out_shardings=shardings)()
    return graphdef, state
