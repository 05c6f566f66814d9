r"""Documentation pages generated from the code, so they cannot drift from it.

`docs/options.md` lists every registered mechanism's typed options (field,
type, default, the comment written beside the field in its options class,
and the values a choice allows), what the mechanism refuses and whether it
decodes. A test fails when the committed page differs from what this
writes.

  python -m efficient_attention.experiments.docs_pages            # write
  python -m efficient_attention.experiments.docs_pages --check    # exit 1 if stale
"""

from __future__ import annotations

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


def options_page() -> str:
  lines = [_HEADER]
  for name in attention.names():
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
      continue
    docs = options_lib.field_docs(options_type)
    lines.append('| option | type | default | meaning |')
    lines.append('|---|---|---|---|')
    for field in fields:
      doc = _choices(options_type, docs[field.name]).replace('|', '\\|')
      kind = str(field.type).replace('|', '\\|')
      lines.append(f'| `{field.name}` | `{kind}` | {_default(field)} | '
                   f'{doc} |')
    lines.append('')
  return '\n'.join(lines).rstrip('\n') + '\n'


PAGES = {'options.md': options_page}  # file in docs/ -> its generator


def main(argv: Sequence[str]) -> int:
  check = '--check' in argv[1:]
  stale = []
  for filename, make in PAGES.items():
    path, text = DOCS / filename, make()
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
