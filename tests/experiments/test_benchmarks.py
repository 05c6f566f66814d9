"""The benchmark scripts run end to end at tiny sizes and write their JSON."""

import json
import os
import subprocess
import sys

import pytest

import numpy as np

from efficient_attention.experiments import benchmark
from efficient_attention.experiments import timing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def run(module, *flags):
  result = subprocess.run([sys.executable, '-m', module, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_attention_benchmark(tmp_path):
  output = tmp_path / 'bench.json'
  stdout = run('efficient_attention.experiments.benchmark', '--lengths=64,96', '--repeats=1',
               '--mechanisms=blockwise,linear', '--kv_heads=2', '--heads=4',
               '--head_dim=16', '--modes=forward', '--matmul_sizes=128',
               '--mechanism_options={"linear": {"chunk_size": 16}}',
               f'--output={output}')
  assert 'matmul' in stdout
  assert '| blockwise | forward | 96 |' in stdout
  assert 'crossover linear vs blockwise, forward:' in stdout
  rows = json.loads(output.read_text())['rows']
  assert len(rows) == 1 * 2 * 3  # modes x lengths x (jax.nn + 2 mechanisms)
  for row in rows:
    assert row['seconds'] > 0 and row['temp_bytes'] > 0 and row['gflops'] > 0


@pytest.mark.slow  # a smoke test; make test-slow
def test_decoding_benchmark(tmp_path):
  output = tmp_path / 'decoding.json'
  run('efficient_attention.experiments.benchmark_decoding', '--contexts=16', '--new_tokens=4',
      '--model_dim=32', '--layers=1', '--heads=2', '--kv_heads=1',
      '--repeats=1', f'--output={output}')
  (row,) = json.loads(output.read_text())['rows']
  assert row['outputs_agree'] and row['cache_tokens_per_s'] > 0


@pytest.mark.slow  # a smoke test; make test-slow
def test_sparse_benchmark(tmp_path):
  output, plot = tmp_path / 'sparse.json', tmp_path / 'sparse.png'
  stdout = run('efficient_attention.experiments.benchmark_sparse',
               '--lengths=256,512', '--modes=forward', '--repeats=1',
               '--dense_up_to=256', '--jax_nn_up_to=256', '--heads=2',
               '--head_dim=16', f'--output={output}', f'--plot={plot}')
  assert '(dense time estimated)' in stdout
  rows = json.loads(output.read_text())['rows']
  names = {r['mechanism'] for r in rows}
  assert {'dense blockwise', 'bigbird', 'longformer', 'linformer k=64',
          'jax.nn + mask: bigbird'} <= names
  for row in rows:
    assert row['seconds'] > 0 and 0 < row['density'] <= 1
  assert plot.stat().st_size > 0


@pytest.mark.slow  # a smoke test; make test-slow
def test_sparse_quality_check(tmp_path):
  output = tmp_path / 'quality.json'
  stdout = run('efficient_attention.experiments.sparse_quality',
               '--steps=2', '--length=64', '--batch_size=4',
               '--eval_examples=64', '--mechanisms=dense,window_only',
               f'--output={output}')
  assert '| window_only |' in stdout
  rows = json.loads(output.read_text())['rows']
  assert [r['mechanism'] for r in rows] == ['dense', 'window_only']
  for row in rows:
    assert 0 <= row['accuracy'] <= 1 and row['temp_bytes'] > 0


def test_crossover_is_where_a_mechanism_becomes_and_stays_faster():
  rows = [dict(mechanism=m, mode='forward', length=n, seconds=s)
          for m, times in [('blockwise', [1, 2, 4, 8]),
                           ('linear', [0.5, 2.5, 3, 4]),
                           ('performer', [2, 3, 5, 9])]
          for n, s in zip([128, 256, 512, 1024], times)]
  assert benchmark.crossovers(rows, 'blockwise') == [
      ('linear', 'forward', 256, 512), ('performer', 'forward', 1024, None)]
  rows = [r for r in rows if r['length'] != 256]
  assert benchmark.crossovers(rows, 'blockwise')[0] == (
      'linear', 'forward', None, 128)


@pytest.mark.slow  # a smoke test; make test-slow
def test_context_benchmark(tmp_path):
  output = tmp_path / 'context.json'
  run('efficient_attention.experiments.benchmark_context', '--contexts=16,64', '--new_tokens=2',
      '--model_dim=32', '--layers=1', '--heads=2', '--kv_heads=1',
      '--mechanisms=dot_product,linear', '--repeats=1', f'--output={output}')
  rows = json.loads(output.read_text())['rows']
  size = {(r['mechanism'], r['context']): r['state_bytes'] for r in rows}
  assert size['linear', 16] == size['linear', 64]  # O(1) in the context
  assert size['dot_product', 64] > 3 * size['dot_product', 16]
  assert all(r['tokens_per_s'] > 0 for r in rows)


@pytest.mark.slow  # a smoke test; make test-slow
def test_stream_benchmark(tmp_path):
  output = tmp_path / 'stream.json'
  stdout = run('efficient_attention.experiments.benchmark_stream', '--lengths=64,256',
               '--segment=32', '--exact_up_to=64', '--heads=2',
               '--kv_heads=1', '--head_dim=8', '--repeats=1',
               f'--output={output}')
  assert '| xl | 256 |' in stdout
  rows = json.loads(output.read_text())['rows']
  assert len(rows) == 4 + 3  # full causal blockwise up to 64 tokens only
  temp = {(r['mechanism'], r['tokens']): r['temp_bytes'] for r in rows}
  assert temp['infini', 64] == temp['infini', 256]  # constant in T
  assert temp['xl', 64] == temp['xl', 256]
  assert all(r['tokens_per_s'] > 0 for r in rows)


@pytest.mark.slow  # a smoke test; make test-slow (tiles: test_masks.py)
def test_mask_and_decode_step_benchmarks_and_mask_pictures(tmp_path):
  stdout = run('efficient_attention.experiments.benchmark_masks', '--lengths=2048',
               '--modes=forward', '--masks=causal,window,documents',
               '--heads=2', '--kv_heads=1', '--head_dim=16', '--repeats=1',
               f'--output={tmp_path / "masks.json"}')
  assert '| 2048 | forward | documents |' in stdout
  rows = json.loads((tmp_path / 'masks.json').read_text())['rows']
  assert [r['mask'] for r in rows] == ['causal', 'window', 'documents']
  assert rows[2]['tiles'] < rows[0]['tiles']  # documents visit fewer
  stdout = run('efficient_attention.experiments.benchmark_decode_step', '--max_lengths=64,256',
               '--position=16', '--steps=2', '--repeats=1', '--heads=2',
               '--kv_heads=1', '--head_dim=16')
  assert '| 256 |' in stdout
  stdout = run('efficient_attention.experiments.mask_pictures', f'--output_dir={tmp_path}',
               '--length=16', '--chunk=4')
  assert 'causal: ' in stdout and (tmp_path / 'mask_bigbird.png').stat(
      ).st_size > 0


def test_peak_rss_growth_sees_one_calls_allocation():
  """The memory column of benchmark_torch: 64 MB written in a call show."""
  growth = timing.peak_rss_growth(lambda: np.ones(8 * 2**20))
  assert 60e6 < growth < 100e6, growth
  assert abs(timing.peak_rss_growth(lambda: None)) < 16e6


@pytest.mark.slow  # a smoke test; make test-slow (torch is not installed
def test_torch_benchmark_without_torch(tmp_path):  # in CI: ours alone)
  output = tmp_path / 'torch.json'
  stdout = run('efficient_attention.experiments.benchmark_torch',
               '--notorch', '--lengths=128', '--dtypes=float32',
               '--repeats=1', '--heads=2', '--head_dim=16',
               '--matmul_size=128', f'--output={output}')
  assert '| 128 | float32 | forward_backward |' in stdout
  rows = json.loads(output.read_text())['rows']
  assert [r['mode'] for r in rows] == ['forward', 'forward_backward']
  for row in rows:
    assert row['blockwise seconds'] > 0
    assert row['blockwise rss_growth_bytes'] > 0
