"""Sampled softmax fwd+bwd: jax_bigsoftmax vs tf.nn.sampled_softmax_loss vs dense softmax.

  PYTHONPATH=. python benchmarks/bench_sampled.py [--quick]   # TF from .peers/tf

One training step = mean loss + gradients w.r.t. weights [V, D], biases [V]
and inputs [N, D], sampling S log-uniform negatives (unique) inside the step.
Contenders, alternated A B C A B C over rounds (medians reported):
  ours       jit(value_and_grad(sampled_softmax_loss)), dense [V, D] weight
             gradient (what jax.grad returns: a scatter-add into zeros(V, D));
  ours-rows  gather_sampled_rows + sampled_softmax_loss_from_rows, differentiated
             w.r.t. the gathered rows (the public equivalent of TF's
             IndexedSlices gradient; no [V, D] buffer);
  tf         tf.function(tf.nn.sampled_softmax_loss) in the TF venv
             (persistent subprocess, its own sampler, IndexedSlices gradient);
  dense      jit(value_and_grad) of the exact full softmax over x @ W^T + b
             (skipped when the [N, V] logits and their gradient do not fit).
TF_ENABLE_ONEDNN_OPTS is left at TF's default. Warm-up/compile excluded.
"""
import argparse
import json
import os
import platform
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_bigsoftmax as jbs
import common  # noqa: E402  (benchmarks/ is sys.path[0] when run as a script)
from common import time_jax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DENSE_LIMIT_BYTES = 6 * 2**30  # logits + their gradient + softmax must fit


def make_data(n, d, v, seed=0):  # same as the TF worker
  rng = np.random.default_rng(seed)
  w = rng.standard_normal((v, d), dtype=np.float32) * 0.05
  b = np.zeros((v,), np.float32)
  x = rng.standard_normal((n, d), dtype=np.float32)
  y = np.minimum(rng.zipf(1.2, size=(n, 1)) - 1, v - 1).astype(np.int64)
  return w, b, x, y


def ours_step(s, v):
  @jax.jit
  def step(w, b, x, y, key):
    f = lambda w, b, x: jnp.mean(jbs.sampled_softmax_loss(w, b, y, x, s, v, key=key))
    return jax.value_and_grad(f, argnums=(0, 1, 2))(w, b, x)
  return step


def ours_rows_step(s, v):
  @jax.jit
  def step(w, b, x, y, key):
    sv = jbs.log_uniform_candidate_sampler(key, y, 1, s, True, v)
    rows = jbs.gather_sampled_rows(w, b, y, sv[0])
    f = lambda rows, x: jnp.mean(jbs.sampled_softmax_loss_from_rows(rows, y, x, sv))
    return jax.value_and_grad(f, argnums=(0, 1))(rows, x), sv[0]
  return step


@jax.jit
def dense_step(w, b, x, y):
  def f(w, b, x):
    z = x @ w.T + b[None, :]
    return jnp.mean(jax.nn.logsumexp(z, -1) - jnp.take_along_axis(z, y, -1)[:, 0])
  return jax.value_and_grad(f, argnums=(0, 1, 2))(w, b, x)


