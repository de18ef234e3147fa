r"""Trains the word-level LSTM language model with Flax NNX and a jax_bigsoftmax.nnx head.

Usage (from the repository root)::

  python -m examples.lm_nnx.main --workdir=runs/lm_nnx --config.head=hsigmoid

It reads the linen trainer's config file (``configs/lm_lstm.py``, every field
can be overridden as ``--config.<field>=...``); see ``train.py``.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lm_lstm.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/lm_nnx", "Checkpoints, metrics.jsonl and metrics.png go here.")
config_flags.DEFINE_config_file("config", os.path.normpath(_DEFAULT), "Experiment config file.",
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines off the progress bar
  from examples.lm_nnx import train
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
