"""Training machinery shared by the LM and VAE examples.

Config validation, the device mesh (data parallel over every local device with
a sharded ``jit``), orbax checkpoints, the metrics file and plot, and the
training loop with its progress bar and NaN/inf check.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# --------------------------------------------------------------------- config


def check_config(config, schema: Mapping[str, tuple[type | tuple, Callable[[Any], bool], str]]):
  """Validates ``config`` against ``schema``: no unknown or missing keys, right types and values.

  Args:
    config: an ``ml_collections.ConfigDict`` (or anything with ``to_dict()``/``keys()``).
    schema: ``{key: (types, predicate, what is expected)}``.

  Raises:
    ValueError: unknown or missing keys, or a value the predicate rejects.
    TypeError: a value of the wrong type.
  """
  keys = set(config.keys())
  unknown = sorted(keys - set(schema))
  if unknown:
    raise ValueError(f"unknown config key(s) {unknown}; valid keys are {sorted(schema)}")
  missing = sorted(set(schema) - keys)
  if missing:
    raise ValueError(f"config is missing key(s) {missing}")
  for key, (types, ok, expected) in schema.items():
    value = config[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
      raise TypeError(f"config.{key}={value!r} has type bool; expected {expected}")
    if not isinstance(value, types):
      raise TypeError(f"config.{key}={value!r} has type {type(value).__name__}; expected {expected}")
    if not ok(value):
      raise ValueError(f"config.{key}={value!r} is invalid; expected {expected}")


def positive(v) -> bool:
  return v > 0


def non_negative(v) -> bool:
  return v >= 0


def fraction(v) -> bool:
  return 0.0 <= v < 1.0


_INT = (int,)
_FLOAT = (int, float)

# Fields every trainer shares: data, optimisation, loop, devices.
BASE_SCHEMA = {
    "data_dir": (str, lambda v: True, "a path, or '' for the standard-library corpus"),
    "max_vocab": (_INT, lambda v: v == 0 or v >= 3, "0 (keep all) or an int >= 3"),
    "min_count": (_INT, positive, "an int >= 1"),
    "batch_size": (_INT, positive, "an int > 0"),
    "learning_rate": (_FLOAT, positive, "a float > 0"),
    "warmup_steps": (_INT, non_negative, "an int >= 0"),
    "grad_clip_norm": (_FLOAT, positive, "a float > 0"),
    "weight_decay": (_FLOAT, non_negative, "a float >= 0"),
    "num_train_steps": (_INT, positive, "an int > 0"),
    "eval_every_steps": (_INT, positive, "an int > 0"),
    "log_every_steps": (_INT, positive, "an int > 0"),
    "checkpoint_every_steps": (_INT, positive, "an int > 0"),
    "seed": (_INT, lambda v: True, "an int"),
    "num_devices": (_INT, non_negative, "0 (all local devices) or an int > 0"),
}

# ----------------------------------------------------------------- devices


def make_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (0: all of them)."""
  devices = jax.devices()
  if num_devices:
    if jax.process_count() > 1:
      raise ValueError(f"num_devices={num_devices} must be 0 (all devices) in a multi-process run")
    if num_devices > len(devices):
      raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices are available")
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), ("data",))


