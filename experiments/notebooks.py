r"""The notebooks: `.ipynb` built from their paired text files, and run.

Each notebook is written as `notebooks/<name>.py` in the jupytext "percent"
format (`# %%` starts a code cell, `# %% [markdown]` a Markdown cell whose
lines start with `# `), which reviews and diffs as code; `<name>.ipynb`
beside it is generated from it, with no outputs, for Colab and Jupyter
(jupytext opens the `.py` as a notebook too). The generator puts
`INSTALL_CELL` (one copy for every notebook) after the first Markdown cell:
it must run before the package exists, so it cannot be imported. Inside a
notebook, `runtime()` and `save()` below are what each notebook shares.

  python -m efficient_attention.experiments.notebooks           # write .ipynb
  python -m efficient_attention.experiments.notebooks --check   # exit 1 if stale
  python -m efficient_attention.experiments.notebooks --run     # smoke-run all

`--run` executes every notebook top to bottom as a script, in its own
process and a scratch directory, with `NOTEBOOK_SMOKE=1` (each notebook
then sizes its work for CI: seconds on a 2-core CPU), and reports each
one's time; `make notebooks` does `--check --run`, and CI runs it.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from efficient_attention.experiments import compile_flags

NOTEBOOKS = pathlib.Path(__file__).resolve().parent.parent / 'notebooks'

INSTALL_CELL = """\
# Install from the repository when the package is not there (Colab).
import importlib.util
import os
import subprocess
import sys

# In Colab: set this to the repository's git URL (or a local path).
REPOSITORY = os.environ.get('EFFICIENT_ATTENTION_REPOSITORY', '')
if importlib.util.find_spec('efficient_attention') is None:
  if not REPOSITORY:
    raise RuntimeError(
        'efficient_attention is not installed: set '
        'EFFICIENT_ATTENTION_REPOSITORY to the repository (a git URL or a '
        'path) or pip install it first')
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet',
                  f'efficient-attention[train] @ git+{REPOSITORY}'
                  if '://' in REPOSITORY else f'{REPOSITORY}[train]'],
                 check=True)"""
_CELL = re.compile(r'^# %%(?: \[(markdown)\])?[ \t]*$', re.M)


def cells(text: str) -> list[tuple[str, str]]:
  """`(cell_type, source)` of each cell of a percent-format script."""
  parts = _CELL.split(text)
  if parts[0].strip():
    raise ValueError('text before the first "# %%" line belongs to no cell')
  result = []
  for kind, body in zip(parts[1::2], parts[2::2]):
    body = body.strip('\n')
    if kind == 'markdown':
      lines = body.split('\n')
      bad = [line for line in lines if line and not line.startswith('#')]
      if bad:
        raise ValueError(f'a Markdown cell line must start with "#": '
                         f'{bad[0]!r}')
      body = '\n'.join(re.sub(r'^# ?', '', line) for line in lines)
      result.append(('markdown', body))
    else:
      result.append(('code', body))
  return result


def runtime() -> tuple[bool, str]:
  """`(smoke, backend)` for a notebook, printing what it found: smoke is
  `NOTEBOOK_SMOKE=1` (CI's small sizes), backend 'tpu', 'gpu' or 'cpu'."""
  import jax  # pylint: disable=g-import-not-at-top
  smoke = os.environ.get('NOTEBOOK_SMOKE') == '1'
  backend = jax.default_backend()
  print(f'runtime: {backend}, {jax.device_count()} x '
        f'{jax.devices()[0].device_kind}{" (smoke mode)" if smoke else ""}')
  return smoke, backend


def save(figure, filename: str):
  """Keeps a notebook's picture in `NOTEBOOK_OUTPUT` (a smoke run's scratch
  directory) when it is set, then shows it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  if 'NOTEBOOK_OUTPUT' in os.environ:
    figure.savefig(os.path.join(os.environ['NOTEBOOK_OUTPUT'], filename))
  plt.show()


def notebook_cells(text: str) -> list[tuple[str, str]]:
  """The cells of a script's notebook: its own, with `INSTALL_CELL` after
  the first Markdown cell (the title)."""
  script_cells = cells(text)
  at = 1 if script_cells and script_cells[0][0] == 'markdown' else 0
  return script_cells[:at] + [('code', INSTALL_CELL)] + script_cells[at:]


def to_ipynb(text: str) -> dict[str, Any]:
  """An nbformat 4.4 notebook without outputs from a percent script."""
  notebook_cells_ = []
  for kind, source in notebook_cells(text):
    lines = source.split('\n')
    cell = {'cell_type': kind, 'metadata': {},
            'source': [line + '\n' for line in lines[:-1]] + [lines[-1]]}
    if kind == 'code':
      cell.update(execution_count=None, outputs=[])
    notebook_cells_.append(cell)
  return {
      'cells': notebook_cells_,
      'metadata': {
          'kernelspec': {'display_name': 'Python 3', 'language': 'python',
                         'name': 'python3'},
          'language_info': {'name': 'python'},
      },
      'nbformat': 4,
      'nbformat_minor': 4,
  }


def ipynb_text(script: pathlib.Path) -> str:
  return json.dumps(to_ipynb(script.read_text()), indent=1,
                    ensure_ascii=False) + '\n'


def scripts() -> list[pathlib.Path]:
  return sorted(NOTEBOOKS.glob('*.py'))


def stale() -> list[str]:
  """Notebooks whose `.ipynb` differs from what their script gives."""
  return [str(s.with_suffix('.ipynb')) for s in scripts()
          if not s.with_suffix('.ipynb').exists() or
          s.with_suffix('.ipynb').read_text() != ipynb_text(s)]


def run(script: pathlib.Path) -> float:
  """Runs one notebook's cells (the install cell too), top to bottom, as
  one script in smoke mode; its time in seconds."""
  with tempfile.TemporaryDirectory(prefix='notebook-') as scratch:
    code = '\n\n'.join(source for kind, source in
                       notebook_cells(script.read_text()) if kind == 'code')
    whole = pathlib.Path(scratch) / script.name
    whole.write_text(code + '\n')
    # Smoke mode is bound by compile time: compile_flags halves it on CPU.
    env = dict(compile_flags.environ(), NOTEBOOK_SMOKE='1',
               NOTEBOOK_OUTPUT=scratch, MPLBACKEND='Agg')
    start = time.perf_counter()
    subprocess.run([sys.executable, str(whole)], cwd=scratch, env=env,
                   check=True)
    return time.perf_counter() - start


def main(argv: Sequence[str]) -> int:
  flags = set(argv[1:])
  unknown = flags - {'--check', '--run'}
  if unknown:
    print(f'unknown flags {sorted(unknown)}; use --check and/or --run')
    return 2
  if '--check' in flags:
    if stale():
      print('stale (rerun python -m efficient_attention.experiments.'
            f'notebooks): {", ".join(stale())}')
      return 1
  elif '--run' not in flags:
    for script in scripts():
      script.with_suffix('.ipynb').write_text(ipynb_text(script))
      print(f'wrote {script.with_suffix(".ipynb")}')
  if '--run' in flags:
    total = 0.0
    for script in scripts():
      print(f'== {script.name} (smoke mode)', flush=True)
      seconds = run(script)
      total += seconds
      print(f'== {script.name}: {seconds:.1f} s', flush=True)
    print(f'all notebooks: {total:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
