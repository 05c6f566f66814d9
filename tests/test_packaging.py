"""What the package ships besides code: its license and type markers."""

import configparser
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_license_and_py_typed_are_shipped():
  config = configparser.ConfigParser()
  config.read(ROOT / 'setup.cfg')
  assert config['metadata']['license'] == 'Apache-2.0'
  license_file = ROOT / config['metadata']['license_files'].strip()
  assert 'Apache License\n                           Version 2.0' in (
      license_file.read_text())
  package_data = config['options.package_data']
  for package in ('attention', 'models', 'experiments'):
    assert package_data[package].strip() == 'py.typed'
    assert (ROOT / package / 'py.typed').exists()