class TFWorker:
  def __init__(self, n, d, v, s):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    self.p = subprocess.Popen([common.require_peer("tf"), os.path.join(HERE, "_bench_sampled_tf_worker.py"),
                               str(n), str(d), str(v), str(s)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    line = self.p.stdout.readline()
    if not line.startswith("ready"):
      raise RuntimeError(f"TF worker failed to start: {line!r}")

  def run(self, reps):
    self.p.stdin.write(f"run {reps}\n")
    self.p.stdin.flush()
    return json.loads(self.p.stdout.readline())

  def close(self):
    self.p.stdin.write("quit\n")
    self.p.stdin.close()
    self.p.wait()


def tf_version():
  py = common.peer_python("tf")
  if py is None:
    return "unavailable"
  try:
    return subprocess.run([py, "-c", "import tensorflow as tf; print(tf.__version__)"],
                          capture_output=True, text=True, env=dict(
                              os.environ, TF_CPP_MIN_LOG_LEVEL="3")).stdout.strip()
  except OSError:
    return "unavailable"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--no-tf", action="store_true")
  args = ap.parse_args()
  if args.quick:
    n, d, vocabs, samples = 256, 64, (10_000,), (128, 1024)
  else:
    n, d, vocabs, samples = 4096, 512, (100_000, 1_000_000), (1024, 8192)
  print(f"# bench_sampled: N={n} D={d} fwd+bwd (mean loss, grads w.r.t. W, b, x), float32")
  print(f"# machine: {common.machine_description()};"
        f" tensorflow {tf_version()}; python {platform.python_version()}")
  print(f"# rounds={args.rounds}, contenders alternated within each round; medians in seconds;"
        f" load average at start: {os.getloadavg()}")
  rows = []
  for v in vocabs:
    w, b, x, y = make_data(n, d, v)
    w, b, x, y = (jnp.asarray(a) for a in (w, b, x, y))
    dense_bytes = 3 * n * v * 4
    dense_ok = dense_bytes <= DENSE_LIMIT_BYTES
    dense_times = []
    if dense_ok:
      time_jax(dense_step, (w, b, x, y), 1)  # compile + warm-up
    for s in samples:
      key = jax.random.key(1)
      ours, rows_fn = ours_step(s, v), ours_rows_step(s, v)
      time_jax(ours, (w, b, x, y, key), 2)
      time_jax(rows_fn, (w, b, x, y, key), 2)
      tf = None if args.no_tf else TFWorker(n, d, v, s)
      t_ours, t_rows, t_tf = [], [], []
      for _ in range(args.rounds):
        # Pauses let each contender's freed buffers (2 GB for a dense gradient at
        # V=1M) go back to the OS before the next one is timed.
        t_ours += time_jax(ours, (w, b, x, y, key), 1)
        time.sleep(0.5)
        t_rows += time_jax(rows_fn, (w, b, x, y, key), 1)
        time.sleep(0.5)
        if tf is not None:
          time.sleep(1.0)
          t_tf += tf.run(1)
          time.sleep(1.0)
        if dense_ok and s == samples[-1]:  # dense does not depend on S: timed once per V
          dense_times += time_jax(dense_step, (w, b, x, y), 1)
      if tf is not None:
        tf.close()
      rows.append((v, s, np.median(t_ours), np.median(t_rows),
                   np.median(t_tf) if t_tf else float("nan")))
      print(f"V={v:>8} S={s:>5}: ours {rows[-1][2]:.4f}  ours-rows {rows[-1][3]:.4f}"
            f"  tf {rows[-1][4]:.4f}", flush=True)
    dense = np.median(dense_times) if dense_times else float("nan")
    if not dense_ok:
      print(f"V={v:>8}: dense skipped: [N, V] float32 logits alone are {n * v * 4 / 2**30:.1f}"
            f" GiB (x3 with softmax and gradient) > {DENSE_LIMIT_BYTES / 2**30:.0f} GiB budget")
    else:
      print(f"V={v:>8}: dense full softmax {dense:.4f}", flush=True)
    rows = [r + (dense,) if r[0] == v else r for r in rows]
    del w, b, x, y
  print()
  print("| V | S | ours (s) | ours-rows (s) | TF (s) | dense (s) | TF / ours | TF / ours-rows |"
        " dense / ours |")
  print("|---|---|---|---|---|---|---|---|---|")
  for v, s, o, r, t, dn in rows:
    print(f"| {v:,} | {s} | {o:.3f} | {r:.3f} | {t:.3f} | "
          + ("skipped" if np.isnan(dn) else f"{dn:.3f}")
          + f" | {t / o:.2f}x | {t / r:.2f}x | "
          + ("n/a" if np.isnan(dn) else f"{dn / o:.1f}x") + " |")


if __name__ == "__main__":
  main()
