r"""Trains the text VAE (Bowman et al. 2016) with a jax_bigsoftmax decoder head.

Usage (from the repository root)::

  python -m examples.vae.main --workdir=runs/vae
  python -m examples.vae.main --workdir=runs/vae_hs --config.head=hsigmoid

``--distributed`` works as in ``examples.lm.main``.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "vae.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/vae", "Checkpoints, metrics.jsonl and metrics.png go here.")
config_flags.DEFINE_config_file("config", os.path.normpath(_DEFAULT), "Experiment config file.",
                                lock_config=True)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's id (with --distributed).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines off the progress bar
  import jax
  if FLAGS.distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from examples.vae import train
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
