"""Passkey retrieval (Mohtashami & Jaggi 2023, arXiv 2305.16300) for the
long-context mechanisms: a five-digit key hidden in filler text and asked
for at the end, trained at about 1k tokens. `experiments/passkey.py` trains
Infini-attention, Transformer-XL and sliding-window attention with it and
evaluates them at 4x, 16x and 64x the training length.

  python -m efficient_attention.experiments.main --config=experiments/configs/passkey.py \
      --workdir=/tmp/passkey_infini
"""

from efficient_attention.experiments.configs import default

SEGMENT = 256  # tokens per segment (Infini, XL) and the sliding window


def get_config():
  config = default.get_config()
  config.data.source = 'passkey'
  # A curriculum of filler bytes: 60 (141 tokens: one segment, where local
  # attention learns to copy the key), then 200 (281 tokens: the key is
  # mostly in an earlier segment), then 960 (1,041 tokens). From scratch at
  # 1,041 tokens, Infini-attention (then with its gate starting at 1/2)
  # stayed at chance on the key for 400 steps; at 141 tokens full attention
  # learns to copy it in 300 to 1,000 steps, and Infini-attention did in
  # one run of 500 steps but not in another of 600.
  config.data.size = 60
  config.data.size_schedule = ((1000, 200), (1400, 960))
  config.data.eval_size = 960  # evaluation during training
  config.data.max_length = 1 << 20  # unused: RoPE, no position table
  # Every next token is a target, not only the key's digits (evaluation
  # scores the key only).
  config.data.score_all_tokens = True
  config.model.attention = 'infini'
  config.model.attention_options = {'segment_size': SEGMENT,
                                    'chunk_size': SEGMENT}
  config.model.num_layers = 2
  config.model.model_dim = 128
  config.model.num_heads = 2  # head dim 64: room in each H x H memory
  config.model.num_kv_heads = 2
  config.model.mlp_dim = 256
  config.model.qk_norm = True
  config.train.batch_size = 16
  config.train.num_steps = 1700  # the last 300 at 1,041 tokens
  config.train.max_seconds = 0.0  # no cap: the experiment runs all its steps
  config.train.learning_rate = 3e-3
  config.train.warmup_steps = 100
  config.train.log_every = 50
  config.train.eval_every = 200
  config.train.eval_batches = 4
  config.train.checkpoint_every = 200
  return config
