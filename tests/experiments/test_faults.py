"""The training job loses no work: corrupt checkpoints, changed configs,
signals, a second run on the same workdir, torn metrics, kills, full disks.

A tiny model is trained once to step 6 (checkpoints at 3 and 6); each test
works on a copy of that workdir.
"""

import errno
import gc
import json
import os
import resource
import shutil
import signal
import socket
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from efficient_attention.experiments import checkpoints
from efficient_attention.experiments import preemption
from efficient_attention.experiments import reporting
from efficient_attention.experiments import resume
from efficient_attention.experiments import train
from efficient_attention.experiments import workdir_lock
from tests.experiments import runs

pytestmark = [
    # One worker runs them all: the trained and whole runs are built once.
    pytest.mark.xdist_group('faults'),
    # A restore that fails inside orbax leaves callbacks for an event loop
    # it has closed; Python reports them as unraisable. Nothing is lost.
    pytest.mark.filterwarnings(
        'ignore::pytest.PytestUnraisableExceptionWarning'),
]

@pytest.fixture(autouse=True, scope='module')
def collect_orbax_leftovers():
  """Collects the coroutines a failed orbax restore leaves behind while the
  warning filter above applies (this module's last teardown), not in a test
  of another module. Once per module: a collection costs about a second."""
  yield
  gc.collect()


@pytest.fixture(name='text_file', scope='module')
def fixture_text_file(tmp_path_factory):
  return runs.write_text_file(tmp_path_factory.mktemp('data') / 'text.txt')


@pytest.fixture(name='trained', scope='module')
def fixture_trained(tmp_path_factory, text_file):
  """A workdir trained to step 6, checkpoints at 3 and 6 (do not modify)."""
  workdir = tmp_path_factory.mktemp('trained') / 'run'
  train.train_and_evaluate(runs.tiny_config(text_file), str(workdir))
  return workdir


@pytest.fixture(name='workdir')
def fixture_workdir(trained, tmp_path):
  copy = tmp_path / 'run'
  shutil.copytree(trained, copy)
  return copy


def params(workdir, step):
  state = ocp.StandardCheckpointer().restore(
      str(workdir / 'checkpoints' / str(step) / 'default'))
  return jax.tree.leaves(state['params'])


