r"""Trains the text VAE (Bowman et al. 2016) with a jax_bigsoftmax decoder head.

Usage (from the repository root, or ``python path/to/examples/vae/main.py`` from anywhere;
``--help`` lists every config field)::

  python -m examples.vae.main --workdir=runs/vae
  python -m examples.vae.main --workdir=runs/vae_hs --config.head=hsigmoid

``--distributed`` works as in ``examples.lm.main``.
"""
import os
import sys

if not __package__:  # run as a file (python path/to/examples/vae/main.py): find the repository
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags, logging  # noqa: E402

from examples import cli  # noqa: E402

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "vae.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/vae", "Checkpoints, metrics.jsonl and metrics.png go here.")
cli.define_config_flag(os.path.normpath(_DEFAULT), "Experiment config file.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's id (with --distributed).")


def main(argv):
  del argv  # checked by cli.flags_parser
  logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines off the progress bar
  import jax
  if FLAGS.distributed:
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from examples.vae import train
  cli.run_training(train.train_and_evaluate, FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(os.path.normpath(_DEFAULT), doc=__doc__))
