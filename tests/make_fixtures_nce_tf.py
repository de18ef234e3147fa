"""Makes tests/fixtures/nce_tf.npz with TensorFlow's own candidate-sampling ops.

Run with a Python that has TensorFlow (deterministic seeds), from the repo root:
  .peers/tf/bin/python tests/make_fixtures_nce_tf.py   (bash benchmarks/setup_peers.sh tf)

Cases:
* ``nce_*``: tf.nn.nce_loss values and the gradients of sum(loss * cot) w.r.t.
  inputs, weights (IndexedSlices densified) and biases; num_true 1 and 3, hits
  removed or not, float32 and float64.
* ``logits_*``: TF's _compute_sampled_logits (the function both TF losses are
  built on) with subtract_log_q on/off and hits removed.
* ``hits``: tf.nn.compute_accidental_hits with repeated candidates and a
  duplicated target.
* ``shard_*``: nce_loss and sampled_softmax_loss with weights and biases given
  as lists of shards (partition_strategy="div"), gradients per shard.
* ``all``: tf.random.all_candidate_sampler.
* ``huge``: log-uniform and uniform samplers at range_max = 2**33 (unique):
  inclusion frequencies of ids 0..15 and of the id magnitude buckets
  [2**k - 1, 2**(k+1) - 1) over many calls, and the expected counts of fixed
  true classes.
"""
import os

import numpy as np
import tensorflow as tf
from tensorflow.python.ops import nn_impl

from make_fixtures_sampled_tf import tf_problem  # run from the repo root: tests/ is on sys.path

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "nce_tf.npz")
HUGE = 2**33


def _sampled_values(labels, t, s, v, unique, seed, dtype):
  sv = tf.random.log_uniform_candidate_sampler(tf.constant(labels), t, s, unique, v, seed=seed)
  if dtype == np.float64:  # TF's samplers return float32 counts; its losses need x's dtype.
    sv = (sv[0], tf.cast(sv[1], tf.float64), tf.cast(sv[2], tf.float64))
  return sv


def nce_case(name, *, n, d, v, s, t, remove, unique=True, dtype=np.float32, seed=0):
  rng = np.random.RandomState(seed)
  w, b, x, labels, cot = tf_problem(rng, n, d, v, t, dtype)
  sv = _sampled_values(labels, t, s, v, unique, seed + 1, dtype)
  tw, tb, tx = tf.Variable(w), tf.Variable(b), tf.Variable(x)
  with tf.GradientTape() as tape:
    loss = tf.nn.nce_loss(tw, tb, tf.constant(labels), tx, s, v, num_true=t, sampled_values=sv,
                          remove_accidental_hits=remove)
    obj = tf.reduce_sum(loss * cot)
  gw, gb, gx = (tf.convert_to_tensor(g) for g in tape.gradient(obj, [tw, tb, tx]))
  out = dict(weights=w, biases=b, inputs=x, labels=labels, cot=cot,
             sampled=sv[0].numpy(), true_ec=sv[1].numpy(), sampled_ec=sv[2].numpy(),
             loss=loss.numpy(), grad_weights=gw.numpy(), grad_biases=gb.numpy(),
             grad_inputs=gx.numpy(), num_true=np.int64(t), num_sampled=np.int64(s),
             remove=np.bool_(remove))
  return {f"{name}/{k}": val for k, val in out.items()}


def logits_case(name, *, n, d, v, s, t, subtract_log_q, remove, unique, seed):
  rng = np.random.RandomState(seed)
  w, b, x, labels, _ = tf_problem(rng, n, d, v, t, np.float32)
  sv = _sampled_values(labels, t, s, v, unique, seed + 1, np.float32)
  logits, out_labels = nn_impl._compute_sampled_logits(  # pylint: disable=protected-access
      weights=tf.constant(w), biases=tf.constant(b), labels=tf.constant(labels),
      inputs=tf.constant(x), num_sampled=s, num_classes=v, num_true=t, sampled_values=sv,
      subtract_log_q=subtract_log_q, remove_accidental_hits=remove)
  out = dict(weights=w, biases=b, inputs=x, labels=labels, sampled=sv[0].numpy(),
             true_ec=sv[1].numpy(), sampled_ec=sv[2].numpy(), logits=logits.numpy(),
             out_labels=out_labels.numpy(), num_true=np.int64(t), num_sampled=np.int64(s),
             subtract_log_q=np.bool_(subtract_log_q), remove=np.bool_(remove))
  return {f"{name}/{k}": val for k, val in out.items()}


def hits_case():
  rng = np.random.RandomState(7)
  true = rng.randint(0, 6, size=(9, 3)).astype(np.int64)
  true[0, 2] = true[0, 0]
  sampled = rng.randint(0, 6, size=(11,)).astype(np.int64)  # repeats: last occurrence counts
  idx, ids, wts = tf.nn.compute_accidental_hits(tf.constant(true), tf.constant(sampled), 3)
  return {"hits/true": true, "hits/sampled": sampled, "hits/indices": idx.numpy(),
          "hits/ids": ids.numpy(), "hits/weights": wts.numpy()}


