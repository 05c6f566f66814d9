r"""Pictures of attention masks and the tiles a kernel visits, for the docs.

For each example mask, a PNG with the mask itself (`mask.dense(T, T)`:
query rows, key columns, dark where visible) beside its block layout at
`--chunk` x `--chunk` tiles (`mask.layout`: white skipped, grey partly
visible and masked elementwise, black fully visible, no mask), and the
same layout as text.

  python -m efficient_attention.experiments.mask_pictures --output_dir=docs/images
"""

from __future__ import annotations

import os

from absl import app
from absl import flags
import jax.numpy as jnp
import numpy as np

from efficient_attention.attention import masks

_OUTPUT = flags.DEFINE_string('output_dir', 'docs/images', 'Where to write.')
_LENGTH = flags.DEFINE_integer('length', 64, 'T = S of the pictures.')
_CHUNK = flags.DEFINE_integer('chunk', 8, 'Tile size of the layouts.')


def examples(n: int) -> dict[str, masks.Mask]:
  """The masks the docs show, at length n."""
  ends = [round(n * f) for f in (0.15, 0.5, 0.8)] + [n]  # 4 documents
  documents = jnp.asarray(np.repeat(np.arange(4), np.diff([0] + ends)))[None]
  return {
      'causal': masks.causal(),
      'sliding_window': masks.causal() & masks.sliding_window(11),
      'chunked': masks.chunked(16),
      'strided_heads': masks.causal() & masks.per_head(
          masks.sliding_window(7), masks.strided(8)),
      'fixed': masks.causal() & masks.fixed(16, 2),
      'longformer': (masks.sliding_window(6, 6) |
                     masks.global_tokens([0, n // 2 + 1])),
      'bigbird': (masks.sliding_window(8, 8) | masks.global_tokens([0, 1]) |
                  masks.random_blocks(2, 8, seed=0)),
      'documents': masks.causal() & masks.document(documents),
      'prefix_lm': masks.prefix_lm(3 * n // 8),
  }


def picture(name: str, mask: masks.Mask, n: int, chunk: int, path: str):
  """Writes the mask and its block layout side by side to `path`."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top
  dense = mask.dense(n, n)
  layout = mask.layout(n, n, chunk)
  if mask.per_example:
    dense, layout = dense[0], layout[0]
  heads = dense if mask.per_head else dense[None]
  figure, axes = pyplot.subplots(1, len(heads) + 1,
                                 figsize=(2.6 * (len(heads) + 1), 2.8))
  for h, (axis, head) in enumerate(zip(axes, heads)):
    axis.imshow(~head, cmap='gray', interpolation='nearest')
    axis.set_title(f'{name}' + (f', head {h}' if mask.per_head else ''),
                   fontsize=8)
  axes[-1].imshow(2 - layout, cmap='gray', vmin=0, vmax=2,
                  interpolation='nearest')
  axes[-1].set_title(f'tiles of {chunk} (kernel visits)', fontsize=8)
  for axis in axes:
    axis.set_xticks([])
    axis.set_yticks([])
  figure.tight_layout()
  figure.savefig(path, dpi=90)
  pyplot.close(figure)


def main(argv):
  del argv
  os.makedirs(_OUTPUT.value, exist_ok=True)
  n, chunk = _LENGTH.value, _CHUNK.value
  for name, mask in examples(n).items():
    path = os.path.join(_OUTPUT.value, f'mask_{name}.png')
    picture(name, mask, n, chunk, path)
    layout = mask.layout(n, n, chunk)
    visited = (layout > 0).mean()
    print(f'{name}: {path}, tiles visited {visited:.0%}')
    print(masks.render(layout))


if __name__ == '__main__':
  app.run(main)
