"""Type aliases of the public signatures (annotations only)."""

from typing import Any

import jax
from jax.typing import ArrayLike, DTypeLike

PrecisionLike = jax.lax.PrecisionLike
# An attention function's result: the output, or (output, log-sum-exp)
# with `return_residual=True`.
Output = jax.Array | tuple[jax.Array, jax.Array]

__all__ = ['Any', 'ArrayLike', 'DTypeLike', 'Output', 'PrecisionLike']
