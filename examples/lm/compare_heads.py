r"""Trains the same LM with every head and compares them: same time, or same tokens.

Usage (from the repository root)::

  python -m examples.lm.compare_heads --budget_s=120 --out=examples/results/compare_heads_cpu.md
  python -m examples.lm.compare_heads --mode=tokens --epochs=2 \
      --heads=full,adaptive,hsigmoid,hsigmoid/huffman,sampled/256,sampled/1024 \
      --out=examples/results/quality_lstm.md

``--mode=tokens`` (the quality study): every head trains for ``--epochs`` passes
over the training split, in ``--evals`` segments run round-robin; after each,
exact validation perplexity is recorded against tokens and training seconds.
Heads short of the full head's final perplexity then keep training until they
reach it or have trained as long as the full head (``--noextend``: stop at
equal tokens). It writes a Markdown table (with the targets checked against it), a two-panel
PNG (validation perplexity vs tokens and vs seconds) and the curves as JSON.
``sampled/256`` is the sampled head with 256 negatives.

``--mode=time`` (default): each head gets ``budget_s`` seconds of training (compilation excluded: one
warm-up step first). To share machine noise fairly the budget is cut into
``--slices`` slices run round-robin (full, adaptive, hsigmoid, hsigmoid/huffman,
sampled, full, ...), each head keeping its own state and batch sequence.
Validation perplexity is then computed for every head with exact
log-probabilities on the same validation tokens (``config.eval_max_tokens``).
``--quick`` uses a tiny budget and vocabulary for a smoke run.
"""
from __future__ import annotations

import os
import platform
import time

if not __package__:  # run as a file (python path/to/examples/lm/compare_heads.py)
  import sys
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags, logging  # noqa: E402

from examples import cli  # noqa: E402

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "lm_lstm.py")
FLAGS = flags.FLAGS
cli.define_config_flag(os.path.normpath(_DEFAULT), "Base LM config.")
flags.DEFINE_float("budget_s", 120.0, "Training seconds per head (compilation excluded).")
flags.DEFINE_integer("slices", 6, "Round-robin slices the budget is cut into.")
flags.DEFINE_list("heads", ["full", "adaptive", "hsigmoid", "hsigmoid/huffman", "sampled"],
                  "Heads to compare (hsigmoid/huffman = hsigmoid with the Huffman tree).")
flags.DEFINE_enum("mode", "time", ["time", "tokens"],
                  "time: same wall-clock budget per head; tokens: same number of training "
                  "tokens per head, with validation curves (quality study).")
flags.DEFINE_float("epochs", 2.0, "tokens mode: passes over the training split per head.")
flags.DEFINE_integer("evals", 10, "tokens mode: validation points along the run.")
flags.DEFINE_bool("extend", True, "tokens mode: heads short of full's final perplexity keep "
                  "training until they reach it or have trained as long as full.")
flags.DEFINE_string("out", "", "Also write the report to this file (tokens mode: the .md, with "
                    ".png and .json beside it; default runs/quality_<model>.md).")
flags.DEFINE_bool("quick", False, "Tiny budget and vocabulary (smoke test).")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown CPU"


def _head_config(config, name: str):
  """``config`` with the head ``name`` selected: ``hsigmoid/huffman`` picks the tree,
  ``sampled/256`` the number of negatives."""
  head, _, option = name.partition("/")
  c = config.copy_and_resolve_references()
  c.unlock()
  c.head = head
  if head == "hsigmoid":
    c.hsigmoid_tree = option or "default"
  elif head == "sampled" and option:
    if not option.isdigit():
      raise ValueError(f"head {name!r}: expected sampled/<number of negatives>, e.g. sampled/256")
    c.sampled_num_samples = int(option)
  elif option:
    raise ValueError(f"head {name!r}: only hsigmoid/<tree> and sampled/<n> take an option")
  return c


