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

from examples import cli  # noqa: E402

if __name__ == "__main__":
  cli.main(__doc__, config="configs/lm_lstm.py", workdir="runs/lm", train="examples.lm.train")
