"""Command-line front end shared by the example programs: forgiving flags and errors.

* ``--help`` prints the usage, the flags and every config field with its comment.
* A user mistake (unknown or misspelt ``--config.*`` field, a bad value, a
  missing config file, a missing or empty data set, an incompatible workdir)
  prints one line ``<program>: error: ...`` and exits with status 2, no
  traceback. Errors raised once training has started are real failures and
  keep their traceback.
* ``--config=configs/x.py`` is looked up in the current directory, then in the
  repository, so the programs also run from another directory:
  ``python path/to/repo/examples/lm/main.py --workdir=runs/lm``.
* Ctrl-C / SIGTERM during training save a checkpoint (see
  ``examples.common.fit``); the program then exits with status 130.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
  """A mistake of the user's, reported as one line (exit status 2)."""


def fail(message: str, prog: str | None = None):
  """Prints ``<prog>: error: <first line of message>`` to stderr and exits with status 2."""
  prog = prog or _prog()
  line = " ".join(str(message).strip().split("\n", 1)[0].split())
  sys.stderr.write(f"{prog}: error: {line}\n")
  sys.stderr.flush()
  sys.exit(EXIT_USAGE)


def _prog() -> str:
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  if spec is not None and spec.name:
    return f"python -m {spec.name}"
  return os.path.basename(sys.argv[0]) if sys.argv else "example"


# ------------------------------------------------------------------ config files


def resolve_config_path(path: str) -> str:
  """``path`` if it exists, else the same relative path under the repository root."""
  if os.path.exists(path) or os.path.isabs(path):
    return path
  candidate = os.path.join(ROOT, path)
  return candidate if os.path.exists(candidate) else path


