"""The default experiment with plain exact attention instead of blockwise."""

from efficient_attention.experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.attention = 'dot_product'
  return config
