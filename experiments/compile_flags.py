"""XLA flags that make CPU compiles fast, for runs bound by compile time.

The test suite and the notebooks' smoke mode compile thousands of small
programs and run each for milliseconds, so on CPU they set

  --xla_backend_optimization_level=0   skip LLVM's optimisation passes
  --xla_cpu_use_fusion_emitters=false  XLA's older loop emitters for fusions

The second halves the compile time of a blockwise or linear attention
gradient at test sizes on jax 0.10.2 (6 programs each: 2.7 -> 1.6 s and
3.9 -> 1.9 s, 60 eager operations 4.0 -> 2.8 s), and the default `make
test` went from 346 s to 199 s (745 tests, the 2-core VM). Compiled code runs
slower, so training and benchmarks never set them. Nothing here imports JAX:
`environ()` must run before it does.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Mapping

FLAGS = ('--xla_backend_optimization_level=0',
         '--xla_cpu_use_fusion_emitters=false')

# With one of these installed JAX would run on an accelerator, whose compiler
# the flags do not speed up and whose kernels -O0 would slow.
ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin',
                       'jax_rocm7_plugin', 'libtpu')


def environ(base: Mapping[str, str] | None = None) -> dict[str, str]:
  """`base` (default `os.environ`) with FLAGS added to XLA_FLAGS, unless an
  accelerator plugin is installed or XLA_FLAGS already sets either flag."""
  env = dict(os.environ if base is None else base)
  flags = env.get('XLA_FLAGS', '')
  if any(importlib.util.find_spec(p) for p in ACCELERATOR_PLUGINS):
    return env
  if any(f.split('=')[0] in flags for f in FLAGS):
    return env
  env['XLA_FLAGS'] = ' '.join([flags, *FLAGS]).strip()
  return env
