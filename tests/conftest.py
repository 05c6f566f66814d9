"""Strict JAX for every test: no silent rank promotion. Faster compiles on
CPU."""

import importlib.util
import os

# On CPU this suite is bound by XLA compile time: skipping LLVM's
# optimisation passes makes it about a third faster. Results are compared
# with tolerances, or bitwise between programs compiled the same way. Kept
# off where an accelerator plugin is installed (its kernels would slow), and
# where XLA_FLAGS already sets a level.
_ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin',
                        'jax_rocm7_plugin', 'libtpu')
_FLAGS = os.environ.get('XLA_FLAGS', '')
if 'xla_backend_optimization_level' not in _FLAGS and not any(
    importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS):
  os.environ['XLA_FLAGS'] = (_FLAGS +
                             ' --xla_backend_optimization_level=0').strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

jax.config.update('jax_numpy_rank_promotion', 'raise')
