"""Strict JAX for every test: no silent rank promotion. Faster compiles on
CPU."""

import os

from efficient_attention.experiments import compile_flags

# On CPU this suite is bound by XLA compile time: experiments/compile_flags.py
# sets flags that make compiles about twice as fast (not with an accelerator
# plugin, nor when XLA_FLAGS already sets them). Results are compared with
# tolerances, or bitwise between programs compiled the same way; the
# training subprocesses some tests start inherit them.
os.environ.update(compile_flags.environ())

# One persistent XLA compilation cache per `make test` session, shared by
# the xdist workers and the training subprocesses some tests start (they
# inherit the environment): identical programs (the same kernel at the same
# shapes behind different wrappers, the same train step in each subprocess)
# compile once. The controller sets it before the workers start; set
# JAX_COMPILATION_CACHE_DIR yourself to keep one across sessions.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import tempfile  # pylint: disable=g-import-not-at-top
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='efficient-attention-xla-cache-')
  os.environ['EFFICIENT_ATTENTION_OWN_CACHE'] = '1'
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_rank_promotion', 'raise')


def pytest_sessionfinish(session):
  """The controller removes the cache it made (workers leave it)."""
  del session
  if (os.environ.get('EFFICIENT_ATTENTION_OWN_CACHE') and
      'PYTEST_XDIST_WORKER' not in os.environ):
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
