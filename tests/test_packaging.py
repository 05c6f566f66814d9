"""What gets installed, under which names, with which dependencies.

The wheel holds one import name, `efficient_attention`, with the
repository's folders as its subpackages, so a user's own `models` package or
`attention.py` neither hides ours nor is hidden by it. The tests build the
wheel, read what it holds, and install it into a fresh virtual environment
used from a separate project that has its own `models` package and
`attention.py`.
"""

import configparser
import email.parser
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FOLDERS = ('attention', 'models', 'experiments')


def _setup_cfg():
  config = configparser.ConfigParser()
  config.read(ROOT / 'setup.cfg')
  return config


def test_license_and_py_typed_are_shipped():
  config = _setup_cfg()
  assert config['metadata']['license'] == 'Apache-2.0'
  license_file = ROOT / config['metadata']['license_files'].strip()
  assert 'Apache License\n                           Version 2.0' in (
      license_file.read_text())
  package_data = config['options.package_data']
  for package in FOLDERS:
    assert package_data[f'efficient_attention.{package}'].strip() == 'py.typed'
    assert (ROOT / package / 'py.typed').exists()


def test_the_package_list_is_the_tree():
  listed = _setup_cfg()['options']['packages'].split()
  tree = sorted(
      'efficient_attention.' + '.'.join(init.parent.relative_to(ROOT).parts)
      for folder in FOLDERS for init in (ROOT / folder).rglob('__init__.py'))
  assert listed == tree


def test_lower_bounds_are_the_versions_ci_installs():
  pins = dict(line.split('==') for line in
              (ROOT / 'constraints.txt').read_text().splitlines()
              if '==' in line)
  pins = {name.lower().replace('_', '-'): v for name, v in pins.items()}
  config = _setup_cfg()['options']
  requirements = config['install_requires'].split()
  for extra in _setup_cfg()['options.extras_require'].values():
    requirements += extra.split()
  for requirement in requirements:
    name, low = requirement.split('>=')
    assert pins[name.lower().replace('_', '-')] == low, requirement


@pytest.fixture(name='wheel', scope='module')
def fixture_wheel(tmp_path_factory):
  """The wheel of a clean copy of the checkout (no build/ left over from
  an earlier build can leak a removed module into it, and nothing is
  written into the checkout)."""
  out = tmp_path_factory.mktemp('dist')
  source = tmp_path_factory.mktemp('source') / 'repo'
  shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
      '.git', '.venv', 'build', 'dist', '*.egg-info', '__pycache__',
      'workdir', '.pytest_cache', '_build'))
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--quiet',
                  '--no-deps', '--wheel-dir',
                  str(out), str(source)], check=True, capture_output=True)
  [wheel] = out.glob('*.whl')
  return wheel


def test_the_wheel_holds_one_import_name_and_declares_extras(wheel):
  names = zipfile.ZipFile(wheel).namelist()
  top = {name.split('/')[0] for name in names}
  assert top == {'efficient_attention',
                 wheel.name.split('-py')[0] + '.dist-info'}
  for folder in FOLDERS:
    assert f'efficient_attention/{folder}/__init__.py' in names
    assert f'efficient_attention/{folder}/py.typed' in names
  assert 'efficient_attention/__init__.py' not in names  # a namespace
  assert not any('/tests/' in name for name in names)
  [metadata] = [n for n in names if n.endswith('dist-info/METADATA')]
  message = email.parser.Parser().parsestr(
      zipfile.ZipFile(wheel).read(metadata).decode())
  requires = message.get_all('Requires-Dist')
  core = sorted(r.split('>=')[0] for r in requires if 'extra ==' not in r)
  assert core == ['jax', 'numpy']  # the attention functions need no more
  assert set(message.get_all('Provides-Extra')) == {'models', 'train', 'test',
                                                    'docs', 'torch'}
  # torch is one benchmark's, in its own extra and no other.
  assert [r for r in requires if r.startswith('torch')] == [
      r for r in requires if 'extra == "torch"' in r] != []
  assert any(r.startswith('flax') and 'extra == "models"' in r
             for r in requires)
  assert any(r.startswith('orbax-checkpoint') and 'extra == "train"' in r
             for r in requires)


USER_PROJECT = {
    'models/__init__.py': 'NAME = "the user\'s own models"\n',
    'attention.py': 'NAME = "the user\'s own attention"\n',
    'main.py': textwrap.dedent('''\
        import sys
        import jax, jax.numpy as jnp
        import attention, models  # the project's own
        assert models.NAME == "the user's own models", models
        assert attention.NAME == "the user's own attention", attention
        from efficient_attention import attention as ea
        assert 'flax' not in sys.modules  # attention needs jax alone
        q = jax.random.normal(jax.random.key(0), (1, 8, 2, 4))
        out = ea.blockwise_attention(q, q, q, is_causal=True, query_chunk_size=4,
                                     key_chunk_size=4)
        ref = jax.nn.dot_product_attention(q, q, q, is_causal=True)
        assert jnp.allclose(out, ref, atol=1e-5)
        from efficient_attention.models import TransformerConfig
        assert TransformerConfig.__module__.startswith('efficient_attention.')
        assert attention.NAME == "the user's own attention"
        print('installed at', ea.__file__)
        '''),
}


def test_the_installed_wheel_works_beside_a_project_with_its_own_models(
    wheel, tmp_path):
  """A fresh venv gets the wheel (its dependencies come from the test's
  own environment, on PYTHONPATH, so nothing is downloaded); a separate
  project with its own `models/` and `attention.py` uses it."""
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)],
                 check=True)
  python = venv / 'bin' / 'python'
  subprocess.run([sys.executable, '-m', 'pip', '--python', str(python),
                  'install', '--quiet', '--no-deps', str(wheel)], check=True,
                 capture_output=True)
  project = tmp_path / 'project'
  for name, text in USER_PROJECT.items():
    (project / name).parent.mkdir(parents=True, exist_ok=True)
    (project / name).write_text(text)
  # This environment's site-packages as a plain path entry: its packages
  # import, but its .pth files (the editable install of this checkout) are
  # not run, so efficient_attention can only come from the wheel.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env['PYTHONPATH'] = sysconfig.get_paths()['purelib']
  result = subprocess.run([str(python), 'main.py'], cwd=project, env=env,
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'installed at {venv}' in result.stdout


@pytest.mark.slow
def test_a_core_install_from_the_index_pulls_jax_and_numpy_only(wheel,
                                                                 tmp_path):
  """`pip install efficient-attention` (no extras) in a fresh venv, with its
  dependencies resolved by pip under constraints.txt: no flax, no optax."""
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
  python = str(venv / 'bin' / 'python')
  subprocess.run([python, '-m', 'pip', 'install', '--quiet', '-c',
                  str(ROOT / 'constraints.txt'), str(wheel)], check=True)
  listed = subprocess.run([python, '-m', 'pip', 'list', '--format=freeze'],
                          check=True, capture_output=True, text=True).stdout
  names = {line.split('==')[0].lower() for line in listed.splitlines()}
  assert {'jax', 'jaxlib', 'numpy'} <= names
  assert not names & {'flax', 'optax', 'orbax-checkpoint', 'matplotlib',
                      'tensorstore', 'chex'}
  project = tmp_path / 'project'
  for name, text in USER_PROJECT.items():
    if name != 'main.py':
      (project / name).parent.mkdir(parents=True, exist_ok=True)
      (project / name).write_text(text)
  (project / 'main.py').write_text(
      USER_PROJECT['main.py'].split('from efficient_attention.models')[0])
  subprocess.run([python, 'main.py'], cwd=project, check=True)
