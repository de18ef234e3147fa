"""Makes tests/fixtures/sampled_tf.npz with TensorFlow's own sampled softmax.

Run with the TensorFlow venv (deterministic seeds):
  .peers/tf/bin/python tests/make_fixtures_sampled_tf.py

Each case stores the inputs, TF's sampled_values, the per-example losses of
tf.nn.sampled_softmax_loss and the gradients of sum(loss * cot) w.r.t. inputs,
weights (IndexedSlices densified) and biases.
"""
import os

import numpy as np
import tensorflow as tf

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "sampled_tf.npz")


def tf_problem(rng, n, d, v, t, dtype):
  """Weights, biases, inputs, labels [n, t] and a cotangent (also used by make_fixtures_nce_tf)."""
  w = (rng.randn(v, d) * 0.5).astype(dtype)
  b = (rng.randn(v) * 0.1).astype(dtype)
  x = rng.randn(n, d).astype(dtype)
  # Small ids are frequent under the log-uniform sampler: make accidental hits likely.
  labels = rng.randint(0, min(v, 8), size=(n, t)).astype(np.int64)
  if t > 1:
    labels[0, 1] = labels[0, 0]  # a duplicated target in one row
  cot = rng.randn(n).astype(dtype)
  return w, b, x, labels, cot


def case(name, *, n, d, v, s, t, remove, unique=True, dtype=np.float32, seed=0,
         sampler="log_uniform"):
  rng = np.random.RandomState(seed)
  w, b, x, labels, cot = tf_problem(rng, n, d, v, t, dtype)
  tl = tf.constant(labels)
  if sampler == "log_uniform":
    sv = tf.random.log_uniform_candidate_sampler(tl, t, s, unique, v, seed=seed + 1)
  else:
    sv = tf.random.uniform_candidate_sampler(tl, t, s, unique, v, seed=seed + 1)
  if dtype == np.float64:  # TF's samplers return float32 counts; its loss needs them in x's dtype.
    sv = (sv[0], tf.cast(sv[1], tf.float64), tf.cast(sv[2], tf.float64))
  tw, tb, tx = tf.Variable(w), tf.Variable(b), tf.Variable(x)
  with tf.GradientTape() as tape:
    loss = tf.nn.sampled_softmax_loss(tw, tb, tl, tx, s, v, num_true=t, sampled_values=sv,
                                      remove_accidental_hits=remove)
    obj = tf.reduce_sum(loss * cot)
  gw, gb, gx = tape.gradient(obj, [tw, tb, tx])
  gw = tf.convert_to_tensor(gw)
  gb = tf.convert_to_tensor(gb)
  out = dict(weights=w, biases=b, inputs=x, labels=labels, cot=cot,
             sampled=sv[0].numpy(), true_ec=sv[1].numpy(), sampled_ec=sv[2].numpy(),
             loss=loss.numpy(), grad_weights=gw.numpy(), grad_biases=gb.numpy(),
             grad_inputs=gx.numpy(), num_true=np.int64(t), remove=np.bool_(remove))
  return {f"{name}/{k}": val for k, val in out.items()}


def main():
  tf.random.set_seed(1234)
  data = {}
  data.update(case("t1_hits", n=12, d=8, v=50, s=10, t=1, remove=True, seed=0))
  data.update(case("t1_nohits", n=12, d=8, v=50, s=10, t=1, remove=False, seed=1))
  data.update(case("t3_hits", n=10, d=6, v=40, s=12, t=3, remove=True, seed=2))
  data.update(case("t3_nohits", n=10, d=6, v=40, s=12, t=3, remove=False, seed=3))
  # unique=False: repeated candidates (TF masks only the last occurrence of a hit).
  data.update(case("t2_repeat", n=10, d=6, v=12, s=16, t=2, remove=True, unique=False, seed=4))
  data.update(case("t1_uniform_f64", n=8, d=5, v=30, s=7, t=1, remove=True, seed=5,
                   dtype=np.float64, sampler="uniform"))
  names = sorted({k.split("/")[0] for k in data})
  data["cases"] = np.array(names)
  data["tf_version"] = np.array(tf.__version__)
  np.savez_compressed(OUT, **data)
  print("wrote", OUT, "cases:", names)


if __name__ == "__main__":
  main()
