"""Transformer models: decoder LM, encoder, encoder-decoder (Flax NNX).

- `DecoderLM`: GPT style (Radford et al. 2019): causal blocks, tied or untied
  embeddings, decoding with a cache of per-layer mechanism states.
- `Encoder`: BERT style (Devlin et al. 2019, arXiv 1810.04805):
  bidirectional blocks with padding, a masked-LM head and a classification
  head over the CLS token or the mean of the real tokens.
- `EncoderDecoder`: Vaswani et al. 2017 (arXiv 1706.03762): encoder, and a
  causal decoder with cross-attention to it. Use it with
  `position='sinusoidal', post_norm=True` for the original model.

Tokens are int `[B, T]`; `lengths [B]` gives each row's real tokens (the rest
is right padding).
"""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp

from efficient_attention.attention import positional
from efficient_attention.attention.shapes import concrete
from efficient_attention.attention import masks
from efficient_attention.attention.decoding import kv_cache
from efficient_attention.models.block import Block, make_norm
from efficient_attention.models.config import TransformerConfig

# A decoding cache (`init_cache`): a dict with each row's next position and
# each layer's state (a KV cache, a ring, or a recurrent state), a pytree.
Cache = dict


class Embedding(nnx.Module):
  """Token embeddings plus absolute positions (sinusoidal or learned).

  Token ids must lie in `[0, vocab_size)` and learned positions in
  `[0, max_length)`. Concrete inputs out of range raise `ValueError`.
  Under `jit` the values are not known when tracing: an out-of-range id or
  position (negative ones included) then embeds as NaN, never as a silently
  wrapped or clipped row of the table. The logits at that position are NaN,
  and so may be others of that row of the batch (later ones attend to it;
  earlier ones too where a masked key meets its query in a tile's matmul,
  0 x NaN = NaN); other rows of the batch are unaffected.
  """

  def __init__(self, config: TransformerConfig, rngs: nnx.Rngs):
    self.config = config
    self.tokens = nnx.Embed(config.vocab_size, config.model_dim,
                            dtype=config.dtype, rngs=rngs)
    self.positions = nnx.Embed(
        config.max_length, config.model_dim, dtype=config.dtype,
        rngs=rngs) if config.position == 'learned' else None
    self.dropout = nnx.Dropout(config.dropout_rate, rngs=rngs)

  def __call__(self, tokens, positions, deterministic=True):
    x = _lookup(self.tokens, tokens, 'token ids', 'vocab_size')
    if self.config.position == 'sinusoidal':
      x = x * jnp.sqrt(self.config.model_dim).astype(x.dtype)
      x = x + positional.sinusoidal(positions, self.config.model_dim).astype(
          x.dtype)
    elif self.config.position == 'learned':
      x = x + _lookup(self.positions, positions, 'positions', 'max_length')
    return self.dropout(x, deterministic=deterministic)


def cache_overflow(cache: Cache) -> jax.Array:
  """bool `[B]`: rows of a decoding cache (`init_cache`) that ran past its
  max_length, which only a traced call can do (eager calls raise first);
  their logits are NaN from that token on. False where no layer can
  overflow (ring caches, memories)."""
  overflow = jnp.zeros(cache['position'].shape, bool)
  for state in cache['layers']:
    flag = kv_cache.overflowed(state)
    if flag is not None:
      overflow = overflow | flag
  return overflow


def check_range(name: str, values, size: int, size_name: str):
  """Raises ValueError unless concrete `values` all lie in `[0, size)`."""
  found = concrete(values)
  if found is not None and found.size and (found.min() < 0 or
                                           found.max() >= size):
    bad = found[(found < 0) | (found >= size)]
    raise ValueError(
        f'{name} must lie in [0, {size_name}={size}), got {bad.size} outside '
        f'it (from {bad.min()} to {bad.max()})')


def _lookup(table: nnx.Embed, ids, name: str, size_name: str):
  """Rows of `table`; ids out of range raise, or give NaN under jit."""
  size = table.num_embeddings
  check_range(name, ids, size, size_name)
  # jnp.take fills out-of-bound rows with NaN but wraps negative ids.
  return table(jnp.where((ids >= 0) & (ids < size), ids, size))


def _positions(tokens, start=None):
  """Positions `[B, T]` of tokens: `start[b] + t` (start default 0)."""
  t = jnp.arange(tokens.shape[1])[None, :]
  return t + (0 if start is None else start[:, None])


def segment_positions(segment_ids):
  """Positions `[B, T]` that restart at 0 where the segment id changes
  (packed documents each count from their own first token)."""
  segment_ids = jnp.asarray(segment_ids)
  T = segment_ids.shape[1]
  t = jnp.broadcast_to(jnp.arange(T), segment_ids.shape)
  new = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                         segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
  return t - jax.lax.cummax(jnp.where(new, t, 0), axis=1)


def _packed(tokens, segment_ids):
  """Positions and the document mask of a batch; plain positions and no
  mask without segment ids."""
  if segment_ids is None:
    return _positions(tokens), None
  segment_ids = jnp.asarray(segment_ids)
  if segment_ids.shape != jnp.shape(tokens):
    raise ValueError(f'segment_ids must be [B, T] = {jnp.shape(tokens)} like '
                     f'the tokens, got {segment_ids.shape}')
  return segment_positions(segment_ids), masks.document(segment_ids)


