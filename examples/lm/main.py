r"""Trains a word-level language model with a jax_bigsoftmax output layer.

Usage (from the repository root)::

  python -m examples.lm.main --workdir=runs/lm
  python -m examples.lm.main --config=configs/lm_transformer.py --workdir=runs/tf \
      --config.head=hsigmoid --config.hsigmoid_tree=huffman

2-D mesh: ``--config.mesh_shape=data=4,model=2`` splits the batch on ``data``
and the output layer's vocabulary on ``model`` (heads full, adaptive, sampled).

Multi-host: start the same command on every host with ``--distributed``
(``jax.distributed.initialize`` detects the coordinator on Cloud TPU and
SLURM; elsewhere pass ``--coordinator_address``, ``--num_processes`` and
``--process_id``). ``batch_size`` is the global batch over all hosts and the
mesh spans the devices of every process; CPU processes talk over gloo. See
docs/beyond_one_device.md.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lm_lstm.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/lm", "Checkpoints, metrics.jsonl and metrics.png go here.")
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
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from examples.lm import train
  train.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
