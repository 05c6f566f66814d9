r"""Documentation pages generated from the code, so they cannot drift from it.

`docs/options.md` lists every registered mechanism's typed options (field,
type, default, the comment written beside the field in its options class,
and the values a choice allows), what the mechanism refuses and whether it
decodes. The family pages, `docs/families/<family>.md`, are written by hand
but for the blocks between `<!-- generated: NAME -->` and `<!-- end
generated -->`, which this fills: `options` (the tables of options.md for
the family's mechanisms), `tests` (the test functions of
`tests/attention/<family>/` and the conformance tests every mechanism runs)
and `benchmarks` (the rows of docs/benchmarks.md's tables that name one of
the family's mechanisms, with `jax.nn`'s beside them). A mechanism's family
is the `attention/` subpackage its function lives in. A test fails when a
committed page differs from what this writes.

  python -m efficient_attention.experiments.docs_pages            # write
  python -m efficient_attention.experiments.docs_pages --check    # exit 1 if stale
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import pathlib
import re
import sys
from typing import Sequence

from efficient_attention import attention
from efficient_attention.attention import options as options_lib

DOCS = pathlib.Path(__file__).resolve().parent.parent / 'docs'

_HEADER = """\
# Options of every mechanism

Generated from the typed option classes by
`python -m efficient_attention.experiments.docs_pages` (a test fails when
this page and the code disagree). Pass options as keywords
(`attention.get('xl')(q, k, v, memory_length=64)`), whole
(`options=XLOptions(memory_length=64)`), or in a model or experiment config
(`attention_options`); a misspelt name raises `ValueError` with its near
matches on every path ([usage.md](usage.md)).
"""


def _choices(options_type, doc: str) -> str:
  """The values behind a name in capitals the comment refers to (`one of
  KERNELS`), read from the options class's module."""
  module = sys.modules[options_type.__module__]
  for name in re.findall(r'\b[A-Z][A-Z_]{2,}\b', doc):
    values = getattr(module, name, None)
    if isinstance(values, (tuple, list, dict, frozenset, set)):
      listed = ', '.join(f'`{v}`' for v in sorted(values))
      doc = doc.replace(name, listed)
  return doc


def _default(field: dataclasses.Field) -> str:
  if field.default is not dataclasses.MISSING:
    return f'`{field.default!r}`'
  return 'required'


def _mechanism_section(name: str) -> list[str]:
  """The options.md section of one mechanism, as lines."""
  lines = []
  mechanism = attention.get(name)
  options_type = mechanism.options
  fn = mechanism.fn
  lines.append(f'## `{name}`: `attention.{fn.__name__}`\n')
  summary = inspect.getdoc(fn).split('\n\n')[0].replace('\n', ' ')
  lines.append(f'{summary}\n')
  facts = [f'options class `{options_type.__name__}`',
           'exact' if mechanism.exact else 'approximate',
           'decodes through `init_state`/`step`' if mechanism.init_state
           else 'does not decode']
  if mechanism.refuses:
    facts.append('refuses ' + ', '.join(f'`{r}`' for r in
                                        mechanism.refuses))
  lines.append('- ' + '\n- '.join(facts) + '\n')
  fields = dataclasses.fields(options_type)
  if not fields:
    lines.append('No options.\n')
    return lines
  docs = options_lib.field_docs(options_type)
  lines.append('| option | type | default | meaning |')
  lines.append('|---|---|---|---|')
  for field in fields:
    doc = _choices(options_type, docs[field.name]).replace('|', '\\|')
    kind = str(field.type).replace('|', '\\|')
    lines.append(f'| `{field.name}` | `{kind}` | {_default(field)} | '
                 f'{doc} |')
  lines.append('')
  return lines


def options_page(current: str = '') -> str:
  del current  # generated whole
  lines = [_HEADER]
  for name in attention.names():
    lines += _mechanism_section(name)
  return '\n'.join(lines).rstrip('\n') + '\n'


TESTS = DOCS.parent / 'tests'


def family(name: str) -> str:
  """The `attention/` subpackage of a registered mechanism's function."""
  module = attention.get(name).fn.__module__.split('.')
  return module[module.index('attention') + 1]


# Every family a registered mechanism belongs to has a page.
FAMILIES = tuple(sorted({family(name) for name in attention.names()}))
BLOCKS = ('options', 'tests', 'benchmarks')


def family_mechanisms(family_name: str) -> list[str]:
  return [n for n in attention.names() if family(n) == family_name]


