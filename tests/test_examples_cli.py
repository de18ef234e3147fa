"""The example programs forgive: Ctrl-C resumes, workdir mismatches and user mistakes are one line.

Each test runs ``examples/lm/main.py`` as a user would (a subprocess, from a
directory outside the repository, by file path) on a tiny synthetic corpus.
"""
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

from examples import cli, common  # noqa: E402

pytestmark = pytest.mark.slow
MAIN = os.path.join(ROOT, "examples", "lm", "main.py")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("corpus")
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(200)]
  p = 1.0 / np.arange(1, 201)
  p /= p.sum()
  for split, n in (("train", 400), ("valid", 40), ("test", 40)):
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 12), p=p)) for _ in range(n)]
    (d / f"{split}.txt").write_text("\n".join(lines) + "\n")
  return str(d)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  cache = str(tmp_path_factory.mktemp("jax_cache"))
  return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
          "JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
          "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0", "PYTHONPATH": ""}


def command(corpus_dir, workdir, *extra):
  return [sys.executable, MAIN, f"--workdir={workdir}", "--config=configs/lm_lstm.py",
          f"--config.data_dir={corpus_dir}", "--config.seq_len=8", "--config.batch_size=8",
          "--config.emb_dim=16", "--config.hidden_dim=16", "--config.head=full",
          "--config.eval_max_tokens=100", "--config.log_every_steps=1",
          "--config.checkpoint_every_steps=1000", "--config.dropout_rate=0.0",
          "--config.num_devices=1", *extra]


def run(cmd, env, cwd):
  return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def final_line(stdout):
  lines = [line for line in stdout.splitlines() if line.startswith("final:")]
  assert len(lines) == 1, stdout[-2000:]
  return lines[0].split(" (metrics")[0]


def test_interrupt_saves_and_rerun_resumes(corpus_dir, env, tmp_path):
  """SIGINT mid-run checkpoints the current step; the rerun resumes there and ends as an
  uninterrupted run. (The interrupted run is given a huge num_train_steps so it cannot
  finish before the signal; num_train_steps may change on resumption.)"""
  workdir = tmp_path / "w"
  proc = subprocess.Popen(command(corpus_dir, workdir, "--config.num_train_steps=1000000",
                                  "--config.eval_every_steps=5"),
                          env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  for line in proc.stdout:  # wait until training is under way
    if line.startswith("step 5:"):
      break
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == cli.EXIT_INTERRUPTED, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  m = re.search(r"^interrupted at step (\d+); rerun the same command to resume$", out, re.M)
  assert m, out[-2000:]
  n = int(m.group(1))
  assert n >= 5 and os.path.isdir(workdir / "checkpoints" / str(n))
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
    (["--config.lerning_rate=0.1"], "unknown config field 'lerning_rate' (did you mean "
                                    "'learning_rate'?)"),
    (["--config.batch_size=many"], "--config.batch_size=many"),
    (["--config.dropout_rate=1.5"], "config.dropout_rate=1.5 is invalid"),
    (["--config=configs/no_such_config.py"], "config file 'configs/no_such_config.py' not found"),
    (["--config.data_dir=no/such/dir"], "is not a directory"),
    (["--wrkdir=x"], "unknown flag --wrkdir (did you mean 'workdir'?)"),
])
def test_user_mistakes_are_one_line(corpus_dir, env, tmp_path, extra, expected):
  out = run(command(corpus_dir, tmp_path / "w", "--config.num_train_steps=2", *extra), env,
            tmp_path)
  assert out.returncode == 2, out.stderr[-3000:]
  assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr, out.stderr
  assert out.stderr.startswith(os.path.basename(MAIN)) and expected in out.stderr, out.stderr


def test_help_lists_config_fields_with_comments(env, tmp_path):
  out = run([sys.executable, MAIN, "--help"], env, tmp_path)
  assert out.returncode == 0, out.stderr
  comments = cli.field_comments(os.path.join(ROOT, "configs", "lm_lstm.py"))
  assert len(comments) > 20
  for key, comment in comments.items():
    assert re.search(rf"^  {key} +=.*{re.escape(comment)}$", out.stdout, re.M), key
  assert "--workdir" in out.stdout


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
