r"""Trains a word-level language model with a jax_bigsoftmax output layer.

Usage (from the repository root, or ``python path/to/examples/lm/main.py`` from anywhere;
``--help`` lists every config field)::

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
import sys

if not __package__:  # run as a file (python path/to/examples/lm/main.py): find the repository
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags, logging  # noqa: E402

from examples import cli  # noqa: E402

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lm_lstm.py")
FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/lm", "Checkpoints, metrics.jsonl and metrics.png go here.")
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
    if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes
    jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from examples.lm import train
  cli.run_training(train.train_and_evaluate, FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(os.path.normpath(_DEFAULT), doc=__doc__))