class Stack(nnx.Module):
  """Embedding, `num_layers` blocks and a final norm (none if post-norm)."""

  def __init__(self, config: TransformerConfig, *, cross_attention=False,
               causal=False, rngs: nnx.Rngs):
    """`causal`: a decoder stack, whose mechanisms must attend causally."""
    self.config = config
    for layer in range(config.num_layers) if causal else ():
      mechanism = config.layer_spec(layer).mechanism
      if not mechanism.causal:
        raise ValueError(f'a decoder cannot use attention '
                         f'{mechanism.name!r} (layer {layer}): '
                         f'{mechanism.not_causal}')
    self.embed = Embedding(config, rngs)
    self.blocks = nnx.List([Block(config, layer=i,
                                  cross_attention=cross_attention, rngs=rngs)
                            for i in range(config.num_layers)])
    # Parameters shared across layers: each layer's with the first layer
    # of its class (Linformer's share_layers).
    firsts = {}
    for block in self.blocks:
      first = firsts.setdefault(type(block.attention), block.attention)
      if first is not block.attention:
        block.attention.share_with(first)
    self.final_norm = None if config.post_norm else make_norm(config, rngs)

  def _finish(self, x):
    return x if self.final_norm is None else self.final_norm(x)

  def __call__(self, tokens, *, is_causal, lengths=None, context=None,
               context_lengths=None, segment_ids=None, deterministic=True):
    """`segment_ids [B, T]`: packed documents; each attends within itself
    and counts its positions from 0."""
    positions, mask = _packed(tokens, segment_ids)
    x = self.embed(tokens, positions, deterministic)
    for block in self.blocks:
      x = block(x, is_causal=is_causal, lengths=lengths, positions=positions,
                context=context, context_lengths=context_lengths, mask=mask,
                deterministic=deterministic)
    return self._finish(x)

  def init_cache(self, batch_size: int, max_length: int):
    """Decoding cache: next position per row and each layer's state."""
    if (self.config.position == 'learned' and
        max_length > self.config.max_length):
      raise ValueError(f'max_length={max_length} exceeds the learned position '
                       f'table (config.max_length={self.config.max_length})')
    return {'position': jnp.zeros((batch_size,), jnp.int32),
            'layers': [block.attention.init_state(batch_size, max_length)
                       for block in self.blocks]}

  def step(self, cache, tokens, *, num_new=None, context=None,
           context_lengths=None):
    """Runs L new tokens `[B, L]` through the stack; `(x, new_cache)`."""
    positions = _positions(tokens, cache['position'])
    advance = tokens.shape[1] if num_new is None else num_new
    for state in cache['layers']:  # before anything runs, when concrete
      kv_cache.check_room(state, advance)
    x = self.embed(tokens, positions)
    states = []
    for block, state in zip(self.blocks, cache['layers']):
      x, state = block.step(state, x, positions, num_new=num_new,
                            context=context, context_lengths=context_lengths)
      states.append(state)
    return self._finish(x), {'position': cache['position'] + advance,
                             'layers': states}


def reset_rows(cache: Cache, rows: jax.typing.ArrayLike, empty: Cache
               ) -> Cache:
  """`cache` with the rows where `rows` (bool `[B]`) is True taken from
  `empty` (`model.init_cache(B, max_length)`): they begin a new document at
  position 0, whatever the mechanism's state holds."""
  rows = jnp.asarray(rows, bool)
  return jax.tree.map(lambda x, e: jnp.where(
      rows.reshape((-1,) + (1,) * (x.ndim - 1)), e, x), cache, empty)


class LMHead(nnx.Module):
  """Logits from hidden states: the tied embedding, or its own matrix."""

  def __init__(self, config: TransformerConfig, embed: nnx.Embed,
               rngs: nnx.Rngs):
    self.tied = config.tie_embeddings
    self.embed = embed if self.tied else None
    self.proj = None if self.tied else nnx.Linear(
        config.model_dim, config.vocab_size, use_bias=False,
        dtype=config.dtype, rngs=rngs)

  def __call__(self, x):
    logits = self.embed.attend(x) if self.tied else self.proj(x)
    return logits.astype(jnp.float32)


