"""Default experiment: a small byte-level decoder LM with blockwise attention
on the Python standard library's own sources, sized for a 2-core CPU.

  python -m efficient_attention.experiments.main --config=experiments/configs/default.py \
      --workdir=/tmp/run --config.model.attention=dot_product
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0  # PRNG seed of parameters and data order

  config.data = ml_collections.ConfigDict()
  # 'stdlib' (Python's own sources), 'file', or a synthetic task:
  # 'mqar', 'copy', 'passkey', 'parity', 'addition' (experiments/tasks.py)
  config.data.source = 'stdlib'
  config.data.path = ''  # a local text or bytes file, for source='file'
  config.data.validation_fraction = 0.05  # share of files (or bytes) held out
  config.data.sequence_length = 256  # tokens (bytes) per text example
  config.data.size = 16  # task size: pairs, symbols, filler bytes, digits
  config.data.eval_size = 0  # task size for evaluation (0: same as size)
  # Tasks: train on every next token, not only the answer's (evaluation
  # still scores the answer only).
  config.data.score_all_tokens = False
  # Text: a window spans several files, kept apart (segment ids: the
  # document mask, positions from 0 in each file, no loss across files).
  config.data.pack = False
  # Tasks: a curriculum, ((from_step, size), ...): from that step on, train
  # at that task size instead of data.size.
  config.data.size_schedule = ()
  config.data.max_length = 2048  # longest sequence (learned positions table)

  config.model = ml_collections.ConfigDict()
  config.model.attention = 'blockwise'  # a name from attention.names()
  config.model.attention_options = {}  # that mechanism's typed options
  # A mask expression ANDed with causality, e.g. 'sliding_window(256)' or
  # 'chunked(64) | global_tokens((0,))' (see attention/spec.py); '': none.
  config.model.attention_mask = ''
  # Score modifiers, e.g. 'soft_cap(30.0)'; '': none.
  config.model.attention_scores = ''
  # Layers repeating a pattern: each entry overrides some of the four fields
  # above, e.g. [{'attention_mask': 'sliding_window(128)'}] * 5 + [{}];
  # (): every layer as above.
  config.model.attention_pattern = ()
  config.model.vocab_size = 256  # bytes (at least 256)
  config.model.model_dim = 128  # D
  config.model.num_layers = 4
  config.model.num_heads = 4  # N
  config.model.num_kv_heads = 2  # K (GQA)
  config.model.head_dim = 0  # H; 0: model_dim // num_heads
  config.model.mlp_dim = 384  # SwiGLU hidden width
  config.model.mlp = 'swiglu'  # 'swiglu' or 'gelu'
  config.model.norm = 'rms'  # 'rms' or 'layer'
  config.model.position = 'rope'  # rope, alibi, sinusoidal, learned, none
  config.model.dropout_rate = 0.0  # residual and embedding dropout
  config.model.tie_embeddings = True
  config.model.qk_norm = True  # RMSNorm on queries and keys
  config.model.shared_qk = False  # queries = keys' projection (Reformer); K = N
  config.model.post_norm = False  # True: the original Transformer's post-norm
  config.model.logits_soft_cap = 0.0  # cap * tanh(logit / cap); 0: none

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 16  # sequences per step (global, over devices)
  # A fixed amount of work, so the result does not depend on the machine's
  # speed; sized to finish within 5 minutes on a 2-core CPU (docs/experiments.md).
  config.train.num_steps = 250  # optimizer steps
  # > 0: stop (and say so in the summary and metrics.jsonl) past this many
  # seconds of training; 0: no cap, every step runs.
  config.train.max_seconds = 0.0
  config.train.learning_rate = 3e-3  # peak learning rate
  config.train.schedule = 'cosine'  # 'cosine' (warmup + cosine) or 'rsqrt'
  config.train.warmup_steps = 25  # linear warmup
  config.train.weight_decay = 0.1  # AdamW decoupled weight decay
  config.train.grad_clip_norm = 1.0  # global gradient-norm clipping
  config.train.compute_dtype = 'float32'  # 'float32' or 'bfloat16' compute
  config.train.log_every = 20  # steps between progress lines
  config.train.eval_every = 50  # steps between evaluations
  config.train.eval_batches = 8  # validation batches per evaluation
  config.train.checkpoint_every = 50  # steps between checkpoints
  config.train.keep_checkpoints = 2  # most recent checkpoints kept
  # Steps between redraws of random-feature projections (Performer); 0: never.
  config.train.redraw_projections_every = 0
  return config
