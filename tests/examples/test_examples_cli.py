"""The example programs forgive: Ctrl-C resumes, workdir mismatches and user mistakes are one line.

Each test runs a trainer's ``main.py`` as a user would (a subprocess, from a directory
outside the repository, by file path) on a tiny synthetic corpus; the CLI behaviours are
tested on all four trainers (LM, NNX LM, VAE, word2vec).
"""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import ROOT

from examples import cli, common  # noqa: E402

pytestmark = pytest.mark.slow
MAIN = os.path.join(ROOT, "examples", "lm", "main.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
          "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "PYTHONPATH": ""}


# Each trainer with a tiny config: (main.py, default config, overrides for the tiny corpus).
_TINY_LM = ("--config.seq_len=8", "--config.batch_size=8", "--config.emb_dim=16",
            "--config.hidden_dim=16", "--config.head=full", "--config.eval_max_tokens=100",
            "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000",
            "--config.dropout_rate=0.0", "--config.num_devices=1")
PROGRAMS = {
    "lm": ("lm", "configs/lm_lstm.py", _TINY_LM),
    "lm_nnx": ("lm_nnx", "configs/lm_lstm.py", _TINY_LM),
    "vae": ("vae", "configs/vae.py", (
        "--config.head=full", "--config.batch_size=8", "--config.emb_dim=8",
        "--config.hidden_dim=8", "--config.latent_dim=2", "--config.max_len=10",
        "--config.eval_max_sentences=8", "--config.num_samples=1", "--config.num_devices=1",
        "--config.log_every_steps=1", "--config.checkpoint_every_steps=1000")),
    "word2vec": ("word2vec", "configs/word2vec.py", (
        "--config.max_tokens=0", "--config.max_vocab=0", "--config.min_count=1",
        "--config.emb_dim=8", "--config.batch_size=16", "--config.log_every=1",
        "--config.checkpoint_every_steps=1000", "--config.num_neighbours=2")),
}
# Training length of each, as config overrides.
LONG = {"lm": ("--config.num_train_steps=1000000", "--config.eval_every_steps=5"),
        "lm_nnx": ("--config.num_train_steps=1000000", "--config.eval_every_steps=5"),
        "vae": ("--config.num_train_steps=1000000", "--config.eval_every_steps=1000000"),
        "word2vec": ("--config.num_epochs=100000",)}


def main_py(program):
  return os.path.join(ROOT, "examples", PROGRAMS[program][0], "main.py")


def command(corpus_dir, workdir, *extra, program="lm"):
  _, config, tiny = PROGRAMS[program]
  return [sys.executable, main_py(program), f"--workdir={workdir}", f"--config={config}",
          f"--config.data_dir={corpus_dir}", *tiny, *extra]


def run(cmd, env, cwd):
  return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def final_line(stdout):
  lines = [line for line in stdout.splitlines() if line.startswith("final:")]
  assert len(lines) == 1, stdout[-2000:]
  return lines[0].split(" (metrics")[0]


def _interrupt(corpus_dir, env, tmp_path, program):
  """Starts ``program`` on a run too long to finish, SIGINTs it once training is under way
  (its metrics file exists) and returns the step it stopped at."""
  workdir = tmp_path / "w"
  proc = subprocess.Popen(command(corpus_dir, workdir, *LONG[program], program=program),
                          env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  metrics = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while not (metrics.exists() and metrics.read_text().count("\n") >= 3):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == cli.EXIT_INTERRUPTED, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  m = re.search(r"^interrupted at step (\d+); rerun the same command to resume$", out, re.M)
  assert m, out[-2000:]
  n = int(m.group(1))
  assert n >= 3 and os.path.isdir(workdir / "checkpoints" / str(n))
  return workdir, n


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_interrupt_saves_and_the_same_command_resumes(corpus_dir, env, tmp_path, program):
  """SIGINT mid-run checkpoints the current step; the same command resumes there."""
  workdir, n = _interrupt(corpus_dir, env, tmp_path, program)
  proc = subprocess.Popen(command(corpus_dir, workdir, *LONG[program], program=program),
                          env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  for line in proc.stdout:
    if line.startswith("resumed from checkpoint"):
      break
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert line.strip() == f"resumed from checkpoint at step {n}", (line, err[-3000:])
  assert proc.returncode == cli.EXIT_INTERRUPTED, err[-3000:]


def test_interrupted_lm_run_resumes_to_the_uninterrupted_result(corpus_dir, env, tmp_path):
  """The resumed run ends as an uninterrupted run (num_train_steps may change on resumption)."""
  workdir, n = _interrupt(corpus_dir, env, tmp_path, "lm")
  total = f"--config.num_train_steps={n + 3}"
  resumed = run(command(corpus_dir, workdir, total, "--config.eval_every_steps=5"), env, tmp_path)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from checkpoint at step {n}" in resumed.stdout
  straight = run(command(corpus_dir, tmp_path / "s", total, "--config.eval_every_steps=5"), env,
                 tmp_path)
  assert straight.returncode == 0, straight.stderr[-3000:]
  assert final_line(resumed.stdout) == final_line(straight.stdout)


def test_incompatible_workdir_is_one_line(corpus_dir, env, tmp_path):
  workdir = tmp_path / "w"
  first = run(command(corpus_dir, workdir, "--config.num_train_steps=2",
                      "--config.eval_every_steps=2"), env, tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  assert (workdir / "config.json").exists()
  other = run(command(corpus_dir, workdir, "--config.num_train_steps=4",
                      "--config.eval_every_steps=2", "--config.head=adaptive",
                      "--config.adaptive_cutoffs=(20,100)"), env, tmp_path)
  assert other.returncode == 2
  assert other.stderr.strip().count("\n") == 0, other.stderr
  assert "holds a checkpoint of another config" in other.stderr
  assert "head: 'full' -> 'adaptive'" in other.stderr


@pytest.mark.parametrize("extra,expected", [
    (["--config.batch_size=many"], "--config.batch_size=many"),
    (["--config.dropout_rate=1.5"], "config.dropout_rate=1.5 is invalid"),
    (["--config.data_dir=no/such/dir"], "is not a directory"),
])
def test_lm_mistakes_are_one_line(corpus_dir, env, tmp_path, extra, expected):
  out = run(command(corpus_dir, tmp_path / "w", "--config.num_train_steps=2", *extra), env,
            tmp_path)
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr
  assert out.stderr.startswith(os.path.basename(MAIN)) and expected in out.stderr, out.stderr


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize("extra,expected", [
    (["--config.lerning_rate=0.1"], "unknown config field 'lerning_rate' (did you mean "
                                    "'learning_rate'?)"),
    (["--config=configs/no_such_config.py"], "config file 'configs/no_such_config.py' not found"),
    (["--wrkdir=x"], "unknown flag --wrkdir (did you mean 'workdir'?)"),
    (["stray"], "unexpected arguments ['stray']"),
])
def test_user_mistakes_are_one_line(corpus_dir, env, tmp_path, extra, expected, program):
  out = run(command(corpus_dir, tmp_path / "w", *extra, program=program), env, tmp_path)
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr
  assert out.stderr.startswith("main.py: error:") and expected in out.stderr, out.stderr


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_help_lists_config_fields_with_comments(env, tmp_path, program):
  _, config, _ = PROGRAMS[program]
  out = run([sys.executable, main_py(program), "--help"], env, tmp_path)
  assert out.returncode == 0, out.stderr
  comments = cli.field_comments(os.path.join(ROOT, config))
  assert len(comments) > 10
  for key, comment in comments.items():
    assert re.search(rf"^  {key} +=.*{re.escape(comment)}$", out.stdout, re.M), key
  assert "--workdir" in out.stdout


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_runs_by_module_from_the_repository(env, program):
  out = run([sys.executable, "-m", f"examples.{PROGRAMS[program][0]}.main", "--help"], env, ROOT)
  assert out.returncode == 0 and "config fields of" in out.stdout, out.stderr[-3000:]


def test_a_variant_config_lists_its_default_s_comments(env, tmp_path):
  out = run([sys.executable, MAIN, "--config=configs/lm_transformer.py", "--help"], env, tmp_path)
  assert out.returncode == 0, out.stderr
  comments = cli.field_comments(os.path.join(ROOT, "configs", "lm_lstm.py"))
  assert re.search(r"^  model += 'transformer'", out.stdout, re.M)
  assert re.search(rf"^  seq_len +=.*{re.escape(comments['seq_len'])}$", out.stdout, re.M)


def test_plot_is_a_grid_with_loss_and_perplexity_first(tmp_path):
  import matplotlib.image
  writer = common.MetricsWriter(str(tmp_path))
  for step in range(1, 21):
    writer.write(step, train_loss=5 - step / 10, tokens_per_sec=1000.0, grad_norm=1.0, kl=0.5,
                 recon=3.0, kl_weight=step / 20)
    if step % 5 == 0:
      writer.write(step, valid_loss=5 - step / 20, valid_ppl=float(np.exp(5 - step / 20)))
  image = matplotlib.image.imread(writer.plot("test"))
  height, width = image.shape[:2]
  assert width <= 1400 and height >= 2 * 300  # 7 panels: 3 columns, 3 rows, not a strip



def test_vae_ends_with_a_final_line(corpus_dir, env, tmp_path):
  vae = os.path.join(ROOT, "examples", "vae", "main.py")
  out = run([sys.executable, vae, f"--workdir={tmp_path / 'w'}", f"--config.data_dir={corpus_dir}",
             "--config.head=full", "--config.batch_size=8", "--config.emb_dim=8",
             "--config.hidden_dim=8", "--config.latent_dim=2", "--config.max_len=10",
             "--config.num_train_steps=2", "--config.eval_every_steps=2",
             "--config.eval_max_sentences=8", "--config.num_samples=1", "--config.num_devices=1"],
            env, tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert re.search(r"^final: valid_elbo_ppl=[\d.]+ valid_recon=[\d.]+ valid_kl=[\d.]+ ",
                   out.stdout.splitlines()[-1]), out.stdout[-2000:]
