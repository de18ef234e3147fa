"""LM experiment: a small 2-block pre-LayerNorm Transformer with an adaptive-softmax head.

The default experiment (``lm_lstm.py``: same corpus, head options and schedule
fields) with only what differs changed below; causal self-attention over
windows of ``seq_len`` tokens with learned positions.
Run: ``python -m examples.lm.main --config=configs/lm_transformer.py --workdir=runs/tf``.
"""
import importlib.util
import os

# The config this one varies (``--help`` shows its field comments too).
BASE = "lm_lstm.py"


def _base_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), BASE)
  spec = importlib.util.spec_from_file_location("lm_lstm_base", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _base_config()
  # Backbone: "lstm" or "transformer".
  config.model = "transformer"
  # Transformer blocks.
  config.num_layers = 2
  # Peak AdamW learning rate.
  config.learning_rate = 1e-3
  # Linear warm-up steps to the peak learning rate.
  config.warmup_steps = 200
  # AdamW decoupled weight decay.
  config.weight_decay = 0.01
  return config