class DecoderLM(nnx.Module):
  """Causal language model: tokens `[B, T]` -> logits `[B, T, V]` (f32)."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.stack = Stack(config, causal=True, rngs=rngs)
    self.head = LMHead(config, self.stack.embed.tokens, rngs)

  def __call__(self, tokens: jax.typing.ArrayLike, *,
               lengths: jax.typing.ArrayLike | None = None,
               segment_ids: jax.typing.ArrayLike | None = None,
               deterministic: bool = True) -> jax.Array:
    """Logits `[B, T, V]`; `segment_ids [B, T]` packs several documents in
    a row (each sees only itself, positions restart; mechanisms that take
    no mask refuse it)."""
    return self.head(self.stack(tokens, is_causal=True, lengths=lengths,
                                segment_ids=segment_ids,
                                deterministic=deterministic))

  def init_cache(self, batch_size: int, max_length: int) -> Cache:
    return self.stack.init_cache(batch_size, max_length)

  def decode(self, cache: Cache, tokens: jax.typing.ArrayLike, *,
             num_new: jax.typing.ArrayLike | None = None
             ) -> tuple[jax.Array, Cache]:
    """Logits `[B, L, V]` of L new tokens, and the updated cache.

    Streams a long input too: call it on consecutive chunks, carrying the
    cache, and empty the rows that begin a new document with `reset_rows`.
    Infini-attention and Transformer-XL keep a fixed-size state and run
    whole segments in their parallel form when a chunk is a multiple of
    the segment, so the cost per token does not grow with the stream.
    """
    x, cache = self.stack.step(cache, tokens, num_new=num_new)
    return self.head(x), cache


class Encoder(nnx.Module):
  """Bidirectional encoder with masked-LM and classification heads."""

  def __init__(self, config: TransformerConfig, *, num_classes: int = 0,
               pooling: str = 'cls', rngs: nnx.Rngs):
    if pooling not in ('cls', 'mean'):
      raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
    self.config, self.pooling = config, pooling
    self.stack = Stack(config, rngs=rngs)
    self.mlm_dense = nnx.Linear(config.model_dim, config.model_dim,
                                dtype=config.dtype, rngs=rngs)
    self.mlm_norm = make_norm(config, rngs)
    self.mlm_head = LMHead(config, self.stack.embed.tokens, rngs)
    self.classifier = nnx.Linear(
        config.model_dim, num_classes, dtype=config.dtype,
        rngs=rngs) if num_classes else None

  def __call__(self, tokens: jax.typing.ArrayLike, *,
               lengths: jax.typing.ArrayLike | None = None,
               segment_ids: jax.typing.ArrayLike | None = None,
               deterministic: bool = True) -> jax.Array:
    """Hidden states `[B, T, D]`; padded keys (past `lengths`) are masked;
    `segment_ids [B, T]` keeps packed documents apart."""
    return self.stack(tokens, is_causal=False, lengths=lengths,
                      segment_ids=segment_ids, deterministic=deterministic)

  def mlm_logits(self, hidden: jax.Array) -> jax.Array:
    """Masked-LM logits `[B, T, V]` from hidden states."""
    return self.mlm_head(self.mlm_norm(nnx.gelu(self.mlm_dense(hidden))))

  def classify(self, hidden: jax.Array,
               lengths: jax.typing.ArrayLike | None = None) -> jax.Array:
    """Class logits `[B, num_classes]`: CLS token or mean of real tokens."""
    if self.classifier is None:
      raise ValueError('Encoder was built with num_classes=0')
    if self.pooling == 'cls':
      pooled = hidden[:, 0]
    else:
      T = hidden.shape[1]
      lengths = jnp.full(hidden.shape[:1], T) if lengths is None else lengths
      real = (jnp.arange(T)[None, :] < lengths[:, None]).astype(hidden.dtype)
      pooled = (hidden * real[:, :, None]).sum(1) / jnp.maximum(
          real.sum(1), 1)[:, None]
    return self.classifier(pooled).astype(jnp.float32)


class EncoderDecoder(nnx.Module):
  """Sequence to sequence: source `[B, S]`, target `[B, T]` -> `[B, T, V]`."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = Stack(config, rngs=rngs)
    self.decoder = Stack(config, cross_attention=True, causal=True,
                         rngs=rngs)
    self.head = LMHead(config, self.decoder.embed.tokens, rngs)

  def encode(self, source: jax.typing.ArrayLike, *,
             source_lengths: jax.typing.ArrayLike | None = None,
             deterministic: bool = True) -> jax.Array:
    return self.encoder(source, is_causal=False, lengths=source_lengths,
                        deterministic=deterministic)

  def __call__(self, source: jax.typing.ArrayLike,
               target: jax.typing.ArrayLike, *,
               source_lengths: jax.typing.ArrayLike | None = None,
               target_lengths: jax.typing.ArrayLike | None = None,
               deterministic: bool = True) -> jax.Array:
    memory = self.encode(source, source_lengths=source_lengths,
                         deterministic=deterministic)
    return self.head(self.decoder(
        target, is_causal=True, lengths=target_lengths, context=memory,
        context_lengths=source_lengths, deterministic=deterministic))

  def init_cache(self, batch_size: int, max_length: int) -> Cache:
    return self.decoder.init_cache(batch_size, max_length)

  def decode(self, cache: Cache, tokens: jax.typing.ArrayLike,
             memory: jax.Array, *,
             source_lengths: jax.typing.ArrayLike | None = None,
             num_new: jax.typing.ArrayLike | None = None
             ) -> tuple[jax.Array, Cache]:
    """Logits of L new target tokens given the encoded `memory`."""
    x, cache = self.decoder.step(cache, tokens, num_new=num_new,
                                 context=memory,
                                 context_lengths=source_lengths)
    return self.head(x), cache