def _tests_of(path: pathlib.Path, exact: bool | None = None) -> list[str]:
  """`- name: first paragraph of its docstring`, for each test function.
  With `exact` given, the tests parametrized over `EXACT` (the exact
  mechanisms) only for exact mechanisms."""
  source = path.read_text()
  module_slow = 'pytest.mark.slow' in source.split('\ndef ')[0]
  lines = []
  for node in ast.parse(source).body:
    if not (isinstance(node, ast.FunctionDef) and
            node.name.startswith('test_')):
      continue
    decorators = [ast.unparse(d) for d in node.decorator_list]
    if exact is False and any("'name', EXACT" in d for d in decorators):
      continue
    doc = ' '.join((ast.get_docstring(node) or '').split('\n\n')[0].split())
    line = f'- `{node.name}`'
    if module_slow or 'pytest.mark.slow' in decorators:
      line += ' (`make test-slow`)'
    elif any('slow' in d for d in decorators):
      line += ' (some cases in `make test-slow`)'
    lines.append(line + (f': {doc}' if doc else ''))
  return lines


def _tests_block(family_name: str) -> list[str]:
  lines = []
  folder = TESTS / 'attention' / family_name
  for path in sorted(folder.glob('test_*.py')):
    lines += [f'`{path.relative_to(DOCS.parent)}`:', '']
    lines += _tests_of(path) + ['']
  mechanisms = family_mechanisms(family_name)
  names = ', '.join(f'`{n}`' for n in mechanisms)
  exact = all(attention.get(n).exact for n in mechanisms)
  shared = TESTS / 'attention' / 'test_registry.py'
  lines += [f'Every registered mechanism ({names} here) also runs the '
            f'conformance tests of `{shared.relative_to(DOCS.parent)}`, '
            'with the options its `CONFORMANCE` entry gives:', '']
  lines += [line for line in _tests_of(shared, exact=exact)
            if 'conformance' in line]
  return lines


def _benchmark_block(family_name: str) -> list[str]:
  """Rows of docs/benchmarks.md's tables that name the family's mechanisms
  (their first cell, up to a space), with the `jax.nn` rows of those
  tables, under the section they come from."""
  names = set(family_mechanisms(family_name))
  lines, section, header = [], '', []
  table: list[str] = []

  def flush():
    if any(row.split('|')[1].strip().split(' ')[0] in names for row in table):
      keep = [row for row in table
              if row.split('|')[1].strip().split(' ')[0] in names | {'jax.nn'}]
      lines.extend([f'From "{section}" in [benchmarks.md](../benchmarks.md):',
                    '', *header, *keep, ''])
    table.clear()

  text = (DOCS / 'benchmarks.md').read_text().splitlines()
  for i, row in enumerate(text):
    if row.startswith('#'):
      section = row.lstrip('# ')
    if row.startswith('|---'):
      header = [text[i - 1], row]
    elif row.startswith('|') and header and not row.startswith(header[0]):
      table.append(row)
    elif table:
      flush()
  flush()
  return lines or ['No benchmark rows yet.']


def _block_text(family_name: str, block: str) -> list[str]:
  if block == 'options':
    lines = []
    for name in family_mechanisms(family_name):
      lines += ['#' + line if line.startswith('## ') else line
                for line in _mechanism_section(name)]
    return lines
  if block == 'tests':
    return _tests_block(family_name)
  if block == 'benchmarks':
    return _benchmark_block(family_name)
  raise ValueError(f'unknown generated block {block!r} in '
                   f'families/{family_name}.md; known: options, tests, '
                   'benchmarks')


_BLOCK = re.compile(r'(<!-- generated: (\w+) -->\n)(.*?)(<!-- end generated -->)',
                    re.S)


def family_page(family_name: str):
  """A generator filling the generated blocks of families/<family>.md."""

  def make(current: str) -> str:
    def fill(match):
      body = '\n'.join(_block_text(family_name, match.group(2))).strip('\n')
      return f'{match.group(1)}{body}\n{match.group(4)}'
    return _BLOCK.sub(fill, current)

  return make


# file in docs/ -> its generator, given the file's current text.
PAGES = {'options.md': options_page,
         **{f'families/{f}.md': family_page(f) for f in FAMILIES}}


def main(argv: Sequence[str]) -> int:
  check = '--check' in argv[1:]
  stale = []
  for filename, make in PAGES.items():
    path = DOCS / filename
    text = make(path.read_text() if path.exists() else '')
    if check:
      if not path.exists() or path.read_text() != text:
        stale.append(str(path))
    else:
      path.write_text(text)
      print(f'wrote {path}')
  if stale:
    print('stale (rerun python -m efficient_attention.experiments.docs_pages):'
          f' {", ".join(stale)}')
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
