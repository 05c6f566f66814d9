"""Attention test cases shared by the exact-attention tests."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from efficient_attention.attention import positional
from tests.attention import oracle


@dataclasses.dataclass(frozen=True)
class Case:
  """One attention problem; the arrays come from `inputs(case, dtype)`."""

  name: str
  B: int = 2
  T: int = 37
  S: int = 37
  N: int = 4
  K: int = 2
  H: int = 16
  is_causal: bool = False
  window: tuple | None = None
  q_len: tuple | None = None
  kv_len: tuple | None = None
  bias: tuple | None = None  # shape
  mask: tuple | None = None  # shape
  scale: float | None = None
  alibi: bool = False
  soft_cap: float | None = None

  def __str__(self):
    return self.name


CASES = [
    Case('mha', K=4),
    Case('causal_gqa', is_causal=True),
    Case('mqa_cross', K=1, T=24, S=53),
    Case('causal_cross', T=40, S=29, is_causal=True, K=1),
    Case('window', window=(5, 3)),
    Case('causal_window', is_causal=True, window=(6, 0), scale=0.3),
    Case('lengths', is_causal=True, q_len=(37, 20), kv_len=(30, 11)),
    Case('bias_mask', bias=(2, 4, 37, 37), mask=(2, 1, 37, 37)),
    Case('broadcast_bias', bias=(1, 1, 37, 37), mask=(1, 1, 1, 37),
         is_causal=True),
    Case('key_bias_all', T=30, S=45, bias=(2, 1, 1, 45), window=(4, 9),
         kv_len=(40, 45), q_len=(30, 25), mask=(2, 4, 30, 45)),
]
# Options beyond jax.nn.dot_product_attention's.
EXTRA_CASES = [
    Case('alibi_causal_gqa', is_causal=True, alibi=True),
    Case('soft_cap_bias', soft_cap=2.0, scale=1.0, bias=(2, 4, 37, 37)),
    Case('alibi_soft_cap_cross', T=24, S=53, K=1, alibi=True, soft_cap=5.0,
         kv_len=(50, 20), window=(30, 2)),
]


def inputs(case: Case, dtype, seed=0):
  """Random inputs of `case` in `dtype` (masks bool, lengths int32)."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), dtype)
  x = {
      'query': normal(case.B, case.T, case.N, case.H),
      'key': normal(case.B, case.S, case.K, case.H),
      'value': normal(case.B, case.S, case.K, case.H),
      'd_out': normal(case.B, case.T, case.N, case.H),
      'bias': None if case.bias is None else normal(*case.bias),
      'mask': None if case.mask is None else jnp.asarray(
          rng.random(case.mask) < 0.8),
  }
  x['q_len'] = None if case.q_len is None else jnp.asarray(case.q_len,
                                                           jnp.int32)
  x['kv_len'] = None if case.kv_len is None else jnp.asarray(case.kv_len,
                                                             jnp.int32)
  return x


def kwargs(case: Case, x):
  """Keyword arguments of the `attention` functions for `case`."""
  extra = {}
  if case.alibi:
    extra['alibi_slopes'] = positional.alibi_slopes(case.N)
  if case.soft_cap is not None:
    extra['logits_soft_cap'] = case.soft_cap
  return dict(bias=x['bias'], mask=x['mask'], scale=case.scale,
              is_causal=case.is_causal, local_window_size=case.window,
              query_seq_lengths=x['q_len'], key_value_seq_lengths=x['kv_len'],
              **extra)


def expected(case: Case, x):
  """The float64 oracle's output and gradients for `case` inputs `x`."""
  return oracle.attention(
      x['query'], x['key'], x['value'],
      None if x['bias'] is None else np.asarray(x['bias'], np.float64),
      x['mask'], d_out=x['d_out'], scale=case.scale,
      is_causal=case.is_causal, window=case.window, q_len=case.q_len,
      kv_len=case.kv_len, soft_cap=case.soft_cap,
      alibi_slopes=positional.alibi_slopes(case.N) if case.alibi else None)


