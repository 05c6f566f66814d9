"""The typed configuration of every model here (configs stay at the edges)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from efficient_attention.attention.spec import AttentionSpec

POSITIONS = ('rope', 'alibi', 'sinusoidal', 'learned', 'none')
NORMS = ('rms', 'layer')
MLPS = ('swiglu', 'gelu')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Sizes and choices of a transformer; validated on construction."""

  vocab_size: int = 256
  model_dim: int = 128  # D
  num_layers: int = 2
  num_heads: int = 4  # N
  num_kv_heads: int | None = None  # K; None: K = N
  head_dim: int | None = None  # H; None: D // N
  mlp_dim: int = 512
  mlp: str = 'swiglu'  # one of MLPS
  norm: str = 'rms'  # one of NORMS
  post_norm: bool = False  # True: the original Transformer's post-norm
  dropout_rate: float = 0.0  # on the residual branches and embeddings
  # A registry name (see attention.names()), an attention.AttentionSpec, or
  # a tuple of them: a pattern that repeats over the layers (layer i uses
  # entry i % len), e.g. five sliding-window layers per global one.
  attention: Any = 'blockwise'
  # Options of a named mechanism, (name, value) pairs; with a spec or a
  # pattern they go into every entry (whose mechanism must accept them).
  attention_options: tuple[tuple[str, Any], ...] = ()
  position: str = 'rope'  # one of POSITIONS
  max_length: int = 2048  # table size of learned positions
  tie_embeddings: bool = True
  qk_norm: bool = False
  shared_qk: bool = False  # self-attention queries = keys (Reformer); K = N
  logits_soft_cap: float | None = None
  dtype: Any = None  # compute dtype (None: float32); params are float32

  def __post_init__(self):
    choices = dict(mlp=MLPS, norm=NORMS, position=POSITIONS)
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise ValueError(f'{name} must be one of {allowed}, got '
                         f'{getattr(self, name)!r}')
    for name in ('vocab_size', 'model_dim', 'num_layers', 'num_heads',
                 'mlp_dim', 'max_length'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be positive, got {getattr(self, name)}')
    if self.num_heads % (self.num_kv_heads or self.num_heads):
      raise ValueError(f'num_heads={self.num_heads} must be a multiple of '
                       f'num_kv_heads={self.num_kv_heads}')
    if self.shared_qk and self.num_kv_heads not in (None, self.num_heads):
      raise ValueError(f'shared_qk needs num_kv_heads = num_heads, got '
                       f'{self.num_kv_heads} and {self.num_heads}')
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f'dropout_rate must be in [0, 1), got '
                       f'{self.dropout_rate}')
    object.__setattr__(self, 'attention_options',
                       tuple(sorted(dict(self.attention_options).items())))
    object.__setattr__(self, '_specs', self._make_specs())

  def _make_specs(self) -> tuple[AttentionSpec, ...]:
    pattern = (self.attention if isinstance(self.attention, (tuple, list))
               else (self.attention,))
    if not pattern:
      raise ValueError('attention must be a name, a spec or a non-empty '
                       'tuple of them, got ()')
    specs = []
    for entry in pattern:
      spec = AttentionSpec.create(entry)
      if self.attention_options:
        spec = AttentionSpec.create(spec, options=spec.options.replace(
            **dict(self.attention_options)))
      specs.append(spec)
    return tuple(specs)

  def layer_spec(self, layer: int) -> AttentionSpec:
    """The attention spec of layer `layer` (the pattern repeats)."""
    return self._specs[layer % len(self._specs)]

  @property
  def specs(self) -> tuple[AttentionSpec, ...]:
    """The attention pattern, one spec per entry."""
    return self._specs

  @property
  def attention_position(self):
    """The positional scheme applied inside attention (RoPE, ALiBi)."""
    return self.position if self.position in ('rope', 'alibi') else None

  @property
  def compute_dtype(self):
    return self.dtype or jnp.float32