def load_config_file(path: str):
  """``get_config()`` of a config file; ``UsageError`` if it is missing or broken."""
  if not os.path.isfile(path):
    raise UsageError(f"config file {path!r} not found (looked in the current directory and in "
                     f"{os.path.join(ROOT, 'configs')})")
  spec = importlib.util.spec_from_file_location("_example_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    return module.get_config()
  except Exception as e:  # a syntax error in a user's config is a user mistake
    raise UsageError(f"config file {path!r} could not be loaded: {type(e).__name__}: {e}") from e


def field_comments(path: str) -> dict[str, str]:
  """``{field: comment}`` from the ``# comment`` lines just above each ``config.field = ...``.

  A config that varies another (``BASE = "other.py"``, a file beside it) has
  that file's comments, overridden by its own.
  """
  comments, pending = {}, []
  with open(path) as f:
    text = f.read()
  base = re.search(r'^BASE = "([^"]+)"', text, re.M)
  if base:
    comments.update(field_comments(os.path.join(os.path.dirname(path), base.group(1))))
  for line in text.splitlines():
    stripped = line.strip()
    if stripped.startswith("#"):
      pending.append(stripped.lstrip("#").strip())
      continue
    m = re.match(r"config\.(\w+)\s*=", stripped)
    if m:
      comments[m.group(1)] = " ".join(pending)
    pending = []
  return comments


def config_help(path: str) -> str:
  """One line per config field: name, default value and its comment."""
  config = load_config_file(path)
  comments = field_comments(path)
  width = max(len(k) for k in config.keys())
  shown = os.path.relpath(path, ROOT) if os.path.abspath(path).startswith(ROOT + os.sep) else path
  lines = [f"config fields of {shown} (override with --config.NAME=VALUE):"]
  for key in config.keys():
    value = repr(config[key])
    lines.append(f"  {key:<{width}} = {value:<14} {comments.get(key, '')}".rstrip())
  return "\n".join(lines)


def suggest(name: str, choices: Sequence[str]) -> str:
  """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
  close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
  return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------ flags


def _config_arg(argv: Sequence[str], name: str) -> tuple[int | None, str | None]:
  """(index, value) of the last ``--name=value`` / ``--name value`` argument."""
  found = (None, None)
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      found = (i, arg.split("=", 1)[1])
    elif arg == f"--{name}" and i + 1 < len(argv):
      found = (i + 1, argv[i + 1])
  return found


def _check_config_args(argv: list[str], default_config: str, name: str) -> str:
  """Resolves the config path in ``argv`` (in place) and refuses unknown ``--config.*`` fields."""
  index, value = _config_arg(argv, name)
  path, _, suffix = (value if value is not None else default_config).partition(":")
  path = resolve_config_path(path)
  if index is not None:
    prefix = f"--{name}=" if argv[index].startswith(f"--{name}=") else ""
    argv[index] = prefix + path + (f":{suffix}" if suffix else "")
  fields = list(load_config_file(path).keys())
  for arg in argv[1:]:
    m = re.match(rf"--{name}\.([^=.\s]+)", arg)
    if m and m.group(1) not in fields:
      raise UsageError(f"unknown config field {m.group(1)!r}{suggest(m.group(1), fields)}; "
                       "--help lists the fields")
  return path


def define_config_flag(default_config: str, help_text: str, *, name: str = "config"):
  """``config_flags.DEFINE_config_file`` after checking ``sys.argv``'s config arguments.

  ``config_flags`` reads the ``--config.*`` overrides of ``sys.argv`` when the
  flag is defined, so an unknown field must be caught before that to be one line.
  """
  from ml_collections import config_flags
  try:
    _check_config_args(sys.argv, default_config, name)
  except UsageError as e:
    fail(str(e))
  config_flags.DEFINE_config_file(name, default_config, help_text, lock_config=True)


def flags_parser(default_config: str, *, doc: str = "", name: str = "config") -> Callable:
  """An ``absl.app.run(..., flags_parser=...)`` parser with one-line errors and a full ``--help``."""

  def parse(argv: list[str]) -> list[str]:
    argv = list(argv)
    try:
      path = _check_config_args(argv, default_config, name)
      if any(a in ("-h", "--help", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
        print((doc or "").strip() + "\n")
        print(flags.FLAGS.main_module_help())
        print()
        print(config_help(path))
        sys.exit(0)
      rest = flags.FLAGS(argv)
      if len(rest) > 1:
        raise UsageError(f"unexpected arguments {rest[1:]}; flags look like --name=value")
      return rest
    except UsageError as e:
      fail(str(e))
    except flags.Error as e:
      message = str(e)
      m = re.match(r"Unknown command line flag '([^']+)'", message)
      if m:
        message = f"unknown flag --{m.group(1)}{suggest(m.group(1), list(flags.FLAGS))}"
      fail(message + "; --help lists the flags")
    except (OSError, AttributeError, KeyError, TypeError, ValueError) as e:  # config_flags' own
      fail(f"{type(e).__name__}: {e}")

  return parse


def run_training(train_and_evaluate: Callable, config, workdir: str):
  """Runs ``train_and_evaluate``; setup mistakes become one line, Ctrl-C a clean exit."""
  from examples import common
  common.TRAINING_STARTED.clear()
  try:
    return train_and_evaluate(config, workdir)
  except common.Interrupted as e:
    print(str(e), flush=True)
    sys.exit(EXIT_INTERRUPTED)
  except KeyboardInterrupt:  # before the loop started, or a second Ctrl-C while saving
    step = "before training started" if not common.TRAINING_STARTED.is_set() else "at once"
    print(f"\naborted {step}; rerun the same command to resume from the last checkpoint",
          flush=True)
    sys.exit(EXIT_INTERRUPTED)
  except common.WorkdirMismatch as e:
    fail(str(e))
  except (ValueError, TypeError, FileNotFoundError, NotADirectoryError) as e:
    if common.TRAINING_STARTED.is_set():
      raise  # a failure during training is a bug or a divergence: keep the traceback
    fail(str(e))


# ------------------------------------------------------------------- programs


def main(doc: str, *, config: str, workdir: str, train: str, distributed: bool = True) -> None:
  """The ``main.py`` of every example program.

  Defines ``--workdir``, ``--config`` (default ``config``, a path relative to
  the repository) and, with ``distributed``, the ``jax.distributed`` flags;
  parses ``sys.argv`` with :func:`flags_parser` and runs
  ``<train>.train_and_evaluate(config, workdir)`` through :func:`run_training`.

  Args:
    doc: the program's docstring (the head of ``--help``).
    config: default config file, relative to the repository root.
    workdir: default ``--workdir``.
    train: the module holding ``train_and_evaluate`` (e.g. ``"examples.lm.train"``).
    distributed: offer ``--distributed`` (multi-process training).
  """
  from absl import app, logging

  default = os.path.join(ROOT, config)
  flags.DEFINE_string("workdir", workdir, "Checkpoints, metrics and outputs go here.")
  define_config_flag(default, "Experiment config file.")
  if distributed:
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (multi-host).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
    flags.DEFINE_integer("process_id", None, "This process's id (with --distributed).")
  FLAGS = flags.FLAGS

  def run(argv):
    del argv  # checked by flags_parser
    logging.set_verbosity(logging.WARNING)  # keep orbax's INFO lines off the progress bar
    if distributed and FLAGS.distributed:
      import jax
      if getattr(jax.config, "jax_cpu_collectives_implementation", "gloo") in (None, "none"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes
      jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    module = importlib.import_module(train)
    run_training(module.train_and_evaluate, FLAGS.config, FLAGS.workdir)

  app.run(run, flags_parser=flags_parser(default, doc=doc))