def _setup(config, heads_to_run):
  """Data, mesh and one compiled, warmed-up run (state, steps) per head."""
  import jax

  from examples import common
  from examples.lm import train

  train.check_config(config)
  mesh = common.make_mesh(config.num_devices)
  common.check_batch_divisible(config.batch_size, mesh)
  vocab, streams = train.load_data(config)
  runs = []
  for name in heads_to_run:
    c = _head_config(config, name)
    train.check_config(c)
    model, tx, _ = train.build(c, vocab)
    state = train.init_state(model, tx, c, mesh)
    train_step, eval_step = train.make_steps(model, tx, mesh, c.seed)
    t0 = time.perf_counter()
    batch = common.put_global_batch(
        train.train_batch(streams["train"], 0, batch_size=c.batch_size, seq_len=c.seq_len,
                          seed=c.seed), mesh)
    state, m = train_step(state, batch)  # compile + first step, not timed
    common.check_finite(float(m["loss"]), 1)
    runs.append({"name": name, "state": state, "train_step": train_step, "eval_step": eval_step,
                 "step": 1, "seconds": 0.0, "tokens": 0, "compile_s": time.perf_counter() - t0,
                 "params": sum(x.size for x in jax.tree.leaves(state["params"])), "loss": []})
    print(f"{name}: compiled in {runs[-1]['compile_s']:.1f}s, {runs[-1]['params']:,} params",
          flush=True)
  return mesh, vocab, streams, runs


def _train_until(r, config, streams, mesh, *, seconds=None, steps=None):
  """Trains run ``r`` for ``seconds`` of wall clock or up to step ``steps``; times it."""
  from examples import common
  from examples.lm import train
  start = time.perf_counter()
  while (time.perf_counter() - start < seconds) if seconds is not None else r["step"] < steps:
    batch = common.put_global_batch(
        train.train_batch(streams["train"], r["step"], batch_size=config.batch_size,
                          seq_len=config.seq_len, seed=config.seed), mesh)
    r["state"], m = r["train_step"](r["state"], batch)
    loss = float(m["loss"])  # also waits for the step to finish
    common.check_finite(loss, r["step"] + 1)
    r["loss"].append(loss)
    r["step"] += 1
    r["tokens"] += config.batch_size * config.seq_len
  r["seconds"] += time.perf_counter() - start


def _eval_ppl(r, batches, mesh) -> float:
  from examples import common
  return common.perplexity(*common.eval_nll_sum(r["eval_step"], r["state"], batches, mesh))


def _eval_batches(config, stream):
  from examples.lm import train
  return train.eval_batches(stream, batch_size=config.batch_size, seq_len=config.seq_len,
                            max_tokens=config.eval_max_tokens)


def _finish(r):
  tail = r["loss"][-50:]
  r["train_loss"] = sum(tail) / len(tail)
  r["tokens_per_s"] = r["tokens"] / r["seconds"]
  del r["state"], r["train_step"], r["eval_step"]


def compare(config, heads_to_run, budget_s: float, slices: int) -> list[dict]:
  """Round-robin training of every head for the same time; returns one result dict per head."""
  mesh, _, streams, runs = _setup(config, heads_to_run)
  valid = _eval_batches(config, streams["valid"])
  per_slice = budget_s / slices
  for s in range(slices):
    for r in runs:
      _train_until(r, config, streams, mesh, seconds=per_slice)
    print(f"slice {s + 1}/{slices}: " + ", ".join(f"{r['name']} {r['step']} steps" for r in runs),
          flush=True)
  for r in runs:
    r["valid_ppl"] = _eval_ppl(r, valid, mesh)
    _finish(r)
  return runs