def assert_same_params(workdir_a, step_a, workdir_b, step_b):
  for a, b in zip(params(workdir_a, step_a), params(workdir_b, step_b),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def events(workdir, kind=None):
  rows = reporting.read_metrics(str(workdir), timeline=False)
  return [r for r in rows if 'event' in r and kind in (None, r['event'])]


def files(directory):
  return sorted(os.path.relpath(os.path.join(d, f), directory)
                for d, _, names in os.walk(directory) for f in names)


def find_latest(workdir, config):
  """What a run of `config` would resume from in `workdir`."""
  _, state = train.initial_state(config, train.make_optimizer(config))
  mngr = checkpoints.manager(str(workdir), config.train.keep_checkpoints)
  return resume.latest(mngr, train.abstract_state(state), config,
                       train.structure_of)


def largest_array_file(checkpoint):
  found = [os.path.join(d, f) for d, _, names in os.walk(checkpoint)
           for f in names if os.sep + 'd' + os.sep in os.path.join(d, f)]
  return max(found, key=os.path.getsize)


def _truncate(path):
  with open(path, 'rb+') as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_a_bit(path):
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0x10
  open(path, 'wb').write(bytes(data))


CORRUPTIONS = {
    'truncated': lambda c: _truncate(largest_array_file(c)),
    'zero-bytes': lambda c: open(os.path.join(c, 'default', '_METADATA'),
                                 'wb').close(),
    'deleted-file': lambda c: os.remove(largest_array_file(c)),
    'garbage': lambda c: open(os.path.join(c, 'default', 'manifest.ocdbt'),
                              'wb').write(b'not a checkpoint'),
    # Read back by tensorstore without any error: the fingerprint sees it.
    'flipped-bit': lambda c: _flip_a_bit(largest_array_file(c)),
}


@pytest.mark.parametrize('corruption', sorted(CORRUPTIONS))
def test_an_unreadable_checkpoint_is_quarantined_and_the_previous_used(
    workdir, text_file, corruption):
  CORRUPTIONS[corruption](workdir / 'checkpoints' / '6')
  found = find_latest(workdir, runs.tiny_config(text_file))
  assert found.step == 3 and int(found.state['step']) == 3
  [(step, why, where)] = found.quarantined
  assert step == 6 and why
  assert os.listdir(workdir / 'checkpoints') == ['3']
  assert where.startswith(str(workdir / 'quarantine' / 'step_6_'))
  assert 'could not be read' in open(os.path.join(
      where, 'QUARANTINED.txt')).read()
  assert os.path.isdir(os.path.join(where, 'default'))  # kept whole


def test_every_checkpoint_unreadable_starts_afresh_keeping_them_all(
    workdir, text_file):
  for step in ('3', '6'):
    CORRUPTIONS['garbage'](workdir / 'checkpoints' / step)
  found = find_latest(workdir, runs.tiny_config(text_file))
  assert found.state is None and found.step == 0
  assert [s for s, _, _ in found.quarantined] == [6, 3]
  assert len(os.listdir(workdir / 'quarantine')) == 2


def test_a_run_with_a_corrupt_checkpoint_saves_anew_and_says_so(
    workdir, trained, text_file, capsys):
  CORRUPTIONS['truncated'](workdir / 'checkpoints' / '6')
  train.train_and_evaluate(runs.tiny_config(text_file), str(workdir))
  # Retrained from step 3 to the same step 6: a readable checkpoint again,
  # bitwise the one that was lost.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['3', '6']
  assert_same_params(workdir, 6, trained, 6)
  [event] = events(workdir, 'quarantine')
  assert event['checkpoint'] == 6 and 'quarantine' in event['moved_to']
  summary = capsys.readouterr().out.split('done: ')[-1]
  assert 'note: the checkpoint of step 6 could not be read' in summary
  assert 'note: resumed from step 3' in summary


def test_a_changed_model_is_refused_naming_fields_and_deleting_nothing(
    workdir, text_file):
  before = files(workdir)
  config = runs.tiny_config(text_file, **{'model.model_dim': 48,
                                     'model.num_layers': 2,
                                     'train.num_steps': 9})
  with pytest.raises(resume.ConfigMismatch) as error:
    train.train_and_evaluate(config, str(workdir))
  text = str(error.value)
  assert 'nothing was read or deleted' in text
  assert 'config.model.model_dim: 32 -> 48' in text
  assert 'config.model.num_layers: 1 -> 2' in text
  assert ('Other changes (allowed on resume): config.train.num_steps: 6 -> 9'
          in text)
  assert files(workdir) == before


def test_changes_that_keep_the_structure_resume_and_are_reported(
    workdir, text_file):
  config = runs.tiny_config(text_file, **{'train.num_steps': 9,
                                     'train.learning_rate': 1e-3,
                                     'model.attention': 'dot_product'})
  found = find_latest(workdir, config)
  assert found.step == 6 and not found.quarantined
  assert found.changes == {'model.attention': ('blockwise', 'dot_product'),
                           'train.learning_rate': (3e-3, 1e-3),
                           'train.num_steps': (6, 9)}


def test_an_old_checkpoint_without_its_config_is_still_checked(
    workdir, text_file):
  shutil.rmtree(workdir / 'checkpoints' / '6' / 'meta')  # as written before
  found = find_latest(workdir, runs.tiny_config(text_file))
  assert found.step == 6 and not found.quarantined
  with pytest.raises(resume.ConfigMismatch) as error:
    find_latest(workdir, runs.tiny_config(text_file, **{'model.model_dim': 48}))
  assert 'arrays differ (checkpoint -> now)' in str(error.value)
  assert ("opt_state/1/0/mu/head/embed/embedding: ((256, 32), 'float32') -> "
          "((256, 48), 'float32')") in str(error.value)


def _signal_when(monkeypatch, signum, module, name, condition):
  """Sends `signum` to this process when `module.name(...)` is called with
  arguments meeting `condition`, right after the call returns."""
  original = getattr(module, name)

  def wrapped(*args, **kwargs):
    out = original(*args, **kwargs)
    if condition(*args, **kwargs):
      os.kill(os.getpid(), signum)
    return out
  monkeypatch.setattr(module, name, wrapped)


def test_sigterm_and_sigint_save_the_current_step_then_stop(
    tmp_path, trained, text_file, monkeypatch):
  assert threading.current_thread() is threading.main_thread()
  handlers = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)]
  config = runs.tiny_config(text_file, **{'train.checkpoint_every': 1})
  workdir = tmp_path / 'run'
  # SIGTERM while the asynchronous save of step 3 is in flight.
  with monkeypatch.context() as patch:
    _signal_when(patch, signal.SIGTERM, checkpoints, 'save',
                 lambda mngr, step, *a, **k: step == 3)
    with pytest.raises(preemption.Interrupted) as stopped:
      train.train_and_evaluate(config, str(workdir))
  assert stopped.value.code == 128 + signal.SIGTERM and stopped.value.step == 3
  assert events(workdir)[-1] == {'step': 3, 'event': 'end',
                                 'reason': 'SIGTERM', 'finished': False,
                                 'num_steps': 6}
  assert int(checkpoints.stored(checkpoints.manager(str(workdir), 2), 3)[
      0]['train']['num_steps']) == 6  # complete, with its config
  # SIGINT (Ctrl-C) in the middle of step 5 (while its batch is read):
  # the step finishes and is saved although it is no checkpoint step.
  config.train.checkpoint_every = 3
  with monkeypatch.context() as patch:
    _signal_when(patch, signal.SIGINT, train.Run, 'batch',
                 lambda run, step: step == 4)
    with pytest.raises(preemption.Interrupted) as stopped:
      train.train_and_evaluate(config, str(workdir))
  assert stopped.value.code == 128 + signal.SIGINT and stopped.value.step == 5
  assert 5 in checkpoints.manager(str(workdir), 2).all_steps()
  assert handlers == [signal.getsignal(s) for s in (signal.SIGTERM,
                                                     signal.SIGINT)]
  train.train_and_evaluate(config, str(workdir))  # resumes and finishes
  assert_same_params(workdir, 6, trained, 6)  # as if never interrupted
  rows = reporting.read_metrics(str(workdir))  # one timeline, no repeats
  steps = [r['step'] for r in rows if 'train_loss' in r]
  assert steps == [2, 4, 6]


