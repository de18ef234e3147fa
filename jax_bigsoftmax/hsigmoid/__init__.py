"""Hierarchical sigmoid: Paddle's ``hsigmoid_loss`` / ``HSigmoidLoss``.

* :mod:`._tree`: the default complete binary tree, Huffman trees, tree checks.
* :mod:`._functional`: ``hsigmoid_loss``, ``hsigmoid_log_prob``, ``hsigmoid_predict``.
* :mod:`._head`: the head's configuration and pure methods; :mod:`._linen` and
  :mod:`._nnx` its shells; :mod:`._interop` Paddle weights.
"""
from jax_bigsoftmax.hsigmoid._functional import hsigmoid_log_prob, hsigmoid_loss, hsigmoid_predict
from jax_bigsoftmax.hsigmoid._linen import HSigmoidLoss
from jax_bigsoftmax.hsigmoid._tree import default_tree, huffman_tree

__all__ = ("HSigmoidLoss", "default_tree", "hsigmoid_log_prob", "hsigmoid_loss",
           "hsigmoid_predict", "huffman_tree")