def compare_equal_tokens(config, heads_to_run, epochs: float, evals: int,
                         progress_path: str = "", extend: bool = True) -> tuple[list[dict], int]:
  """Every head trains for the same number of tokens (``epochs`` passes over train).

  Training is cut into ``evals`` segments run round-robin over the heads (so
  they share the machine's noise); after each segment every head's exact
  validation perplexity is recorded with its tokens and training seconds so far
  (evaluation not timed). With ``extend``, a head that has not reached the base
  head's (``full``, else the first) final validation perplexity then keeps
  training, segment by segment, until it does or has trained as long as the
  base head did. Returns ``(runs, steps)``; each run has ``curve``:
  ``[{"tokens", "seconds", "valid_ppl"}]`` (extension points marked
  ``"extended"``), and ``valid_ppl``, ``test_ppl``, ``seconds`` at equal tokens.
  """
  import math
  mesh, _, streams, runs = _setup(config, heads_to_run)
  tokens_per_step = config.batch_size * config.seq_len
  steps = max(evals, math.ceil(epochs * len(streams["train"]) / tokens_per_step))
  print(f"equal tokens: {steps:,} steps x {tokens_per_step:,} tokens = {steps * tokens_per_step:,}"
        f" tokens per head ({steps * tokens_per_step / len(streams['train']):.2f} epochs of "
        f"{len(streams['train']):,} train tokens)", flush=True)
  valid = _eval_batches(config, streams["valid"])

  def segment(r, target, **mark):
    _train_until(r, config, streams, mesh, steps=target)
    r["curve"].append({"tokens": r["step"] * tokens_per_step, "seconds": r["seconds"],
                       "valid_ppl": _eval_ppl(r, valid, mesh), **mark})

  for r in runs:
    r["curve"] = []
  for e in range(1, evals + 1):
    target = round(steps * e / evals)
    for r in runs:
      segment(r, target)
    print(f"segment {e}/{evals} (step {target:,}): " + ", ".join(
        f"{r['name']} ppl {r['curve'][-1]['valid_ppl']:.1f} at {r['seconds']:.0f}s"
        for r in runs), flush=True)
    if progress_path:
      _write_json(progress_path, config, runs, steps)
  test = _eval_batches(config, streams["test"])
  for r in runs:
    r["valid_ppl"] = r["curve"][-1]["valid_ppl"]
    r["test_ppl"] = _eval_ppl(r, test, mesh)
    r["equal_seconds"] = r["seconds"]
    r["equal_tokens_per_s"] = r["tokens"] / r["seconds"]
  base = next((r for r in runs if r["name"] == "full"), runs[0])
  pending = [r for r in runs if extend and r is not base and r["valid_ppl"] > base["valid_ppl"]]
  while pending:
    for r in pending:
      segment(r, r["step"] + round(steps / evals), extended=True)
    print("extension: " + ", ".join(
        f"{r['name']} ppl {r['curve'][-1]['valid_ppl']:.1f} at {r['seconds']:.0f}s"
        for r in pending), flush=True)
    pending = [r for r in pending if r["curve"][-1]["valid_ppl"] > base["valid_ppl"]
               and r["seconds"] < base["seconds"]]
    if progress_path:
      _write_json(progress_path, config, runs, steps)
  for r in runs:
    _finish(r)
  return runs, steps


def _write_json(path, config, runs, steps):
  import json
  out = {"config": json.loads(json.dumps(config.to_dict(), default=str)), "steps": steps,
         "runs": [{k: v for k, v in r.items() if k not in ("state", "train_step", "eval_step",
                                                            "loss")} for r in runs]}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")


def first_reaching(curve, ppl: float):
  """The first evaluation point of ``curve`` with validation perplexity <= ``ppl`` (else None)."""
  return next((p for p in curve if p["valid_ppl"] <= ppl), None)


def _machine_lines(load_before, load_after):
  import flax
  import jax
  import optax
  return [
      f"Machine: {_cpu_model()}, {os.cpu_count()} cores, {len(jax.devices())} JAX device(s); "
      f"jax {jax.__version__}, flax {flax.__version__}, optax {optax.__version__}, "
      f"Python {platform.python_version()}.",
      f"Load average before/after: {load_before} / {load_after} on {os.cpu_count()} cores (this"
      " run keeps them busy itself; more than that means other jobs shared the CPU, and the"
      " round-robin slices share that noise).",
  ]


