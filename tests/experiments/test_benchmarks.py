"""The benchmark scripts run end to end at tiny sizes and write their JSON."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def run(module, *flags):
  result = subprocess.run([sys.executable, '-m', module, *flags], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_attention_benchmark(tmp_path):
  output = tmp_path / 'bench.json'
  stdout = run('experiments.benchmark', '--lengths=64,96', '--repeats=1',
               '--mechanisms=blockwise,dot_product', '--kv_heads=2',
               f'--output={output}')
  assert 'matmul' in stdout
  assert '| blockwise | forward_backward | 96 |' in stdout
  rows = json.loads(output.read_text())['rows']
  assert len(rows) == 2 * 2 * 3  # modes x lengths x (jax.nn + 2 mechanisms)
  for row in rows:
    assert row['seconds'] > 0 and row['temp_bytes'] > 0 and row['gflops'] > 0


def test_decoding_benchmark(tmp_path):
  output = tmp_path / 'decoding.json'
  run('experiments.benchmark_decoding', '--contexts=16', '--new_tokens=4',
      '--model_dim=32', '--layers=1', '--heads=2', '--kv_heads=1',
      '--repeats=1', f'--output={output}')
  (row,) = json.loads(output.read_text())['rows']
  assert row['outputs_agree'] and row['cache_tokens_per_s'] > 0
