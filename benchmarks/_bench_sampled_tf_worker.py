"""TensorFlow side of benchmarks/bench_sampled.py (run in the TF venv).

Builds the same data as the driver (same NumPy seeds), compiles one
tf.function step (tf.nn.sampled_softmax_loss with its own log-uniform sampler,
mean loss, gradients w.r.t. weights (IndexedSlices), biases and inputs), then
answers lines "run K" on stdin with K timed steps as a JSON list of seconds.
"""
import json
import sys
import time

import numpy as np
import tensorflow as tf


def make_data(n, d, v, seed=0):
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((v, d), dtype=np.float32) * 0.05
  b = np.zeros((v,), np.float32)
  x = rng.standard_normal((n, d), dtype=np.float32)
  y = np.minimum(rng.zipf(1.2, size=(n, 1)) - 1, v - 1).astype(np.int64)
  return w, b, x, y


def main():
  n, d, v, s = (int(a) for a in sys.argv[1:5])
  w, b, x, y = make_data(n, d, v)
  tw, tb, tx = tf.Variable(w), tf.Variable(b), tf.Variable(x)
  ty = tf.constant(y)
  del w

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.nn.sampled_softmax_loss(tw, tb, ty, tx, s, v, num_true=1,
                                                       remove_accidental_hits=True))
    gw, gb, gx = tape.gradient(loss, [tw, tb, tx])
    return loss, gw.values, gw.indices, gb.values, gx

  for _ in range(2):  # trace + warm-up
    [t.numpy() for t in step()]
  print("ready", flush=True)
  for line in sys.stdin:
    if not line.startswith("run"):
      break
    times = []
    for _ in range(int(line.split()[1])):
      t0 = time.perf_counter()
      [t.numpy() for t in step()]
      times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
  main()
