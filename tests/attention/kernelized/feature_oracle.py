"""Float64 NumPy oracles for feature-map attention (linear, Performer).

The quadratic form: a_ts = phi(q_t) . phi(k_s) c_s over the visible keys,
out_t = sum_s a_ts v_s / (sum_s a_ts + eps); no prefix sums, no chunks.
"""

import numpy as np


def elu_plus_one(x):
  return np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0.0)))


def performer_features(kernel, projection, x, scale):
  """Features `[..., F']` and log key weights `[...]` (zeros for relu)."""
  x = np.asarray(x, np.float64) * np.sqrt(scale)
  u = x @ np.asarray(projection, np.float64).T
  half_norm = 0.5 * np.sum(x * x, axis=-1)
  if kernel == 'relu':
    return np.maximum(u, 0.0), np.zeros(u.shape[:-1])
  if kernel == 'trig':
    return np.concatenate([np.sin(u), np.cos(u)], -1), half_norm
  return np.exp(u), -half_norm


def attention(phi_q, phi_k, value, *, log_weight=None, is_causal=False,
              kv_len=None, q_len=None, eps=0.0):
  """`phi_q [B, T, N, F]`, `phi_k [B, S, K, F]`, `value [B, S, K, H]`."""
  phi_q, phi_k, value = (np.asarray(x, np.float64)
                         for x in (phi_q, phi_k, value))
  B, T, N, _ = phi_q.shape
  S, K = phi_k.shape[1], phi_k.shape[2]
  G = N // K
  phi_k = np.repeat(phi_k, G, axis=2)
  value = np.repeat(value, G, axis=2)
  a = np.einsum('btnf,bsnf->bnts', phi_q, phi_k)
  if log_weight is not None:
    w = np.repeat(np.asarray(log_weight, np.float64), G, axis=2)
    a = a * np.exp(w - w.max(axis=1, keepdims=True)).transpose(
        0, 2, 1)[:, :, None, :]
  visible = np.ones((B, 1, T, S), bool)
  if is_causal:
    visible &= np.tril(np.ones((T, S), bool))
  if kv_len is not None:
    visible &= np.arange(S)[None, None, None, :] < np.asarray(
        kv_len)[:, None, None, None]
  a = np.where(visible, a, 0.0)
  num = np.einsum('bnts,bsnh->btnh', a, value)
  den = a.sum(-1).transpose(0, 2, 1)[..., None] + eps
  out = np.where(den == 0, 0.0, num / np.where(den == 0, 1.0, den))
  if q_len is not None:
    out = np.where(np.arange(T)[None, :, None, None] <
                   np.asarray(q_len)[:, None, None, None], out, 0.0)
  return out
