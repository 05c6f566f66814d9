"""Efficient attention in pure JAX: every mechanism with one signature.

`query [B, T, N, H]`, `key/value [B, S, K, H]` -> `[B, T, N, H]`, the
arguments of `jax.nn.dot_product_attention`; see `attention.shapes` for the
legend. Mechanisms are also reachable by name: `attention.get(name)`, each
with its typed options (`attention.get(name).options`); an
`AttentionSpec` holds a mechanism, its options, a mask and scores.
"""

from efficient_attention.attention.exact.blockwise import blockwise_attention
from efficient_attention.attention.flax_slot import attention_fn
from efficient_attention.attention.memory.infini import infini_attention
from efficient_attention.attention.memory import infini_decoding  # registers infini
from efficient_attention.attention import masks
from efficient_attention.attention import options
from efficient_attention.attention import scores
from efficient_attention.attention.kernelized.linear import linear_attention
from efficient_attention.attention.hashing.lsh import lsh_attention
from efficient_attention.attention.kernelized.performer import draw_projection, performer_attention
from efficient_attention.attention.exact.reference import dot_product_attention
from efficient_attention.attention.memory.xl import xl_attention
from efficient_attention.attention.sparse.bigbird import bigbird_attention
from efficient_attention.attention.lowrank.linformer import linformer_attention
from efficient_attention.attention.sparse.longformer import longformer_attention
from efficient_attention.attention.sparse.sparse_transformer import sparse_transformer_attention
from efficient_attention.attention.registry import Mechanism, get, names, register
from efficient_attention.attention.spec import AttentionSpec

__all__ = [
    'AttentionSpec',
    'attention_fn',
    'bigbird_attention',
    'Mechanism',
    'blockwise_attention',
    'dot_product_attention',
    'draw_projection',
    'get',
    'infini_attention',
    'linear_attention',
    'linformer_attention',
    'longformer_attention',
    'masks',
    'lsh_attention',
    'names',
    'options',
    'performer_attention',
    'register',
    'scores',
    'sparse_transformer_attention',
    'xl_attention',
]
