"""Float64 NumPy attention with hand-derived gradients: the test oracle.

Written independently of `attention/` (its own masks, -inf and explicit
zeroing of empty rows) so that a shared bug cannot hide in both.
"""

import numpy as np


def allowed_mask(B, N, T, S, *, is_causal=False, window=None, q_len=None,
                 kv_len=None, mask=None):
  """bool [B, N, T, S]: which keys each query may see."""
  t = np.arange(T)[:, None]
  s = np.arange(S)[None, :]
  allowed = np.ones((B, N, T, S), bool)
  if is_causal:
    allowed &= s <= t
  if window is not None:
    left, right = (window, window) if isinstance(window, int) else window
    allowed &= (s >= t - left) & (s <= t + right)
  if kv_len is not None:
    allowed &= s < np.asarray(kv_len)[:, None, None, None]
  if q_len is not None:
    allowed &= t < np.asarray(q_len)[:, None, None, None]
  if mask is not None:
    allowed &= np.broadcast_to(np.asarray(mask, bool).reshape(
        (1,) * (4 - np.ndim(mask)) + np.shape(mask)), allowed.shape)
  return allowed


def _reduce_to(x, shape):
  axes = tuple(a for a, n in enumerate(shape) if n == 1 and x.shape[a] != 1)
  return x.sum(axis=axes, keepdims=True) if axes else x


def attention(query, key, value, bias=None, mask=None, *, d_out=None,
              scale=None, is_causal=False, window=None, q_len=None,
              kv_len=None, alibi_slopes=None, soft_cap=None):
  """Returns (out [B, T, N, H], grads dict or None) in float64.

  grads holds query, key, value (and bias) gradients of sum(out * d_out).
  """
  q, k, v = (np.asarray(x, np.float64) for x in (query, key, value))
  B, T, N, H = q.shape
  S, K = k.shape[1], k.shape[2]
  G = N // K
  scale = 1 / np.sqrt(H) if scale is None else scale
  allowed = allowed_mask(B, N, T, S, is_causal=is_causal, window=window,
                         q_len=q_len, kv_len=kv_len, mask=mask)
  kh, vh = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
  logits = scale * np.einsum('btnh,bsnh->bnts', q, kh)
  cap_slope = 1.0
  if soft_cap is not None:
    tanh = np.tanh(logits / soft_cap)
    logits = soft_cap * tanh
    cap_slope = 1.0 - tanh ** 2
  if alibi_slopes is not None:
    distance = np.abs(np.arange(T)[:, None] - np.arange(S)[None, :])
    logits = logits - np.asarray(alibi_slopes, np.float64)[:, None, None] * (
        distance[None])
  if bias is not None:
    b = np.asarray(bias, np.float64)
    logits = logits + b.reshape((1,) * (4 - b.ndim) + b.shape)
  logits = np.where(allowed, logits, -np.inf)
  any_seen = allowed.any(-1, keepdims=True)
  m = np.where(any_seen, logits.max(-1, keepdims=True), 0.0)
  p = np.where(allowed, np.exp(logits - m), 0.0)
  denom = p.sum(-1, keepdims=True)
  p = np.where(any_seen, p / np.where(any_seen, denom, 1.0), 0.0)
  out = np.einsum('bnts,bsnh->btnh', p, vh)
  if d_out is None:
    return out, None
  do = np.asarray(d_out, np.float64)
  dp = np.einsum('btnh,bsnh->bnts', do, vh)
  ds = p * (dp - (dp * p).sum(-1, keepdims=True))  # d / d logits
  dbias = ds
  ds = ds * cap_slope  # d / d scaled q.k
  grads = {
      'query': scale * np.einsum('bnts,bsnh->btnh', ds, kh),
      'key': (scale * np.einsum('bnts,btnh->bsnh', ds, q)).reshape(
          B, S, K, G, H).sum(3),
      'value': np.einsum('bnts,btnh->bsnh', p, do).reshape(
          B, S, K, G, H).sum(3),
  }
  if bias is not None:
    shape = np.shape(bias)
    grads['bias'] = _reduce_to(dbias, (1,) * (4 - len(shape)) + shape).reshape(
        shape)
  return out, grads