def seen_rows(case: Case, x):
  """bool [B, T, N, 1]: query rows that see at least one key."""
  allowed = oracle.allowed_mask(
      case.B, case.N, case.T, case.S, is_causal=case.is_causal,
      window=case.window, q_len=case.q_len, kv_len=case.kv_len, mask=x['mask'])
  return allowed.any(-1).transpose(0, 2, 1)[..., None]


def output_and_grads(fn, case: Case, x, jit=True):
  """fn's output and its gradients of sum(out * d_out) as float64 NumPy."""
  names = ['query', 'key', 'value'] + (['bias'] if x['bias'] is not None
                                       else [])

  def loss(diff):
    args = {**kwargs(case, x), **diff}
    out = fn(args.pop('query'), args.pop('key'), args.pop('value'), **args)
    d_out = x['d_out'].astype(jnp.float32)
    return jnp.sum(out.astype(jnp.float32) * d_out), out

  grad_fn = jax.grad(loss, has_aux=True)
  if jit:
    grad_fn = jax.jit(grad_fn)
  grads, out = grad_fn({n: x[n] for n in names})
  assert out.dtype == x['query'].dtype, out.dtype
  for n in names:
    assert grads[n].dtype == x[n].dtype, (n, grads[n].dtype)
  as64 = lambda a: np.asarray(a.astype(jnp.float32), np.float64)
  return as64(out), {n: as64(g) for n, g in grads.items()}


def tolerance(dtype):
  return 2e-5 if dtype == jnp.float32 else 4e-2


def assert_close(actual, desired, dtype, what=''):
  """Elementwise close, atol relative to the largest expected magnitude."""
  tol = tolerance(dtype)
  atol = tol * max(1.0, float(np.abs(desired).max()))
  np.testing.assert_allclose(actual, desired, rtol=tol, atol=atol,
                             err_msg=what)


def check_against_oracle(fn, case: Case, dtype, jit=True):
  """Asserts fn's output and gradients match the float64 oracle."""
  x = inputs(case, dtype)
  out, grads = output_and_grads(fn, case, x, jit=jit)
  want_out, want_grads = expected(case, x)
  assert np.all(np.isfinite(out))
  assert_close(out, want_out, dtype, 'output')
  # Rows that see no key are exactly zero.
  np.testing.assert_array_equal(
      np.where(seen_rows(case, x), 0.0, out), 0.0)
  for name, grad in grads.items():
    assert np.all(np.isfinite(grad)), name
    assert_close(grad, want_grads[name], dtype, f'gradient of {name}')


def covering(firsts, seconds, id_of=str):
  """`pytest.param(a, b)` over the cross product of two axes: the default
  suite runs max(len) pairs that cover every value of both (the i-th first
  with the (i mod len)-th second), `make test-slow` the rest. Each pair is
  a compiled program, so this is where a conformance matrix costs time.
  """
  params = []
  for i, a in enumerate(firsts):
    for j, b in enumerate(seconds):
      default = j == i % len(seconds) or i == j % len(firsts)
      params.append(pytest.param(a, b, id=f'{id_of(a)}-{id_of(b)}',
                                 marks=() if default else pytest.mark.slow))
  return params


# The sparse patterns share one argument path (`attention.sparse.patterned`
# over the blockwise kernel): checks of shared arguments run for Longformer
# by default and for the others in `make test-slow`; each one's outputs,
# gradients and decoding run by default in its own tests and test_registry.
REPRESENTED_BY = {'bigbird': 'longformer', 'sparse_transformer': 'longformer'}


def by_family(names):
  """`names` as pytest params, those another represents marked slow."""
  return [pytest.param(n, marks=pytest.mark.slow) if n in REPRESENTED_BY
          else n for n in names]
