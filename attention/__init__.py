"""Efficient attention in pure JAX: every mechanism with one signature.

`query [B, T, N, H]`, `key/value [B, S, K, H]` -> `[B, T, N, H]`, the
arguments of `jax.nn.dot_product_attention`; see `attention.shapes` for the
legend. Mechanisms are also reachable by name: `attention.get(name)`, each
with its typed options (`attention.get(name).options`); an
`AttentionSpec` holds a mechanism, its options, a mask and scores.
"""

from attention.exact.blockwise import blockwise_attention
from attention.flax_slot import attention_fn
from attention.memory.infini import infini_attention
from attention.memory import infini_decoding  # registers infini
from attention import masks
from attention import options
from attention import scores
from attention.kernelized.linear import linear_attention
from attention.hashing.lsh import lsh_attention
from attention.kernelized.performer import draw_projection, performer_attention
from attention.exact.reference import dot_product_attention
from attention.memory.xl import xl_attention
from attention.registry import Mechanism, get, names, register
from attention.spec import AttentionSpec

__all__ = [
    'AttentionSpec',
    'attention_fn',
    'Mechanism',
    'blockwise_attention',
    'dot_product_attention',
    'draw_projection',
    'get',
    'infini_attention',
    'linear_attention',
    'masks',
    'lsh_attention',
    'names',
    'options',
    'performer_attention',
    'register',
    'scores',
    'xl_attention',
]
