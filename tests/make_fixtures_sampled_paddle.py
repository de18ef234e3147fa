"""Makes tests/fixtures/sampled_paddle.npz: Paddle's sampled_softmax_with_cross_entropy
with use_customized_samples=True, computed by Paddle itself.

Run with the Paddle venv (deterministic seeds):
  .peers/paddle/bin/python tests/make_fixtures_sampled_paddle.py

Paddle 3.x no longer ships the ``sample_logits`` op behind
``fluid.layers.sampled_softmax_with_cross_entropy`` (removed with ``fluid``), so
this script runs that layer's exact computation with Paddle's own kernels:
``take_along_axis`` (the op's CPUTakeAlongD1 gather), ``-= 1e20`` on
accidental hits (negatives equal to one of the first num_true samples),
``TolerableValue`` (+-inf -> +-1e20) around ``logits - log(probabilities)``,
then ``softmax_with_cross_entropy(soft_label=True)`` divided by num_true.
Gradients w.r.t. logits come from Paddle's autograd (scatter-add, as the op's
grad kernel CPUPutAlongD1).

For num_true == 1 the soft label is Paddle's ``one_hot(sampled_label,
num_samples + 1)`` and the loss is divided by num_true = 1, as in the layer.
For num_true > 1 Paddle's one_hot of the [N, T] sampled labels is malformed
(see jax_bigsoftmax/_sampled.py), and ones on the T columns followed by ``/ T``
would hit Paddle's soft-label gradient ``softmax - label`` (it assumes labels
sum to 1); the fixture uses the documented semantics with Paddle's kernel
used correctly: soft label 1/T on each of the T target columns, no division.
"""
import os

import numpy as np
import paddle
import paddle.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "sampled_paddle.npz")


def tolerable(v):
  big = paddle.full_like(v, 1e20)
  return paddle.where(paddle.isinf(v), paddle.where(v > 0, big, -big), v)


def case(name, *, n, k, s, t, remove, seed, zero_prob=False):
  rng = np.random.RandomState(seed)
  logits = (rng.randn(n, k) * 2).astype(np.float32)
  label = rng.randint(0, k, size=(n, t)).astype(np.int64)
  # Per-row customized negatives, drawn from a small range so that hits occur.
  negs = rng.randint(0, min(k, 10), size=(n, s)).astype(np.int64)
  negs[0, :t] = label[0]  # guaranteed hits in row 0
  samples = np.concatenate([label, negs], axis=1)
  probs = rng.uniform(0.05, 1.0, size=(n, t + s)).astype(np.float32)
  if zero_prob:
    probs[1, t] = 0.0  # log(0) = -inf -> TolerableValue
  cot = rng.randn(n, 1).astype(np.float32)

  x = paddle.to_tensor(logits, stop_gradient=False)
  z = paddle.take_along_axis(x, paddle.to_tensor(samples), axis=1)
  if remove:
    hits = np.zeros((n, t + s), np.float32)
    for i in range(n):
      true_set = set(samples[i, :t].tolist())
      for j in range(t, t + s):
        if samples[i, j] in true_set:
          hits[i, j] = 1e20
    z = z - paddle.to_tensor(hits)
  z = tolerable(z - tolerable(paddle.log(paddle.to_tensor(probs))))
  if t == 1:
    soft = F.one_hot(paddle.zeros([n], dtype="int64"), s + 1)
  else:
    soft = paddle.to_tensor(np.concatenate([np.full((n, t), 1.0 / t), np.zeros((n, s))], 1)
                            .astype(np.float32))
  loss = F.softmax_with_cross_entropy(z, soft, soft_label=True)
  if t == 1:
    loss = loss / t
  (loss * paddle.to_tensor(cot)).sum().backward()
  out = dict(logits=logits, label=label, samples=samples, probs=probs, cot=cot,
             loss=loss.numpy(), grad_logits=x.grad.numpy(), num_samples=np.int64(s),
             num_true=np.int64(t), remove=np.bool_(remove))
  return {f"{name}/{key}": val for key, val in out.items()}


def main():
  data = {}
  data.update(case("t1_hits", n=8, k=30, s=6, t=1, remove=True, seed=0))
  data.update(case("t1_nohits", n=8, k=30, s=6, t=1, remove=False, seed=1))
  data.update(case("t1_zero_prob", n=6, k=20, s=5, t=1, remove=True, seed=2, zero_prob=True))
  data.update(case("t3_hits", n=7, k=25, s=8, t=3, remove=True, seed=3))
  data.update(case("t2_nohits", n=7, k=25, s=8, t=2, remove=False, seed=4))
  names = sorted({key.split("/")[0] for key in data})
  data["cases"] = np.array(names)
  data["paddle_version"] = np.array(paddle.__version__)
  np.savez_compressed(OUT, **data)
  print("wrote", OUT, "cases:", names)


if __name__ == "__main__":
  main()
