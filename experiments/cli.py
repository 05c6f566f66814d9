"""Flag parsing of the launchers: one line per problem, never a traceback.

absl reports a malformed flag in one line, but ml_collections raises a bare
`AttributeError` (a 60-line traceback, while the config flag is being
defined) for an override of a field that does not exist
(`--config.model.attentoin=...`). A launcher calls `check_overrides()`
before it defines its config flag, and passes `parse_flags` to `app.run`:
such overrides exit with code 1 and one line each, naming the path and its
nearest valid names, before anything is traced.
"""

from __future__ import annotations

import sys

from absl import flags

from efficient_attention.experiments import validation


def check_overrides(argv: list[str] | None = None) -> None:
  """Exits with one line per `--config.*` override that names no field."""
  problems = validation.override_problems(sys.argv if argv is None else argv)
  if problems:
    sys.exit('\n'.join(f'error: {p}' for p in problems))


def parse_flags(argv: list[str]) -> list[str]:
  """`flags.FLAGS(argv)`, with config-override typos as one-line errors."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    sys.exit(f'error: {error}')
  except (AttributeError, KeyError, TypeError, ValueError) as error:
    problems = validation.override_problems(argv) or [
        f'{type(error).__name__}: {" ".join(str(error).split())}']
    sys.exit('\n'.join(f'error: {p}' for p in problems))
