"""Mask objects: each against its NumPy definition, compositions, and the
tile summaries kernels will skip by (never skipping a visible pair)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention.attention import masks

T, S = 37, 45
SEGMENTS = np.array([[0] * 10 + [1] * 20 + [2] * 15,
                     [3] * 45])  # [B, S]; queries use the first T
PREFIX = np.array([5, 40])
GLOBAL = np.array([[0, 30, -1], [7, -1, -1]])


def grid(t, s):
  return np.arange(t)[:, None], np.arange(s)[None, :]


def random_table(n, size, seed, t, s):
  num_k = -(-s // size)
  return [set(np.random.default_rng((seed, i)).choice(
      num_k, min(n, num_k), replace=False)) for i in range(-(-t // size))]


def definition(name, t, s):
  """The NumPy definition of each mask: `[B?, N?, t, s]`."""
  q, k = grid(t, s)
  if name == 'causal':
    return k <= q
  if name == 'causal_bottom_right':
    return k <= q + (s - t)
  if name == 'window':
    return (k >= q - 4) & (k <= q + 2)
  if name == 'chunked':
    return q // 8 == k // 8
  if name == 'strided':
    return (q - k) % 5 == 0
  if name == 'fixed':
    return (q // 8 == k // 8) | (k % 8 >= 6)
  if name == 'global':
    listed = [0, 13, 36]
    return np.isin(q, listed) | np.isin(k, listed)
  if name == 'global_per_example':
    return np.stack([np.isin(q, row[row >= 0]) | np.isin(k, row[row >= 0])
                     for row in GLOBAL])
  if name == 'random':
    table = random_table(2, 4, 7, t, s)
    return np.array([[k_ // 4 in table[q_ // 4] for k_ in range(s)]
                     for q_ in range(t)])
  if name == 'document':
    return np.stack([row[:t, None] == row[None, :s] for row in SEGMENTS])
  if name == 'prefix_lm':
    return np.stack([(k <= q) | (k < n) for n in PREFIX])
  if name == 'key_lengths':
    return np.stack([np.broadcast_to(k < n, (t, s)) for n in PREFIX])
  if name == 'query_lengths':
    return np.stack([np.broadcast_to(q < n, (t, s)) for n in PREFIX])
  if name == 'listed_keys':
    return np.stack([np.broadcast_to(np.isin(k, row[row >= 0]), (t, s))
                     for row in GLOBAL])
  if name == 'block_window':
    return (k // 4 >= q // 4 - 1) & (k // 4 <= q // 4 + 2)
  if name == 'random_bigbird':  # outside the band and first block, causal
    table = []
    for i in range(-(-max(t, s) // 4)):
      candidates = [j for j in range(min(-(-s // 4), i + 1))
                    if abs(j - i) > 1 and j >= 1]
      table.append(set(np.random.default_rng((7, i)).choice(
          candidates, min(2, len(candidates)), replace=False)
                       if candidates else []))
    return np.array([[k_ // 4 in table[q_ // 4] for k_ in range(s)]
                     for q_ in range(t)])
  if name.startswith('not_'):
    return ~definition(name[4:], t, s)
  raise KeyError(name)


MASKS = {
    'causal': lambda: masks.causal(),
    'causal_bottom_right': lambda: masks.causal(S - T),
    'window': lambda: masks.sliding_window(4, 2),
    'chunked': lambda: masks.chunked(8),
    'strided': lambda: masks.strided(5),
    'fixed': lambda: masks.fixed(8, 2),
    'global': lambda: masks.global_tokens([36, 0, 13, 13]),
    'global_per_example': lambda: masks.global_tokens(jnp.asarray(GLOBAL)),
    'random': lambda: masks.random_blocks(2, 4, seed=7),
    'document': lambda: masks.document(jnp.asarray(SEGMENTS[:, :T]),
                                       jnp.asarray(SEGMENTS)),
    'prefix_lm': lambda: masks.prefix_lm(jnp.asarray(PREFIX)),
    'key_lengths': lambda: masks.key_lengths(jnp.asarray(PREFIX)),
    'query_lengths': lambda: masks.query_lengths(jnp.asarray(PREFIX)),
    'listed_keys': lambda: masks.listed_keys(jnp.asarray(GLOBAL)),
    'block_window': lambda: masks.block_window(4, 1, 2),
    'random_bigbird': lambda: masks.random_blocks(
        2, 4, seed=7, radius=1, skip_first=1, causal=True),
    'not_window': lambda: ~masks.sliding_window(4, 2),
    'not_listed_keys': lambda: ~masks.listed_keys(jnp.asarray(GLOBAL)),
}


@pytest.mark.parametrize('name', sorted(MASKS))
def test_each_mask_is_its_definition(name):
  np.testing.assert_array_equal(MASKS[name]().dense(T, S),
                                definition(name, T, S))


def true_tiles(dense, Cq, Ck):
  """Whether each tile holds some visible pair, and whether all are."""
  t, s = dense.shape[-2:]
  some = np.zeros(dense.shape[:-2] + (-(-t // Cq), -(-s // Ck)), bool)
  every = np.zeros_like(some)
  for i in range(some.shape[-2]):
    for j in range(some.shape[-1]):
      tile = dense[..., i * Cq:(i + 1) * Cq, j * Ck:(j + 1) * Ck]
      some[..., i, j], every[..., i, j] = tile.any((-2, -1)), tile.all((-2,
                                                                       -1))
  return some, every


def check_summary(mask, Cq, Ck, exact):
  """Never skips a visible pair, never drops the mask of a partial tile;
  with `exact`, no tile is visited or masked for nothing either."""
  dense = mask.dense(T, S)
  if mask.per_head:  # one loop serves all heads
    some_true, every_true = true_tiles(dense.any(-3), Cq, Ck)
    every_true = true_tiles(dense.all(-3), Cq, Ck)[1]
  else:
    some_true, every_true = true_tiles(dense, Cq, Ck)
  some, every = (np.asarray(x) for x in mask.bind(T, S).summary(
      masks.Grid(T, S, Cq, Ck)))
  some, every = (x if mask.per_example else x.reshape(x.shape[-2:])
                 for x in (some, every))
  assert not (some_true & ~some).any(), 'a tile with visible pairs skipped'
  assert not (every & ~every_true).any(), 'a partial tile called full'
  if exact:
    np.testing.assert_array_equal(some, some_true)
    np.testing.assert_array_equal(every, every_true)


CHUNKS = [(8, 8), (5, 7), (16, 3), (1, 1), (64, 64)]


# Unions: a tile that the union covers but neither part does is visited
# and masked elementwise (correct, not free).
UNIONS = ('fixed', 'prefix_lm')


@pytest.mark.parametrize('chunks', CHUNKS, ids=str)
@pytest.mark.parametrize('name', sorted(MASKS))
def test_tile_summaries_are_exact_for_each_mask(name, chunks):
  check_summary(MASKS[name](), *chunks, exact=name not in UNIONS)


def random_tree(rng, depth):
  """A random composition of the masks above (and per-head masks)."""
  if depth == 0 or rng.random() < 0.3:
    return MASKS[sorted(MASKS)[rng.integers(len(MASKS))]]()
  kind = rng.integers(3)
  a, b = random_tree(rng, depth - 1), random_tree(rng, depth - 1)
  return a & b if kind == 0 else a | b if kind == 1 else masks.per_head(a, b)


def flat(mask, dense):
  """`mask.dense(...)`, `[B?, N?, T, S]`, as `[B|1, N|1, T, S]`."""
  if not mask.per_head:
    dense = dense[..., None, :, :]
  return dense if mask.per_example else dense[None]


@pytest.mark.parametrize('seed', range(12))
def test_random_compositions_are_their_parts_combined(seed):
  rng = np.random.default_rng(seed)
  a, b = random_tree(rng, 2), random_tree(rng, 2)
  both, either = a & b, a | b
  num_heads = int(np.lcm(a.count, b.count))
  dense = lambda m: flat(m, m.dense(T, S, num_heads=num_heads))
  for combined, expected in ((both, dense(a) & dense(b)),
                             (either, dense(a) | dense(b))):
    got = dense(combined)
    np.testing.assert_array_equal(got, np.broadcast_to(expected, got.shape))
    for chunks in ((8, 8), (5, 7)):
      check_summary(combined, *chunks, exact=False)


def test_per_head_masks_give_each_head_its_pattern():
  local, stride = masks.causal() & masks.sliding_window(3), (
      masks.causal() & masks.strided(4))
  dense = masks.per_head(local, stride).dense(T, S, num_heads=4)
  assert dense.shape == (4, T, S)
  for h, pattern in enumerate([local, stride] * 2):
    np.testing.assert_array_equal(dense[h], pattern.dense(T, S))


def test_layout_and_its_picture():
  assert masks.render(masks.causal().layout(8, 8, 4)) == '+.\n#+'
  window = masks.causal() & masks.sliding_window(3)
  assert masks.render(window.layout(16, 16, 4)) == (
      '+...\n++..\n.++.\n..++')
  documents = masks.document(jnp.array([[0, 0, 0, 0, 1, 1, 1, 1]]))
  assert documents.layout(8, 8, 4).tolist() == [[[2, 0], [0, 2]]]


def test_sparse_masks_visit_a_share_of_the_tiles():
  """What the kernels will be measured by: tiles visited of all tiles."""
  n, c = 16384, 128  # 128 x 128 tiles
  visited = lambda m: int((m.layout(n, n, c) > 0).sum())
  assert visited(masks.causal()) == 128 * 129 // 2
  # A 512-token window: the diagonal tile and the 4 before it, per row.
  assert visited(masks.causal() & masks.sliding_window(511)) == 128 * 5 - 10
  ids = jnp.repeat(jnp.arange(8), n // 8)[None]  # 8 documents of 16 tiles
  assert visited(masks.causal() & masks.document(ids)) == 8 * 16 * 17 // 2


def test_summaries_with_a_traced_query_offset_match_static_ones():
  mask = masks.causal() & masks.sliding_window(6) | masks.strided(5)
  static = mask.summary(masks.Grid(T, S, 4, 8, q_offset=3))
  traced = jax.jit(lambda o: mask.summary(masks.Grid(T, S, 4, 8, o)))(3)
  for a, b in zip(static, traced):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('make,message', [
    (lambda: masks.sliding_window(-1), 'sliding_window left must be an int'),
    (lambda: masks.chunked(0), 'chunked size must be a positive int'),
    (lambda: masks.strided(2.5), 'strided stride must be a positive int'),
    (lambda: masks.fixed(4, 5), 'fixed summary=5 must be at most block=4'),
    (lambda: masks.global_tokens([-1, 3]), 'positions must be >= 0'),
    (lambda: masks.document(jnp.zeros((4,), jnp.int32)),
     r'segment_ids must be an int array \[B, L\]'),
    (lambda: masks.prefix_lm(jnp.zeros((2, 2), jnp.int32)),
     r'prefix_length must be an int array \[B\]'),
    (lambda: masks.random_blocks(2, 4)(0, 0, 0, 0), 'bind the mask first'),
    (lambda: masks.per_head(), 'at least one mask'),
])
def test_bad_arguments_raise_value_error_by_name(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_masks_combine_only_with_masks():
  with pytest.raises(TypeError, match='masks combine with masks'):
    masks.causal() & np.ones((3, 3), bool)
