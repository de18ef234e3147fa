"""Writes tests/fixtures/adaptive_torch.npz from torch.nn.AdaptiveLogSoftmaxWithLoss.

Run with the torch venv:  .peers/torch/bin/python tests/make_fixtures_adaptive_torch.py

Each case stores (under "<case>/<name>"): the config, the module's state dict
(torch layout), input x, target y, torch's output, loss, log_prob, predict and
the gradients of loss w.r.t. x and every parameter.
"""
import os

import numpy as np
import torch

torch.use_deterministic_algorithms(True)

CASES = {
    # name: (in_features, n_classes, cutoffs, div_value, head_bias, n, targets, x_scale)
    "basic": (16, 50, [5, 20], 2.0, False, 32, "zipf", 1.0),
    "head_bias": (16, 50, [5, 20], 4.0, True, 32, "zipf", 1.0),
    "three_tails": (32, 200, [10, 50, 120], 2.0, True, 64, "uniform", 1.0),
    "empty_clusters": (16, 60, [4, 12, 30], 2.0, False, 24, "head_and_last", 1.0),
    "one_tail": (16, 60, [4, 12, 30], 2.0, True, 20, "only_cluster_1", 1.0),
    "single_row": (12, 40, [8], 4.0, True, 1, "uniform", 1.0),
    "scalar_target": (12, 40, [8, 20], 3.0, False, 0, "uniform", 1.0),
    "large_inputs": (16, 50, [5, 20], 2.0, True, 32, "uniform", 60.0),
    "div1": (8, 30, [3, 9, 18], 1.0, False, 40, "uniform", 1.0),
}


def targets(kind, n, n_classes, cutoffs, rng):
  m = max(n, 1)
  if kind == "zipf":
    p = 1.0 / np.arange(1, n_classes + 1)
    y = rng.choice(n_classes, size=m, p=p / p.sum())
  elif kind == "uniform":
    y = rng.integers(0, n_classes, m)
  elif kind == "head_and_last":
    lo = cutoffs[-1]
    y = np.where(rng.random(m) < 0.5, rng.integers(0, cutoffs[0], m),
                 rng.integers(lo, n_classes, m))
  elif kind == "only_cluster_1":
    y = rng.integers(cutoffs[1], cutoffs[2], m)
  else:
    raise ValueError(kind)
  return y if n > 0 else y[0]


def main():
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  out = {}
  for name, (d, v, cut, div, hb, n, kind, scale) in CASES.items():
    m = torch.nn.AdaptiveLogSoftmaxWithLoss(d, v, cut, div_value=div, head_bias=hb)
    with torch.no_grad():  # make cluster tokens competitive so predict uses tails
      m.head.weight[cut[0]:] *= 3.0
    x_np = (rng.normal(size=(n, d) if n > 0 else (d,)) * scale).astype(np.float32)
    y_np = targets(kind, n, v, cut, rng).astype(np.int64)
    x = torch.tensor(x_np, requires_grad=True)
    res = m(x, torch.tensor(y_np))
    res.loss.backward()
    p = f"{name}/"
    out[p + "config"] = np.array([d, v, div, float(hb)], np.float64)
    out[p + "cutoffs"] = np.array(cut, np.int64)
    out[p + "x"], out[p + "y"] = x_np, y_np
    out[p + "output"] = res.output.detach().numpy()
    out[p + "loss"] = res.loss.detach().numpy()
    out[p + "grad/x"] = x.grad.numpy()
    for k, t in m.named_parameters():
      out[p + "sd/" + k] = t.detach().numpy()
      if t.grad is not None:  # a cluster with no target gets no gradient
        out[p + "grad/" + k] = t.grad.numpy()
    with torch.no_grad():
      x2 = torch.tensor(x_np.reshape(-1, d))
      out[p + "log_prob"] = m.log_prob(x2).numpy()
      out[p + "predict"] = m.predict(x2).numpy()
  path = os.path.join(os.path.dirname(__file__), "fixtures", "adaptive_torch.npz")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez_compressed(path, torch_version=np.array(torch.__version__), **out)
  print("wrote", path, os.path.getsize(path), "bytes")


if __name__ == "__main__":
  main()
