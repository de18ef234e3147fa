"""Writes tests/fixtures/hsigmoid_paddle.npz with PaddlePaddle's own numbers.

Run with the Paddle venv (imports paddle, never jax):

  .peers/paddle/bin/python tests/make_fixtures_hsigmoid_paddle.py

Each case stores the inputs (x, label, weight, optional bias, optional
per-example path_table/path_code), the upstream cotangent ``g`` and Paddle's
``paddle.nn.functional.hsigmoid_loss`` output and the gradients of
``sum(out * g)`` w.r.t. x, weight and bias. Keys are ``<case>/<name>``.
The Huffman tree used by the custom cases is built here with an independent
heapq construction (not jax_bigsoftmax's), so it is a genuine input to Paddle.
"""
import heapq
import os

import numpy as np
import paddle
import paddle.nn.functional as F

OUT = os.path.join(os.path.dirname(__file__), "fixtures", "hsigmoid_paddle.npz")


def heap_huffman(counts):
  """Per-class (path_table, path_code) leaf->root, internal nodes 0..C-2."""
  c = len(counts)
  heap = [(float(n), i, i) for i, n in enumerate(counts)]  # (count, tiebreak, id)
  heapq.heapify(heap)
  parent, bit = {}, {}
  nxt = c
  while len(heap) > 1:
    n0, _, a = heapq.heappop(heap)
    n1, _, b = heapq.heappop(heap)
    parent[a], bit[a] = nxt, 0
    parent[b], bit[b] = nxt, 1
    heapq.heappush(heap, (n0 + n1, nxt, nxt))
    nxt += 1
  paths = []
  for leaf in range(c):
    nodes, bits, cur = [], [], leaf
    while cur in parent:
      nodes.append(parent[cur] - c)
      bits.append(bit[cur])
      cur = parent[cur]
    paths.append((nodes, bits))
  width = max(len(p[0]) for p in paths)
  table = -np.ones((c, width), np.int64)
  code = -np.ones((c, width), np.int64)
  for i, (nodes, bits) in enumerate(paths):
    table[i, : len(nodes)] = nodes
    code[i, : len(bits)] = bits
  return table, code


def run_case(store, name, rng, *, n, d, num_classes, bias=True, scale=1.0,
             custom=None, dtype="float32", pad_extra=0):
  x = (rng.standard_normal((n, d)) * scale).astype(dtype)
  if custom is None:
    rows = num_classes - 1
    label = rng.integers(0, num_classes, size=(n, 1)).astype(np.int64)
  else:
    table_c, code_c = custom
    rows = table_c.shape[0] - 1  # internal nodes of a full binary tree
    label = rng.integers(0, table_c.shape[0], size=(n, 1)).astype(np.int64)
  w = (rng.standard_normal((rows, d)) * 0.5).astype(dtype)
  b = (rng.standard_normal((rows, 1)) * 0.5).astype(dtype) if bias else None
  g = rng.uniform(0.5, 1.5, size=(n, 1)).astype(dtype)

  xt = paddle.to_tensor(x, stop_gradient=False)
  wt = paddle.to_tensor(w, stop_gradient=False)
  bt = paddle.to_tensor(b, stop_gradient=False) if bias else None
  kw = {}
  if custom is not None:
    pt = table_c[label[:, 0]]
    pc = code_c[label[:, 0]]
    if pad_extra:
      pt = np.concatenate([pt, -np.ones((n, pad_extra), np.int64)], 1)
      pc = np.concatenate([pc, -np.ones((n, pad_extra), np.int64)], 1)
    kw = dict(path_table=paddle.to_tensor(pt), path_code=paddle.to_tensor(pc))
    store[f"{name}/path_table"] = pt
    store[f"{name}/path_code"] = pc
  out = F.hsigmoid_loss(xt, paddle.to_tensor(label), num_classes, wt, bt, **kw)
  (out * paddle.to_tensor(g)).sum().backward()
  store[f"{name}/x"] = x
  store[f"{name}/label"] = label
  store[f"{name}/weight"] = w
  store[f"{name}/num_classes"] = np.array(num_classes)
  store[f"{name}/g"] = g
  store[f"{name}/out"] = out.numpy()
  store[f"{name}/dx"] = xt.grad.numpy()
  store[f"{name}/dweight"] = wt.grad.numpy()
  if bias:
    store[f"{name}/bias"] = b
    store[f"{name}/dbias"] = bt.grad.numpy()


def main():
  paddle.set_device("cpu")
  rng = np.random.default_rng(20260322)
  store = {}
  cases = []
  for c in (2, 3, 7, 8, 33, 1500):
    cases.append((f"default_c{c}", dict(n=16, d=6, num_classes=c)))
  cases.append(("default_c10_nobias", dict(n=12, d=5, num_classes=10, bias=False)))
  cases.append(("default_c13_clip", dict(n=16, d=6, num_classes=13, scale=60.0)))
  cases.append(("default_c9_f64", dict(n=10, d=4, num_classes=9, dtype="float64")))
  counts = np.array([50, 3, 7, 1, 1, 20, 9, 2, 30, 4, 12, 5, 1, 6, 8, 2, 15])
  table_c, code_c = heap_huffman(counts)
  store["huffman/counts"] = counts
  store["huffman/table"] = table_c
  store["huffman/code"] = code_c
  rows = len(counts) - 1
  cases.append(("custom_huffman", dict(n=16, d=6, num_classes=rows,
                                       custom=(table_c, code_c))))
  cases.append(("custom_huffman_pad", dict(n=12, d=5, num_classes=rows,
                                           custom=(table_c, code_c), pad_extra=3)))
  cases.append(("custom_huffman_nobias_clip", dict(n=12, d=5, num_classes=rows,
                                                   custom=(table_c, code_c),
                                                   bias=False, scale=60.0)))
  for name, kw in cases:
    run_case(store, name, rng, **kw)
  store["cases"] = np.array([name for name, _ in cases])
  store["paddle_version"] = np.array(paddle.__version__)
  os.makedirs(os.path.dirname(OUT), exist_ok=True)
  np.savez_compressed(OUT, **store)
  print(f"wrote {OUT} ({os.path.getsize(OUT)} bytes, {len(cases)} cases)")


if __name__ == "__main__":
  main()
