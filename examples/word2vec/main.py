r"""Trains word2vec skip-gram embeddings with a jax_bigsoftmax loss.

Usage (from the repository root)::

  python -m examples.word2vec.main --workdir=runs/w2v
  python -m examples.word2vec.main --workdir=runs/w2v_hs --config.loss=hsigmoid

Prints the running loss, then the nearest neighbours of ``config.queries`` and
a similarity/analogy sanity check; writes ``metrics.json`` and
``embeddings.npz`` to the workdir.
"""
import os

from absl import app, flags
from ml_collections import config_flags

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "word2vec.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/word2vec", "metrics.json and embeddings.npz go here.")
config_flags.DEFINE_config_file("config", os.path.normpath(_DEFAULT), "Experiment config file.",
                                lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from examples.word2vec import train
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
