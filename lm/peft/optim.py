"""Optimizers for fine-tuning with frozen parameters.

``frozen(optimizer, mask)`` runs ``optimizer`` on the trainable leaves only (optax.multi_transform
with ``set_to_zero`` for the rest): frozen leaves get zero updates, so ``optax.apply_updates``
leaves them unchanged, and the optimizer state holds moments for the trainable leaves only (the
frozen ones appear as empty ``MaskedNode``s), which is most of PEFT's memory saving. Global-norm
clipping inside ``optimizer`` sees the trainable gradients only.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import jax
import optax

TRAINABLE, FROZEN = "trainable", "frozen"

Mask = Union[Any, Callable[[Any], Any]]  # pytree of bools like the parameters, or params -> one


def frozen(optimizer: optax.GradientTransformation, mask: Mask) -> optax.GradientTransformation:
    """``optimizer`` on the leaves where ``mask`` is True; zero updates and no state elsewhere.
    An all-True mask (methods 'none' and 'full') returns ``optimizer`` itself, so its state keeps
    the structure of an ordinary run."""
    if not callable(mask) and all(jax.tree.leaves(mask)):
        return optimizer

    def labels(params):
        trainable = mask(params) if callable(mask) else mask
        return jax.tree.map(lambda train: TRAINABLE if train else FROZEN, trainable)
    return optax.multi_transform({TRAINABLE: optimizer, FROZEN: optax.set_to_zero()}, labels)