def test_a_second_signal_stops_at_once(monkeypatch):
  sent = []
  monkeypatch.setattr(preemption.os, 'kill', lambda *args: sent.append(args))
  before = signal.getsignal(signal.SIGTERM)
  with preemption.signals() as request:
    handler = signal.getsignal(signal.SIGTERM)
    handler(signal.SIGTERM, None)  # the first: stop after this step
    assert request.name == 'SIGTERM' and not sent
    handler(signal.SIGTERM, None)  # the second: the old handler, re-sent
    assert sent == [(os.getpid(), signal.SIGTERM)]
    assert signal.getsignal(signal.SIGTERM) == before
  assert signal.getsignal(signal.SIGTERM) == before


def test_a_second_run_on_a_busy_workdir_is_refused_naming_the_holder(
    tmp_path, text_file):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  with workdir_lock.hold(str(workdir)):
    with pytest.raises(workdir_lock.Busy, match=(
        f'in use by another training run: pid {os.getpid()} on host '
        f'{socket.gethostname()}')):
      train.train_and_evaluate(runs.tiny_config(text_file), str(workdir))
    # From the command line: exit status 1 and one line, no traceback.
    process = runs.launch(workdir, text_file)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 1, output
    assert output.strip().splitlines()[-1].startswith(
        f'error: workdir {workdir} is in use by another training run: pid '
        f'{os.getpid()}')
  assert sorted(os.listdir(workdir)) == ['lock']  # the refused run wrote none
  assert (workdir / 'lock').read_text() == ''  # released cleanly


