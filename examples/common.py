"""Training machinery shared by the LM and VAE examples.

Config validation, the device mesh (data parallel over every local device with
a sharded ``jit``), orbax checkpoints, the metrics file and plot, and the
training loop with its progress bar and NaN/inf check.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import signal
import threading
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
    hints = [difflib.get_close_matches(k, list(schema), n=1) for k in unknown]
    hint = "".join(f" (did you mean {h[0]!r}?)" for h in hints if h) if len(unknown) == 1 else ""
    raise ValueError(f"unknown config key(s) {unknown}{hint}; valid keys are {sorted(schema)}")
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


# ------------------------------------------------- the run's config in the workdir

# Fields that may change between a run and its resumption: loop length, logging,
# evaluation size and device layout. Any other change makes the checkpoint another model.
RESUMABLE_FIELDS = frozenset({
    "num_train_steps", "eval_every_steps", "log_every_steps", "log_every", "checkpoint_every_steps",
    "eval_max_tokens", "eval_max_sentences", "num_samples", "num_devices", "mesh_shape"})


class WorkdirMismatch(ValueError):
  """The workdir holds a run of an incompatible config (reported in one line)."""


def _plain(config) -> dict:
  """JSON-comparable dict of a ConfigDict (tuples become lists)."""
  data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps(data, default=str))


def check_workdir_config(config, workdir: str):
  """Raises ``WorkdirMismatch`` if ``workdir/config.json`` differs in a non-resumable field."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  now = _plain(config)
  changed = sorted(k for k in set(saved) | set(now)
                   if k not in RESUMABLE_FIELDS and saved.get(k) != now.get(k))
  if changed:
    diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:4])
    more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
    raise WorkdirMismatch(
        f"{workdir} holds a checkpoint of another config ({diffs}{more}); use another --workdir, "
        "or delete it to start over")


def save_workdir_config(config, workdir: str):
  """Writes the run's config to ``workdir/config.json`` (process 0)."""
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(_plain(config), f, indent=1, sort_keys=True)
      f.write("\n")


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
    """Writes ``metrics.png``: a grid of panels, loss and perplexity first, one metric group each."""
    if jax.process_index() != 0 or not self.records:
      return None
    import matplotlib  # examples extra
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    names = sorted({k for r in self.records for k in r} - {"step"})
    # One panel for every *_loss, one for every *_ppl, one per other metric.
    groups = {"loss": [], "perplexity": []}
    for name in names:
      key = "loss" if name.endswith("loss") else "perplexity" if name.endswith("ppl") else name
      groups.setdefault(key, []).append(name)
    groups = {k: v for k, v in groups.items() if v}
    ncols = 2 if len(groups) in (2, 4) else min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(groups):]:
      ax.set_visible(False)
    for ax, (key, members) in zip(axes.flat, groups.items()):
      values = []
      for name in members:
        pts = [(r["step"], r[name]) for r in self.records if name in r and math.isfinite(r[name])]
        if pts:
          ax.plot(*zip(*pts), marker="." if len(pts) < 30 else None, label=name)
          values += [v for _, v in pts]
      ax.set_xlabel("step")
      ax.set_title(key)
      positive = [v for v in values if v > 0]
      if key == "perplexity" and positive and max(positive) / min(positive) > 20:
        ax.set_yscale("log")  # plain numbers at 1-2-5 steps, not 10^x
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
      else:
        ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=6))
      ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=6, integer=True))
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


class Interrupted(Exception):
  """Raised by ``fit`` after SIGINT/SIGTERM once the current step is checkpointed."""

  def __init__(self, step: int, signum: int):
    super().__init__(f"interrupted at step {step}; rerun the same command to resume")
    self.step, self.signum = step, signum


# Set by ``fit`` when the first training step starts: errors before it are setup mistakes.
TRAINING_STARTED = threading.Event()


class _StopRequests:
  """Turns SIGINT/SIGTERM into a flag the loop checks between steps (main thread only).

  A second Ctrl-C while the checkpoint is being written aborts at once.
  """

  def __init__(self):
    self.signum = None
    self._old = {}

  def _handle(self, signum, frame):
    self.signum = signum
    signal.signal(signum, self._old.get(signum, signal.SIG_DFL))  # a second signal: the default

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGINT, signal.SIGTERM):
        self._old[sig] = signal.getsignal(sig)
        signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._old.items():
      signal.signal(sig, handler)
    return False


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
    check_workdir_config(config, workdir)
    try:
      state = ckpt.restore(start, state)
    except (ValueError, KeyError, TypeError) as e:  # orbax: another tree or shapes
      raise WorkdirMismatch(
          f"the checkpoint at step {start} in {workdir} does not fit this config's model "
          f"({type(e).__name__}); use another --workdir, or delete it to start over") from e
  save_workdir_config(config, workdir)
  writer = MetricsWriter(workdir, start_step=start)
  total = config.num_train_steps
  bar = tqdm(total=total, initial=start, desc=desc, unit="step", dynamic_ncols=True,
             disable=jax.process_index() != 0, mininterval=0.5)
  if start:
    bar.write(f"resumed from checkpoint at step {start}")
  tokens, loss_sum, n_loss, t0 = 0, 0.0, 0, time.perf_counter()
  paused = 0.0  # evaluation and checkpoint time, left out of tokens/s
  stop = _StopRequests()
  TRAINING_STARTED.set()
  try:
    stop.__enter__()
    for step in range(start, total):
      if stop.signum is not None:  # Ctrl-C / SIGTERM: save this step, then stop
        if step > start and ckpt.latest_step() != step:
          ckpt.save(step, state)
        raise Interrupted(step, stop.signum)
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
        if results:
          writer.write(done, **results)
          bar.write(f"step {done}: " + ", ".join(f"{k}={v:.3f}" for k, v in results.items()))
        if on_eval is not None:
          on_eval(state, done)
        writer.plot(desc)
      if done % config.checkpoint_every_steps == 0 or done == total:
        ckpt.save(done, state)
      paused += time.perf_counter() - t_pause
  finally:
    stop.__exit__()
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

