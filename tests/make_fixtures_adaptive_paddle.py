"""Writes tests/fixtures/adaptive_paddle.npz from Paddle's adaptive softmax.

Run with the paddle venv:  .peers/paddle/bin/python tests/make_fixtures_adaptive_paddle.py

Cases:
  doc_functional: the Examples block of paddle.nn.functional.
    adaptive_log_softmax_with_loss (paddle.seed(2024)), whose printed numbers
    the tests also check.
  doc_layer: the Examples block of paddle.nn.AdaptiveLogSoftmaxWithLoss
    (output, loss, log_prob, predict) plus gradients of the loss.
  multi: a bigger layer (3 tail clusters, head bias) with gradients.
"""
import os

import numpy as np
import paddle
import paddle.nn.functional as F


def main():
  out = {"paddle_version": np.array(paddle.__version__)}

  # --- paddle.nn.functional.adaptive_log_softmax_with_loss docstring ---
  paddle.seed(2024)
  x = paddle.randn([3, 5], dtype=paddle.float32)
  head_weight = paddle.randn([5, 3], dtype=paddle.float32)
  head_bias = paddle.randn([3], dtype=paddle.float32)
  tails = [[paddle.randn([5, 2], dtype=paddle.float32),
            paddle.randn([2, 1], dtype=paddle.float32)]]
  label = paddle.full([3], 1, dtype="int64")
  o, loss = F.adaptive_log_softmax_with_loss(
      x, label, head_weight, tails, cutoffs=[2], head_bias=head_bias)
  p = "doc_functional/"
  out[p + "x"], out[p + "y"] = x.numpy(), label.numpy()
  out[p + "head_weight"], out[p + "head_bias"] = head_weight.numpy(), head_bias.numpy()
  out[p + "tail_0_0"], out[p + "tail_0_1"] = tails[0][0].numpy(), tails[0][1].numpy()
  out[p + "output"], out[p + "loss"] = o.numpy(), loss.numpy()

  # --- paddle.nn.AdaptiveLogSoftmaxWithLoss docstring ---
  paddle.seed(2024)
  x = paddle.randn([3, 5], dtype="float32")
  target = paddle.full((3,), 1, dtype="int64")
  asfm = paddle.nn.AdaptiveLogSoftmaxWithLoss(
      in_features=5, n_classes=3, cutoffs=[2], div_value=2.0, head_bias=False)
  add_layer_case(out, "doc_layer/", asfm, x, target, [2])

  # --- a bigger layer ---
  paddle.seed(7)
  rng = np.random.default_rng(7)
  asfm = paddle.nn.AdaptiveLogSoftmaxWithLoss(
      in_features=16, n_classes=80, cutoffs=[6, 20, 45], div_value=2.0,
      head_bias=True)
  with paddle.no_grad():  # Paddle initialises biases to 0; give it values
    asfm.head_bias.set_value(paddle.to_tensor(rng.normal(size=9).astype("float32")))
  x = paddle.to_tensor(rng.normal(size=(40, 16)).astype("float32"))
  y = paddle.to_tensor(rng.integers(0, 80, 40).astype("int64"))
  add_layer_case(out, "multi/", asfm, x, y, [6, 20, 45])

  path = os.path.join(os.path.dirname(__file__), "fixtures", "adaptive_paddle.npz")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez_compressed(path, **out)
  print("wrote", path, os.path.getsize(path), "bytes")


def add_layer_case(out, p, asfm, x, y, cutoffs):
  x.stop_gradient = False
  o, loss = asfm(x, y)
  loss.backward()
  out[p + "cutoffs"] = np.array(cutoffs, np.int64)
  out[p + "config"] = np.array(
      [asfm.in_features, asfm.n_classes, asfm.div_value,
       float(asfm.head_bias is not None)], np.float64)
  out[p + "x"], out[p + "y"] = x.numpy(), y.numpy()
  out[p + "output"], out[p + "loss"] = o.numpy(), loss.numpy()
  out[p + "grad/x"] = x.grad.numpy()
  out[p + "sd/head_weight"] = asfm.head_weight.numpy()
  out[p + "grad/head_weight"] = asfm.head_weight.grad.numpy()
  if asfm.head_bias is not None:
    out[p + "sd/head_bias"] = asfm.head_bias.numpy()
    out[p + "grad/head_bias"] = asfm.head_bias.grad.numpy()
  for i, pair in enumerate(asfm.tail_weights):
    for j, w in enumerate(pair):
      out[p + f"sd/tail_weights.{i}.{j}"] = w.numpy()
      if w.grad is not None:  # clusters with no target get no gradient
        out[p + f"grad/tail_weights.{i}.{j}"] = w.grad.numpy()
  with paddle.no_grad():
    out[p + "log_prob"] = asfm.log_prob(x).numpy()
    out[p + "predict"] = asfm.predict(x).numpy()


if __name__ == "__main__":
  main()