def test_a_waiting_run_takes_the_lock_when_it_is_released(tmp_path, capsys):
  held, release = threading.Event(), threading.Event()

  def holder():
    with workdir_lock.hold(str(tmp_path)):
      held.set()
      release.wait(timeout=30)
  thread = threading.Thread(target=holder)
  thread.start()
  held.wait(timeout=30)
  threading.Timer(0.5, release.set).start()
  with workdir_lock.hold(str(tmp_path), wait_seconds=30) as stale:
    assert release.is_set()  # taken only once the holder let go (no clock)
    assert stale is None  # released cleanly, not stale
    assert json.loads((tmp_path / 'lock').read_text())['pid'] == os.getpid()
  assert f'waiting for pid {os.getpid()}' in capsys.readouterr().out
  thread.join()


def test_a_file_system_without_flock_runs_with_a_warning(tmp_path,
                                                        monkeypatch, capsys):
  def no_flock(fd, operation):
    raise OSError(errno.ENOLCK, 'No locks available')
  monkeypatch.setattr(workdir_lock.fcntl, 'flock', no_flock)
  with workdir_lock.hold(str(tmp_path)) as stale:
    assert stale is None
  assert 'warning: cannot lock' in capsys.readouterr().out


def test_a_stale_lock_and_a_torn_metrics_line_are_repaired_and_reported(
    workdir, text_file, capsys):
  dead = {'pid': 999999, 'host': 'elsewhere', 'started': 'yesterday',
          'command': 'python -m efficient_attention.experiments.main'}
  (workdir / 'lock').write_text(json.dumps(dead))  # its holder died
  lines = (workdir / 'metrics.jsonl').read_text()
  with open(workdir / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 7, "train_lo')  # the process died mid-write
  train.train_and_evaluate(runs.tiny_config(text_file, **{'train.num_steps': 9}),
                           str(workdir))
  text = (workdir / 'metrics.jsonl').read_text()
  assert text.startswith(lines)  # every earlier line kept
  assert (workdir / 'metrics.jsonl.torn').read_text() == (
      '{"step": 7, "train_lo\n')
  assert all(json.loads(line) for line in text.splitlines())
  out = capsys.readouterr().out
  assert 'note: took over the stale lock of pid 999999 on host elsewhere' in out
  assert 'note: metrics.jsonl ended in a torn line' in out


@pytest.mark.parametrize('content,kept,torn', [
    ('{"step": 1}\n{"step": 2}\n', '{"step": 1}\n{"step": 2}\n', None),
    ('{"step": 1}\n{"step": 2', '{"step": 1}\n', '{"step": 2'),
    ('{"step": 1}\n{"step": 2}', '{"step": 1}\n{"step": 2}\n', None),
    ('{"st', '', '{"st'),
    ('', '', None),
], ids=['whole', 'torn', 'complete-without-newline', 'only-torn', 'empty'])
def test_metrics_repair(tmp_path, content, kept, torn):
  path = tmp_path / 'metrics.jsonl'
  path.write_text(content)
  assert reporting.repair(str(path)) == torn
  assert path.read_text() == kept
  assert reporting.read_metrics(str(tmp_path)) == [
      json.loads(line) for line in kept.splitlines()]


def test_read_metrics_skips_bad_lines_and_drops_superseded_rows(tmp_path):
  rows = [{'step': 0, 'event': 'start'}, {'step': 2, 'loss': 1.0},
          {'step': 4, 'loss': 0.9}, {'step': 6, 'loss': 0.8},
          {'step': 2, 'event': 'start'}, {'step': 4, 'loss': 0.7}]
  text = [json.dumps(r) for r in rows]
  text.insert(3, '{"step": 5, "lo{"step": 9}')  # an old torn line, mid-file
  (tmp_path / 'metrics.jsonl').write_text('\n'.join(text) + '\n')
  assert reporting.read_metrics(str(tmp_path), timeline=False) == rows
  assert reporting.read_metrics(str(tmp_path)) == rows[:2] + rows[4:]


LONG_RUN = {'train.num_steps': 150, 'train.checkpoint_every': 50,
            'train.eval_every': 1000, 'train.log_every': 50}
LONG = tuple(f'--config.{k}={v}' for k, v in LONG_RUN.items())


@pytest.fixture(name='whole', scope='module')
def fixture_whole(tmp_path_factory, text_file):
  """An uninterrupted run of LONG, for the kill tests to match (in this
  process: the same XLA flags as the command line's, so the same bits)."""
  workdir = tmp_path_factory.mktemp('whole') / 'run'
  train.train_and_evaluate(runs.tiny_config(text_file, **LONG_RUN),
                           str(workdir))
  return workdir


def _kill_when(process, condition, signum, timeout=240):
  deadline = time.time() + timeout
  while time.time() < deadline and process.poll() is None:
    if condition():
      process.send_signal(signum)
      return
    time.sleep(0.01)
  raise AssertionError('the run ended before the condition held')


def _resume_and_compare(workdir, whole, text_file):
  resumed = runs.launch(workdir, text_file, *LONG)
  output, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, output
  assert 'resuming at step' in output
  assert_same_params(workdir, 150, whole, 150)
  return output


def test_sigkill_then_resume_is_bitwise_equal_to_an_uninterrupted_run(
    tmp_path, text_file, whole):
  workdir = tmp_path / 'killed'
  victim = runs.launch(workdir, text_file, *LONG)
  checkpoint_dir = workdir / 'checkpoints'
  _kill_when(victim, lambda: checkpoint_dir.exists() and any(
      d.isdigit() and int(d) >= 50 for d in os.listdir(checkpoint_dir)),
             signal.SIGKILL)
  assert victim.wait(timeout=60) == -signal.SIGKILL
  assert not (workdir / 'curves.png').exists()
  output = _resume_and_compare(workdir, whole, text_file)
  assert 'took over the stale lock of pid' in output


@pytest.mark.slow
def test_sigterm_from_outside_exits_143_and_resumes_bitwise(
    tmp_path, text_file, whole):
  workdir = tmp_path / 'terminated'
  victim = runs.launch(workdir, text_file, *LONG)
  metrics = workdir / 'metrics.jsonl'
  _kill_when(victim, lambda: metrics.exists() and '"step": 50, "train' in
             metrics.read_text(), signal.SIGTERM)
  output, _ = victim.communicate(timeout=60)
  assert victim.returncode == 128 + signal.SIGTERM, output
  stopped = int(output.split('stopped at step ')[1].split()[0])
  assert stopped >= 50
  assert str(stopped) in os.listdir(workdir / 'checkpoints')
  _resume_and_compare(workdir, whole, text_file)


def _limit_file_size():
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG
  resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))


@pytest.mark.slow
def test_a_full_disk_fails_the_save_and_keeps_the_earlier_checkpoints(
    workdir, trained, text_file):
  """A save that cannot be written (a file-size limit stands in for a full
  disk) stops the run; checkpoints 3 and 6 survive; a rerun resumes."""
  longer = '--config.train.num_steps=12'
  process = runs.launch(workdir, text_file, longer, preexec_fn=_limit_file_size)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 1, output
  assert 'saving a checkpoint in' in output and 'File too large' in output
  assert {'3', '6'} <= set(os.listdir(workdir / 'checkpoints'))
  assert_same_params(workdir, 6, trained, 6)
  process = runs.launch(workdir, text_file, longer)
  output, _ = process.communicate(timeout=300)
  assert process.returncode == 0, output
  assert 'resuming at step 6 of 12' in output
