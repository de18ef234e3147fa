r"""Trains the word-level LSTM language model with Flax NNX and a jax_bigsoftmax.nnx head.

Usage (from the repository root, or ``python path/to/examples/lm_nnx/main.py`` from anywhere;
``--help`` lists every config field)::

  python -m examples.lm_nnx.main --workdir=runs/lm_nnx --config.head=hsigmoid

It reads the linen trainer's config file (``configs/lm_lstm.py``, every field
can be overridden as ``--config.<field>=...``); see ``train.py``.
"""

import os
import sys

if not __package__:  # run as a file (python path/to/examples/lm_nnx/main.py): find the repository
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from examples import cli  # noqa: E402

if __name__ == "__main__":
  cli.main(__doc__, config="configs/lm_lstm.py", workdir="runs/lm_nnx", train="examples.lm_nnx.train")
