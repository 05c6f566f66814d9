"""The main job says what it did: an early stop is reported as one, a
finished run started again reports and exits, the default config is found
from any directory, and command-line typos fail in one line each."""

import json
import os
import subprocess
import sys

import pytest

from efficient_attention.experiments import cli
from efficient_attention.experiments import configs
from efficient_attention.experiments import train
from efficient_attention.experiments import validation
from efficient_attention.experiments.configs import default
from tests.experiments import runs


def _rows(workdir):
  return [json.loads(line) for line in
          (workdir / 'metrics.jsonl').read_text().splitlines()]


def test_early_stop_is_reported_and_a_finished_run_reports_and_exits(
    tmp_path, capsys):
  text_file = runs.write_text_file(tmp_path / 'text.txt')
  workdir = tmp_path / 'run'
  # A time cap that runs out at once: the run stops at step 0 of 6 and says so.
  train.train_and_evaluate(
      runs.tiny_config(text_file, **{'train.max_seconds': 1e-9}), str(workdir))
  out = capsys.readouterr().out
  assert 'STOPPED EARLY at step 0 of 6 (config.train.max_seconds=1e-09' in out
  end = [r for r in _rows(workdir) if r.get('event') == 'end'][-1]
  assert end['finished'] is False and end['reason'] == 'max_seconds'
  assert 'max_seconds' in end['why'] and end['num_steps'] == 6

  # Without the cap the same command goes on and finishes.
  final = train.train_and_evaluate(runs.tiny_config(text_file), str(workdir))
  out = capsys.readouterr().out
  assert 'done: step 6,' in out and 'STOPPED' not in out
  rows = _rows(workdir)
  assert rows[-1]['event'] == 'end' and rows[-1]['finished'] is True
  evaluated = [r['step'] for r in rows if 'eval_loss' in r]
  assert evaluated == sorted(set(evaluated)), 'a step evaluated twice'

  # Started again, a finished run reports and exits: nothing trains,
  # nothing is evaluated or written.
  before = (workdir / 'metrics.jsonl').read_bytes()
  again = train.train_and_evaluate(runs.tiny_config(text_file), str(workdir))
  out = capsys.readouterr().out
  assert out.startswith('already finished: step 6 of 6')
  assert again == final
  assert (workdir / 'metrics.jsonl').read_bytes() == before


def test_the_progress_eta_honours_the_time_cap(tmp_path, capsys):
  from efficient_attention.experiments import reporting
  reporter = reporting.Reporter(str(tmp_path), total_steps=100,
                                tokens_per_step=10, max_seconds=30.0)
  reporter.last_time -= 10.0  # 10 steps in 10 s: 90 s to go, 20 s allowed
  reporter.progress(10, 1.0, elapsed=10.0)
  line = capsys.readouterr().out
  assert 'ETA 20s (max_seconds cap: stops near step 30)' in line


def test_the_default_config_needs_no_path_and_prints_from_anywhere(tmp_path):
  assert os.path.isfile(configs.path('default'))
  text = validation.format_config(default.get_config())
  assert 'config.train.num_steps = 250  # an int >= 1' in text
  assert "config.model.attention = 'blockwise'  # one of (" in text
  # From a directory that is not the repository, with an override.
  result = subprocess.run(
      [sys.executable, '-m', 'efficient_attention.experiments.main',
       '--print_config', '--config.train.num_steps=7'], cwd=tmp_path,
      capture_output=True, text=True, check=True)
  assert 'config.train.num_steps = 7  # an int >= 1' in result.stdout
  assert not (tmp_path / 'workdir').exists()


@pytest.mark.parametrize('argv, message', [
    (['--config.model.attentoin=x'],
     'error: --config.model.attentoin is not a field of the config; did you '
     'mean config.model.attention'),
    (['--config.trainn.num_steps=3'],
     'error: --config.trainn.num_steps is not a field of the config; did you '
     'mean config.train.num_steps?'),
    (['--config.model.attention_options.num_feature=8'],
     'error: --config.model.attention_options.num_feature: '
     'model.attention_options is a dict that cannot gain keys from the '
     'command line; set it whole'),
])
def test_a_misspelt_override_exits_in_one_line_naming_it(argv, message):
  with pytest.raises(SystemExit) as exit_:
    cli.check_overrides(['main.py', '--workdir=/tmp/x'] + argv)
  assert str(exit_.value).startswith(message)
  assert '\n' not in str(exit_.value)


def test_a_misspelt_option_is_one_line_before_anything_is_traced():
  config = default.get_config()
  config.model.attention = 'performer'
  config.model.attention_options = {'num_feature': 8}
  with pytest.raises(validation.ConfigError) as error:
    validation.validate_config(config)
  assert str(error.value) == (
      "experiment config: config.model.attention: PerformerOptions: unknown "
      "option 'num_feature' (did you mean 'num_features'?); valid options: "
      "chunk_size, kernel, num_features, orthogonal")
