"""The LoRA product ``(x A) B`` with a backward pass that suits tall, thin operands.

Its gradients with respect to A [K, r] and B [r, M] contract the long row axis N (batch x
length) of two activations down to a tiny output with r = 8 columns or rows. XLA's CPU matmul
runs that shape several times slower than its FLOPs suggest (2.9 ms for [512, 2048] @ [2048, 8]
against 0.6 ms for the same sum taken over 16 row blocks of 128, benchmarks/peft_step.py), which
made LoRA on the MLP step slower than full fine-tuning. The custom backward sums per row block
instead: the same numbers up to float reassociation, on every backend.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

ROW_BLOCK = 128  # rows per partial sum of the factor gradients


@jax.custom_vjp
def low_rank_product(x_nk: jax.Array, a_kr: jax.Array, b_rm: jax.Array) -> jax.Array:
    """(x A) B: [N, K] @ [K, r] @ [r, M] -> [N, M]."""
    return (x_nk @ a_kr) @ b_rm


def _forward(x_nk, a_kr, b_rm):
    xa_nr = x_nk @ a_kr
    return xa_nr @ b_rm, (x_nk, a_kr, b_rm, xa_nr)


def _backward(residuals, g_nm):
    x_nk, a_kr, b_rm, xa_nr = residuals
    d_xa_nr = g_nm @ b_rm.T
    return (d_xa_nr @ a_kr.T, contract_rows(x_nk, d_xa_nr).astype(a_kr.dtype),
            contract_rows(xa_nr, g_nm).astype(b_rm.dtype))


low_rank_product.defvjp(_forward, _backward)


def contract_rows(u_nk: jax.Array, v_nm: jax.Array) -> jax.Array:
    """u^T v [K, M], summed over blocks of ``ROW_BLOCK`` rows (one block when N does not divide)."""
    n = u_nk.shape[0]
    blocks = n // ROW_BLOCK if n % ROW_BLOCK == 0 and n > ROW_BLOCK else 1
    return jnp.einsum("cnk,cnm->km", u_nk.reshape(blocks, n // blocks, -1),
                      v_nm.reshape(blocks, n // blocks, -1))