def _model_line(config, vocab_size):
  return (f"Model: {config.model}, emb {config.emb_dim}, hidden {config.hidden_dim}, "
          f"{config.num_layers} layer(s); batch {config.batch_size} x {config.seq_len} tokens; "
          f"vocabulary {vocab_size:,}; adaptive cutoffs {tuple(config.adaptive_cutoffs)}, "
          f"div {config.adaptive_div_value}; sampled {config.sampled_num_samples} negatives "
          f"unless the head's name says otherwise; learning rate {config.learning_rate}.")


def _valid_line(config):
  return (f"Validation perplexity: exact log-probabilities on the first "
          f"{config.eval_max_tokens or 'all'} validation tokens of the corpus "
          f"({config.data_dir or 'Python standard library'}).")


def report_equal_tokens(config, runs, steps, vocab_size, load_before, load_after) -> str:
  """Markdown: the table, the targets checked against the measurements, the machine."""
  base = next((r for r in runs if r["name"] == "full"), runs[0])
  tokens = steps * config.batch_size * config.seq_len
  extended = any(p.get("extended") for r in runs for p in r["curve"])
  lines = [
      f"Same number of training tokens per head: {tokens:,} ({steps:,} steps), "
      f"{sum(not p.get('extended') for p in runs[0]['curve'])} evaluations, heads trained "
      "round-robin between them."
      + (f" Then every head short of {base['name']}'s final validation perplexity kept "
         f"training until it reached it or had trained as long as {base['name']} "
         "(the last column)." if extended else ""),
      _model_line(config, vocab_size), _valid_line(config) + " Test perplexity likewise.",
      "",
      f"| head | tokens | train time (s) | tokens/s | valid ppl | test ppl | valid ppl vs "
      f"{base['name']} | time to {base['name']}'s final valid ppl (s) | params |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  target = base["valid_ppl"]

  def reach_text(r):
    point = first_reaching(r["curve"], target)
    if point is None:
      return None, f"not within {r['seconds']:,.0f} s"
    return point["seconds"], (f"{point['seconds']:,.0f}"
                               + (f" ({point['tokens'] / tokens:.2f}x the tokens)"
                                  if point.get("extended") else ""))

  for r in runs:
    lines.append(
        f"| {r['name']} | {tokens:,} | {r['equal_seconds']:,.0f} | "
        f"{r['equal_tokens_per_s']:,.0f} | {r['valid_ppl']:.1f} | {r['test_ppl']:.1f} | "
        f"{r['valid_ppl'] / target:.3f} | {reach_text(r)[1]} | {r['params']:,} |")
  lines += ["", f"Targets (checked on these numbers; ratio = valid ppl / {base['name']}'s, "
            "at equal tokens):"]
  for r in runs:
    if r is base:
      continue
    bound = 1.05 if r["name"] == "adaptive" else 1.15
    ratio = r["valid_ppl"] / target
    reach, _ = reach_text(r)
    faster = reach is not None and reach < base["equal_seconds"]
    lines.append(
        f"- {r['name']}: ratio {ratio:.3f} {'<=' if ratio <= bound else '>'} {bound:.2f} "
        f"({'met' if ratio <= bound else 'NOT met'}); reaches {base['name']}'s final perplexity "
        + (f"after {reach:,.0f} s vs {base['equal_seconds']:,.0f} s "
           f"({'met' if faster else 'NOT met'})" if reach is not None
           else f"not within {r['seconds']:,.0f} s of training (NOT met)") + ".")
  return "\n".join(lines + [""] + _machine_lines(load_before, load_after))


def plot_equal_tokens(runs, path: str, title: str = ""):
  """One PNG, two panels: validation perplexity vs tokens and vs training seconds."""
  import matplotlib  # examples extra
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from matplotlib import ticker
  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  for r in runs:
    tok = [p["tokens"] / 1e6 for p in r["curve"]]
    sec = [p["seconds"] for p in r["curve"]]
    ppl = [p["valid_ppl"] for p in r["curve"]]
    axes[0].plot(tok, ppl, marker=".", label=r["name"])
    axes[1].plot(sec, ppl, marker=".", label=r["name"])
  plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
  for ax, xlabel in zip(axes, ("training tokens (millions)", "training wall-clock seconds")):
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation perplexity (exact)")
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0, 7.0)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
  equal = max(p["tokens"] for r in runs for p in r["curve"] if not p.get("extended")) / 1e6
  if any(p.get("extended") for r in runs for p in r["curve"]):
    axes[0].axvline(equal, color="gray", linestyle=":", linewidth=1)
    axes[0].set_title("equal tokens up to the dotted line, then catching up")
  else:
    axes[0].set_title("equal tokens")
  axes[1].set_title("same curves against time")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def report(config, runs, budget_s, slices, vocab_size, load_before, load_after) -> str:
  base = next((r for r in runs if r["name"] == "full"), runs[0])
  lines = [
      f"Same wall-clock budget per head: {budget_s:.0f} s of training (compilation excluded), "
      f"{slices} round-robin slices.",
      _model_line(config, vocab_size), _valid_line(config),
      "",
      "| head | steps | tokens/s | speed vs full | train loss (last 50) | valid ppl | ppl vs full | params |",
      "|---|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in runs:
    lines.append(
        f"| {r['name']} | {r['step']:,} | {r['tokens_per_s']:,.0f} | "
        f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x | {r['train_loss']:.3f} | "
        f"{r['valid_ppl']:.1f} | {r['valid_ppl'] / base['valid_ppl']:.3f} | {r['params']:,} |")
  lines += ["", "(train loss of `sampled` is its sampled training loss, not comparable to the "
            "others.)"]
  return "\n".join(lines + _machine_lines(load_before, load_after))


def run_equal_tokens(config, heads_to_run, *, epochs: float, evals: int, out: str,
                     extend: bool = True) -> str:
  """``compare_equal_tokens`` then writes ``out`` (Markdown), and beside it the same name
  with ``.png`` (the two-panel plot) and ``.json`` (every curve). Returns the report."""
  from examples.lm import train
  stem = os.path.splitext(out)[0]
  load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
  runs, steps = compare_equal_tokens(config, heads_to_run, epochs, evals,
                                     progress_path=stem + ".json", extend=extend)
  load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
  vocab, _ = train.load_data(config)
  text = report_equal_tokens(config, runs, steps, len(vocab), load_before, load_after)
  png = plot_equal_tokens(runs, stem + ".png",
                          f"{ {'lstm': 'LSTM'}.get(config.model, config.model.capitalize()) } LM, "
                          f"vocabulary {len(vocab):,}: every head, same tokens")
  _write_json(stem + ".json", config, runs, steps)
  with open(out, "w") as f:
    f.write(text + f"\n\n![validation perplexity vs tokens and vs seconds]({os.path.basename(png)})\n")
  return text


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  config = FLAGS.config.copy_and_resolve_references()
  budget, slices, epochs, evals = FLAGS.budget_s, FLAGS.slices, FLAGS.epochs, FLAGS.evals
  if FLAGS.quick:
    config.max_vocab, config.adaptive_cutoffs, config.sampled_num_samples = 2000, (200, 800), 64
    config.eval_max_tokens = 2000
    budget, slices, epochs, evals = 4.0, 2, 0.002, 2
  if FLAGS.mode == "tokens":
    out = FLAGS.out or os.path.join("runs", f"quality_{config.model}.md")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    print(run_equal_tokens(config, FLAGS.heads, epochs=epochs, evals=evals, out=out,
                           extend=FLAGS.extend))
    print(f"wrote {out} and {os.path.splitext(out)[0]}.png/.json")
    return
  load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
  runs = compare(config, FLAGS.heads, budget, slices)
  from examples.lm import train
  vocab, _ = train.load_data(config)
  load_after = " ".join(f"{x:.1f}" for x in os.getloadavg())
  text = report(config, runs, budget, slices, len(vocab), load_before, load_after)
  print(text)
  if FLAGS.out:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(os.path.normpath(_DEFAULT), doc=__doc__))
