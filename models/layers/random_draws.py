"""Layers of randomised mechanisms: a random draw kept as layer state.

The Performer's feature projection `[F, H]` and LSH's hashing key are drawn
once from the layer's `params` stream and kept as a `RandomProjection`
variable: not an `nnx.Param`, so optimizers leave it alone, but saved with
the model state. `redraw(rng)` (or `redraw_projections(model, rng)` for a
whole model) draws a new one, as the Performer paper does during training
and the Reformer does at every step.
"""

from __future__ import annotations

from flax import nnx
import jax

from efficient_attention.attention.hashing import lsh
from efficient_attention.attention.kernelized import performer
from efficient_attention.models.layers.base import MultiHeadAttention
from efficient_attention.models.layers.registry import register_layer


class RandomProjection(nnx.Variable):
  """A random draw (a projection `[F, H]`, a key): state, not trained."""


class RandomDrawAttention(MultiHeadAttention):
  """A layer whose kernel takes a random draw as argument `draw_argument`."""

  draw_argument = ''

  def __init__(self, *args, rngs: nnx.Rngs, **kwargs):
    super().__init__(*args, rngs=rngs, **kwargs)
    self.projection = RandomProjection(self.draw(rngs.params()))

  def draw(self, rng):
    """A new draw for this layer's kernel."""
    raise NotImplementedError

  def redraw(self, rng):
    """Replaces the draw with a new one from `rng`."""
    self.projection[...] = self.draw(rng)

  def _kernel_arguments(self):
    return {**super()._kernel_arguments(),
            self.draw_argument: self.projection[...]}


class PerformerAttention(RandomDrawAttention):
  """FAVOR+ (`attention.performer_attention`) with its projection as state."""

  draw_argument = 'projection'

  def draw(self, rng):
    return performer.draw_projection(rng, self.options.num_features,
                                     self.head_dim,
                                     orthogonal=self.options.orthogonal)


class LSHAttention(RandomDrawAttention):
  """Reformer LSH attention with its hashing key as state."""

  draw_argument = 'rng'

  def draw(self, rng):
    return lsh.draw_key(rng)


register_layer('performer', PerformerAttention)
register_layer('lsh', LSHAttention)


def redraw_projections(model: nnx.Module, rng: jax.Array) -> None:
  """Redraws the random draw of every randomised layer in `model`.

  Layer i (in graph order) draws from `fold_in(rng, i)`.
  """
  layers = [m for _, m in nnx.iter_modules(model)
            if isinstance(m, RandomDrawAttention)]
  for i, layer in enumerate(layers):
    layer.redraw(jax.random.fold_in(rng, i))
