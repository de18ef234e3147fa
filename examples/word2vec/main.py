r"""Trains word2vec skip-gram embeddings with a jax_bigsoftmax loss.

Usage (from the repository root, or ``python path/to/examples/word2vec/main.py`` from anywhere;
``--help`` lists every config field)::

  python -m examples.word2vec.main --workdir=runs/w2v
  python -m examples.word2vec.main --workdir=runs/w2v_hs --config.loss=hsigmoid

Prints the running loss, then the nearest neighbours of ``config.queries`` and
a similarity/analogy sanity check; writes ``metrics.json`` and
``embeddings.npz`` to the workdir.
"""

import os
import sys

if not __package__:  # run as a file (python path/to/examples/word2vec/main.py): find the repository
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from examples import cli  # noqa: E402

if __name__ == "__main__":
  cli.main(__doc__, config="configs/word2vec.py", workdir="runs/word2vec",
           train="examples.word2vec.train", distributed=False)
