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

from examples import cli  # noqa: E402

if __name__ == "__main__":
  cli.main(__doc__, config="configs/vae.py", workdir="runs/vae", train="examples.vae.train")