def check_batch_divisible(batch_size: int, mesh: Mesh, name: str = "batch_size"):
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(f"config.{name}={batch_size} must be divisible by the number of devices ({n})")


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def put_global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a global numpy batch (same on every process) sharded along axis 0 on ``data``.

  Each device takes its own rows, so the same code serves one host and many
  (after ``jax.distributed.initialize``) and any ``("data", ...)`` mesh.
  """
  sharding = data_sharded(mesh)
  # Every process has the whole batch; each device takes its block (any mesh layout).
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
          for k, v in batch.items()}


# -------------------------------------------------------------- checkpoints


class Checkpointer:
  """Saves and restores ``{"step", "params", "opt_state"}`` with orbax."""

  def __init__(self, directory: str, *, max_to_keep: int = 2):
    import orbax.checkpoint as ocp  # examples extra
    self._ocp = ocp
    self._mgr = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def save(self, step: int, state: Any):
    self._mgr.save(step, args=self._ocp.args.StandardSave(state))

  def restore(self, step: int, target: Any) -> Any:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), target)
    return self._mgr.restore(step, args=self._ocp.args.StandardRestore(abstract))

  def close(self):
    self._mgr.wait_until_finished()
    self._mgr.close()


# ------------------------------------------------------------------ metrics


class MetricsWriter:
  """Appends one JSON object per line to ``workdir/metrics.jsonl`` and plots it."""

  def __init__(self, workdir: str, *, start_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.records: list[dict] = []
    if os.path.exists(self.path):  # resume: drop records past the restored step
      with open(self.path) as f:
        self.records = [r for r in map(json.loads, filter(str.strip, f))
                        if r["step"] <= start_step]
    self._rewrite()

  def _rewrite(self):
    if jax.process_index() != 0:
      return
    with open(self.path, "w") as f:
      for r in self.records:
        f.write(json.dumps(r) + "\n")

  def write(self, step: int, **metrics):
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    self.records.append(record)
    if jax.process_index() == 0:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")

  def plot(self, title: str = ""):
    """Writes ``metrics.png``: every metric against the step, one panel each."""
    if jax.process_index() != 0 or not self.records:
      return None
    import matplotlib  # examples extra
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = sorted({k for r in self.records for k in r} - {"step"})
    # One panel for every *_loss, one for every *_ppl, one per other metric.
    groups = {}
    for name in names:
      key = "loss" if name.endswith("loss") else "perplexity" if name.endswith("ppl") else name
      groups.setdefault(key, []).append(name)
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.2), squeeze=False)
    for ax, (key, members) in zip(axes[0], groups.items()):
      for name in members:
        pts = [(r["step"], r[name]) for r in self.records if name in r]
        ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=name)
      ax.set_xlabel("step")
      ax.set_title(key)
      if key == "perplexity":
        ax.set_yscale("log")
      if len(members) > 1 or key != members[0]:
        ax.legend(fontsize="small")
      ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = os.path.join(os.path.dirname(self.path), "metrics.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------- the loop


def check_finite(loss: float, step: int):
  if not math.isfinite(loss):
    raise FloatingPointError(
        f"training loss became {loss} at step {step}; lower config.learning_rate, "
        "check config.grad_clip_norm, or resume from the last checkpoint")


def fit(*, config, workdir: str, state, train_step: Callable, get_batch: Callable[[int], tuple[dict, int]],
        evaluate: Callable[[Any], dict[str, float]], mesh: Mesh, desc: str = "train",
        on_eval: Callable[[Any, int], None] | None = None) -> tuple[Any, list[dict]]:
  """Runs ``train_step`` from the last checkpoint (if any) to ``config.num_train_steps``.

  Args:
    config: needs ``num_train_steps``, ``eval_every_steps``, ``log_every_steps``
      and ``checkpoint_every_steps``.
    workdir: checkpoints in ``workdir/checkpoints``, metrics in
      ``workdir/metrics.jsonl`` and ``workdir/metrics.png``.
    state: the initial ``{"step", "params", "opt_state"}`` (replicated on ``mesh``).
    train_step: jitted ``(state, batch) -> (state, metrics)``; ``metrics["loss"]``
      is the global mean loss of the step.
    get_batch: ``step -> (global numpy batch, number of target tokens)``;
      a pure function of the step, so a resumed run sees the same batches.
    evaluate: ``state -> {name: value}``, run every ``eval_every_steps`` and at the end.
    mesh: the device mesh.
    desc: progress-bar label.
    on_eval: optional callback after each evaluation.

  Returns:
    The final state and the list of metric records.
  """
  from tqdm.auto import tqdm  # examples extra

  os.makedirs(workdir, exist_ok=True)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  start = ckpt.latest_step() or 0
  if start:
    state = ckpt.restore(start, state)
  writer = MetricsWriter(workdir, start_step=start)
  total = config.num_train_steps
  bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True,
             disable=jax.process_index() != 0, mininterval=0.5)
  if start:
    bar.write(f"resumed from checkpoint at step {start}")
  tokens, loss_sum, n_loss, t0 = 0, 0.0, 0, time.perf_counter()
  paused = 0.0  # evaluation and checkpoint time, left out of tokens/s
  try:
    for step in range(start, total):
      batch, num_tokens = get_batch(step)
      state, metrics = train_step(state, put_global_batch(batch, mesh))
      loss = float(metrics["loss"])
      check_finite(loss, step + 1)
      tokens, loss_sum, n_loss = tokens + num_tokens, loss_sum + loss, n_loss + 1
      if step == start:  # tokens/s excludes the first step (compilation)
        tokens, t0, paused = 0, time.perf_counter(), 0.0
      done = step + 1
      bar.update(1)
      if done % config.log_every_steps == 0 or done == total:
        dt = time.perf_counter() - t0 - paused
        rate = tokens / dt if dt > 0 and tokens else 0.0
        extra = {k: float(v) for k, v in metrics.items() if k != "loss"}
        bar.set_postfix(loss=f"{loss_sum / n_loss:.3f}", tok_s=f"{rate:,.0f}")
        writer.write(done, train_loss=loss_sum / n_loss, tokens_per_sec=rate, **extra)
        tokens, loss_sum, n_loss, t0, paused = 0, 0.0, 0, time.perf_counter(), 0.0
      t_pause = time.perf_counter()
      if done % config.eval_every_steps == 0 or done == total:
        results = evaluate(state)
        writer.write(done, **results)
        bar.write(f"step {done}: " + ", ".join(f"{k}={v:.3f}" for k, v in results.items()))
        if on_eval is not None:
          on_eval(state, done)
        writer.plot(desc)
      if done % config.checkpoint_every_steps == 0 or done == total:
        ckpt.save(done, state)
      paused += time.perf_counter() - t_pause
  finally:
    bar.close()
    ckpt.close()
  return state, writer.records


def eval_nll_sum(eval_step: Callable, state, batches: list[dict], mesh: Mesh) -> tuple[float, float]:
  """Sums ``eval_step``'s ``(nll_sum, token_count)`` over ``batches`` in float64."""
  nll, count = 0.0, 0.0
  for b in batches:
    s, c = eval_step(state, put_global_batch(b, mesh))
    nll, count = nll + float(s), count + float(c)
  return nll, count


def perplexity(nll_sum: float, count: float) -> float:
  mean = nll_sum / max(count, 1.0)
  return math.exp(mean) if mean < 700 else math.inf


def adam_with_clipping(config):
  """AdamW with linear warm-up, cosine-free constant rate, and global-norm clipping."""
  import optax
  schedule = optax.linear_schedule(0.0, config.learning_rate, max(config.warmup_steps, 1))
  return optax.chain(
      optax.clip_by_global_norm(config.grad_clip_norm),
      optax.adamw(schedule, weight_decay=config.weight_decay))

