"""Generates tests/fixtures/exact_torch.npz with torch itself.

Run with the torch venv (2.13.0 CPU made the committed file; `bash benchmarks/setup_peers.sh torch`):
    .peers/torch/bin/python tests/make_fixtures_exact_torch.py
Each case stores the inputs in our layout (class axis LAST), the options as
JSON, torch's loss and torch's gradients. The tests never import torch.
"""
import json
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "exact_torch.npz")


def _class_axis_1(a):
  """Our class-last layout -> torch's class-axis-1 layout (contiguous)."""
  return np.ascontiguousarray(np.moveaxis(a, -1, 1) if a.ndim > 1 else a)


def main():
  rng = np.random.default_rng(1234)
  data = {"torch_version": np.array(torch.__version__)}
  cases = []

  def add(kind, arrays, opts, out, grads):
    i = len(cases)
    for k, v in arrays.items():
      data[f"c{i}_{k}"] = v
    data[f"c{i}_out"] = out
    for k, v in grads.items():
      data[f"c{i}_grad_{k}"] = v
    cases.append({"kind": kind, "opts": opts, "arrays": sorted(arrays), "grads": sorted(grads)})

  # cross_entropy / nll_loss on [N, C] and K-dim [N, d1, d2, C] (ours) = [N, C, d1, d2] (torch).
  shapes = [(16, 11), (4, 3, 5, 7), (9, 2), (7,)]
  for shape in shapes:
    c = shape[-1]
    for weighted in (False, True):
      for ignore_index in (-100, 1):
        for smoothing in (0.0, 0.1, 1.0):
          for reduction in ("mean", "sum", "none"):
            logits = (rng.normal(size=shape) * 3).astype(np.float32)
            labels = rng.integers(0, c, size=shape[:-1]).astype(np.int64)
            if labels.ndim and ignore_index == -100:
              labels.reshape(-1)[::5] = -100  # some ignored positions
            weight = rng.uniform(0.2, 2.0, size=c).astype(np.float32) if weighted else None
            cot = rng.normal(size=labels.shape if reduction == "none" else ()).astype(np.float32)
            t_logits = torch.tensor(_class_axis_1(logits), requires_grad=True)
            t_w = None if weight is None else torch.tensor(weight)
            opts = {"ignore_index": ignore_index, "reduction": reduction}
            arrays = {"logits": logits, "labels": labels}
            if weighted:
              arrays["weight"] = weight
            # cross_entropy
            out = F.cross_entropy(t_logits, torch.tensor(labels), weight=t_w,
                                  ignore_index=ignore_index, reduction=reduction,
                                  label_smoothing=smoothing)
            (out * torch.tensor(cot)).sum().backward()
            g = t_logits.grad.numpy()
            g = np.moveaxis(g, 1, -1) if logits.ndim > 1 else g
            add("cross_entropy", dict(arrays, cot=cot), dict(opts, label_smoothing=smoothing),
                out.detach().numpy(), {"logits": g})
            # nll_loss on log_softmax inputs (smoothing does not apply)
            if smoothing == 0.0:
              lp = np.asarray(torch.log_softmax(torch.tensor(logits), -1))
              t_lp = torch.tensor(_class_axis_1(lp), requires_grad=True)
              out = F.nll_loss(t_lp, torch.tensor(labels), weight=t_w,
                               ignore_index=ignore_index, reduction=reduction)
              (out * torch.tensor(cot)).sum().backward()
              g = t_lp.grad.numpy()
              g = np.moveaxis(g, 1, -1) if lp.ndim > 1 else g
              add("nll_loss", {"log_probs": lp, "labels": labels, "cot": cot,
                               **({"weight": weight} if weighted else {})},
                  opts, out.detach().numpy(), {"log_probs": g})

  # Every position ignored: torch gives NaN for the mean, 0 for the sum.
  for reduction in ("mean", "sum"):
    logits = rng.normal(size=(5, 4)).astype(np.float32)
    labels = np.full((5,), -100, np.int64)
    out = F.cross_entropy(torch.tensor(logits), torch.tensor(labels), reduction=reduction)
    add("cross_entropy", {"logits": logits, "labels": labels},
        {"ignore_index": -100, "reduction": reduction, "label_smoothing": 0.0},
        out.numpy(), {})

  # Linear layer + cross_entropy (reference for linear_cross_entropy), V not a power of 2.
  for x_shape, v, weighted, smoothing, reduction, use_bias in [
      ((32, 16), 1000, False, 0.0, "mean", True),
      ((32, 16), 1000, True, 0.1, "mean", True),
      ((3, 5, 8), 24, False, 0.2, "sum", False),
      ((40, 8), 333, True, 0.0, "none", True),
  ]:
    x = rng.normal(size=x_shape).astype(np.float32)
    d = x_shape[-1]
    W = (rng.normal(size=(v, d)) / np.sqrt(d)).astype(np.float32)
    b = rng.normal(size=(v,)).astype(np.float32) if use_bias else None
    labels = rng.integers(0, v, size=x.shape[:-1]).astype(np.int64)
    labels.reshape(-1)[::7] = -100
    cw = rng.uniform(0.2, 2.0, size=v).astype(np.float32) if weighted else None
    cot = rng.normal(size=labels.shape if reduction == "none" else ()).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    tW = torch.tensor(W, requires_grad=True)
    tb = None if b is None else torch.tensor(b, requires_grad=True)
    logits = F.linear(tx, tW, tb)
    out = F.cross_entropy(logits.reshape(-1, v), torch.tensor(labels).reshape(-1),
                          weight=None if cw is None else torch.tensor(cw),
                          reduction=reduction, label_smoothing=smoothing)
    if reduction == "none":
      out = out.reshape(labels.shape)
    (out * torch.tensor(cot)).sum().backward()
    arrays = {"inputs": x, "weight": W, "labels": labels, "cot": cot}
    grads = {"inputs": tx.grad.numpy(), "weight": tW.grad.numpy()}
    if b is not None:
      arrays["bias"] = b
      grads["bias"] = tb.grad.numpy()
    if cw is not None:
      arrays["class_weight"] = cw
    add("linear_cross_entropy", arrays,
        {"ignore_index": -100, "reduction": reduction, "label_smoothing": smoothing},
        out.detach().numpy(), grads)

  # Class-probability targets (torch's prob_target path): [N, C] and K-dim.
  for shape in [(12, 9), (3, 4, 6)]:
    c = shape[-1]
    for weighted in (False, True):
      for smoothing in (0.0, 0.15):
        for reduction in ("mean", "sum", "none"):
          logits = (rng.normal(size=shape) * 3).astype(np.float32)
          targets = rng.dirichlet(np.ones(c), size=shape[:-1]).astype(np.float32)
          weight = rng.uniform(0.2, 2.0, size=c).astype(np.float32) if weighted else None
          cot = rng.normal(size=shape[:-1] if reduction == "none" else ()).astype(np.float32)
          t_logits = torch.tensor(_class_axis_1(logits), requires_grad=True)
          out = F.cross_entropy(t_logits, torch.tensor(_class_axis_1(targets)),
                                weight=None if weight is None else torch.tensor(weight),
                                reduction=reduction, label_smoothing=smoothing)
          (out * torch.tensor(cot)).sum().backward()
          arrays = {"logits": logits, "targets": targets, "cot": cot}
          if weighted:
            arrays["weight"] = weight
          add("cross_entropy_prob", arrays, {"reduction": reduction, "label_smoothing": smoothing},
              out.detach().numpy(), {"logits": np.moveaxis(t_logits.grad.numpy(), 1, -1)})

  # Edges: a NaN row at an ignored position (torch masks it: finite loss and
  # gradients), and banned classes with -inf logits.
  for logits, labels in [
      (np.array([[0, 1, 2], [np.nan] * 3, [np.inf, -np.inf, 0]], np.float32),
       np.array([2, -100, -100])),
      (np.array([[-np.inf, -np.inf, 0, 0], [1, -np.inf, 2, -np.inf]], np.float32),
       np.array([2, 0])),
  ]:
    for reduction in ("mean", "sum", "none"):
      cot = rng.normal(size=labels.shape if reduction == "none" else ()).astype(np.float32)
      t_logits = torch.tensor(logits, requires_grad=True)
      out = F.cross_entropy(t_logits, torch.tensor(labels), reduction=reduction)
      (out * torch.tensor(cot)).sum().backward()
      add("cross_entropy", {"logits": logits, "labels": labels.astype(np.int64), "cot": cot},
          {"ignore_index": -100, "reduction": reduction, "label_smoothing": 0.0},
          out.detach().numpy(), {"logits": t_logits.grad.numpy()})

  data["cases"] = np.array(json.dumps(cases))
  np.savez_compressed(OUT, **data)
  print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
  main()
