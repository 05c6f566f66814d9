"""The duplication task of Reformer's Table 2 at a CPU size: `0 w 0 w`, w
127 random symbols (255 input tokens), one layer of shared-QK LSH attention
with 4 hash rounds, new hashes at every step (Kitaev et al. 2020, arXiv
2001.04451). `experiments/duplication.py` trains it with LSH-4 and with
full attention, then evaluates each with 1, 2, 4 and 8 hash rounds.

  python -m efficient_attention.experiments.main --config=experiments/configs/duplication.py \
      --workdir=/tmp/duplication
"""

from efficient_attention.experiments.configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'copy'
  config.data.size = 127  # symbols in w: 2 * 127 + 2 tokens per example
  config.data.max_length = 256  # learned positions
  config.model.attention = 'lsh'
  # Chunks of 32 (8 per sequence), 8 buckets; chunk_size >= 255 would be
  # full (exact) shared-QK attention.
  config.model.attention_options = {'num_hashes': 4, 'chunk_size': 32,
                                    'num_buckets': 8}
  config.model.num_layers = 1
  config.model.model_dim = 128
  config.model.num_heads = 4
  config.model.num_kv_heads = 4
  config.model.mlp_dim = 256
  config.model.position = 'learned'  # as the Reformer's (axial) positions
  config.model.qk_norm = False  # LSH normalises the shared keys itself
  config.model.shared_qk = True
  config.train.batch_size = 32
  config.train.num_steps = 800
  config.train.max_seconds = 0.0  # no cap: the experiment runs all its steps
  config.train.learning_rate = 5e-3  # at 1e-3, still at chance at step 400
  config.train.warmup_steps = 100
  config.train.weight_decay = 0.0
  config.train.log_every = 50
  config.train.eval_every = 200
  config.train.eval_batches = 4
  config.train.checkpoint_every = 200
  config.train.redraw_projections_every = 1  # new hashes at every step
  return config