def shard_case(name, *, loss_fn, n, d, v, s, t, num_shards, remove, seed):
  rng = np.random.RandomState(seed)
  w, b, x, labels, cot = tf_problem(rng, n, d, v, t, np.float32)
  sv = _sampled_values(labels, t, s, v, True, seed + 1, np.float32)
  # TF's "div" layout: the first v % P shards hold one extra row.
  sizes = [v // num_shards + (1 if i < v % num_shards else 0) for i in range(num_shards)]
  bounds = np.cumsum([0] + sizes)
  tws = [tf.Variable(w[bounds[i]:bounds[i + 1]]) for i in range(num_shards)]
  tbs = [tf.Variable(b[bounds[i]:bounds[i + 1]]) for i in range(num_shards)]
  tx = tf.Variable(x)
  fn = tf.nn.nce_loss if loss_fn == "nce" else tf.nn.sampled_softmax_loss
  with tf.GradientTape() as tape:
    loss = fn(tws, tbs, tf.constant(labels), tx, s, v, num_true=t, sampled_values=sv,
              remove_accidental_hits=remove)
    obj = tf.reduce_sum(loss * cot)
  grads = tape.gradient(obj, tws + tbs + [tx])
  grads = [tf.convert_to_tensor(g).numpy() for g in grads]
  out = dict(weights=w, biases=b, inputs=x, labels=labels, cot=cot, sizes=np.array(sizes),
             sampled=sv[0].numpy(), true_ec=sv[1].numpy(), sampled_ec=sv[2].numpy(),
             loss=loss.numpy(), grad_inputs=grads[-1], num_true=np.int64(t),
             num_sampled=np.int64(s), remove=np.bool_(remove))
  for i in range(num_shards):
    out[f"grad_weights_{i}"] = grads[i]
    out[f"grad_biases_{i}"] = grads[num_shards + i]
  return {f"{name}/{k}": val for k, val in out.items()}


def all_case():
  true = np.array([[1, 2], [3, 0], [4, 4]], np.int64)
  s, tq, sq = tf.random.all_candidate_sampler(tf.constant(true), 2, 5, True)
  return {"all/true": true, "all/sampled": s.numpy(), "all/true_ec": tq.numpy(),
          "all/sampled_ec": sq.numpy()}


def huge_case(num_calls=400, s=64):
  out = {}
  true = np.array([[0], [1], [100], [2**31 + 5], [HUGE - 1]], np.int64)
  edges = np.array([2**k - 1 for k in range(34)], np.int64)  # buckets of log2(id + 1)
  for sampler in ("log_uniform", "uniform"):
    fn = getattr(tf.random, f"{sampler}_candidate_sampler")
    small = np.zeros(16)
    buckets = np.zeros(len(edges) - 1)
    for i in range(num_calls):
      ids, tq, sq = fn(tf.constant(true), 1, s, True, HUGE, seed=1000 + i)
      ids = ids.numpy()
      assert ids.min() >= 0 and ids.max() < HUGE and len(set(ids.tolist())) == s
      small += np.bincount(ids[ids < 16], minlength=16)
      buckets += np.histogram(ids, bins=edges)[0]
    out.update({f"huge_{sampler}/small_freq": small / num_calls,
                f"huge_{sampler}/bucket_freq": buckets / num_calls,
                f"huge_{sampler}/last_true_ec": tq.numpy(),
                f"huge_{sampler}/last_ids": ids})
  out.update({"huge/true": true, "huge/edges": edges, "huge/num_calls": np.int64(num_calls),
              "huge/num_sampled": np.int64(s), "huge/range_max": np.int64(HUGE)})
  return out


def main():
  tf.random.set_seed(1234)
  data = {}
  data.update(nce_case("nce_t1_hits", n=12, d=8, v=50, s=10, t=1, remove=True, seed=0))
  data.update(nce_case("nce_t1_nohits", n=12, d=8, v=50, s=10, t=1, remove=False, seed=1))
  data.update(nce_case("nce_t3_hits", n=10, d=6, v=40, s=12, t=3, remove=True, seed=2))
  data.update(nce_case("nce_t3_nohits", n=10, d=6, v=40, s=12, t=3, remove=False, seed=3))
  data.update(nce_case("nce_t2_repeat", n=10, d=6, v=12, s=16, t=2, remove=True, unique=False,
                       seed=4))
  data.update(nce_case("nce_t1_hits_f64", n=8, d=5, v=30, s=7, t=1, remove=True, seed=5,
                       dtype=np.float64))
  data.update(nce_case("nce_t3_nohits_f64", n=8, d=5, v=30, s=7, t=3, remove=False, seed=6,
                       dtype=np.float64))
  data.update(logits_case("logits_logq_hits", n=9, d=5, v=40, s=11, t=2, subtract_log_q=True,
                          remove=True, unique=True, seed=10))
  data.update(logits_case("logits_nologq_hits", n=9, d=5, v=40, s=11, t=2,
                          subtract_log_q=False, remove=True, unique=False, seed=11))
  data.update(logits_case("logits_logq_nohits", n=7, d=4, v=25, s=6, t=1, subtract_log_q=True,
                          remove=False, unique=True, seed=12))
  data.update(hits_case())
  data.update(shard_case("shard_nce", loss_fn="nce", n=10, d=6, v=50, s=12, t=2, num_shards=3,
                         remove=True, seed=20))
  data.update(shard_case("shard_softmax", loss_fn="softmax", n=10, d=6, v=47, s=9, t=1,
                         num_shards=4, remove=True, seed=21))
  data.update(all_case())
  data.update(huge_case())
  data["tf_version"] = np.array(tf.__version__)
  np.savez_compressed(OUT, **data)
  print("wrote", OUT, "keys:", len(data))


if __name__ == "__main__":
  main()
