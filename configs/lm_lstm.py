"""Default LM experiment: a small 1-layer LSTM with an adaptive-softmax head.

Trains on the built-in standard-library corpus (~2.5M train tokens, full
vocabulary of ~47k words) in a few minutes on a 2-core CPU.
Override any field on the command line, e.g. ``--config.head=full``.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  # Backbone: "lstm" or "transformer".
  config.model = "lstm"
  # Output layer: "full" | "adaptive" | "hsigmoid" | "sampled".
  config.head = "adaptive"
  # hsigmoid tree: "default" (complete binary tree) or "huffman" (from word counts).
  config.hsigmoid_tree = "default"
  # Adaptive softmax cluster boundaries (word ids sorted by frequency), vocabulary size excluded.
  config.adaptive_cutoffs = (2000, 10000)
  # Adaptive softmax: cluster i projects to hidden_dim / div_value**(i+1) features.
  config.adaptive_div_value = 4.0
  # Sampled softmax: negatives drawn per step (log-uniform); evaluation is exact.
  config.sampled_num_samples = 1024
  # Folder with train.txt/valid.txt/test.txt; "" uses the Python standard-library corpus.
  config.data_dir = ""
  # Keep at most this many vocabulary entries (0: every training word); the rest map to <unk>.
  config.max_vocab = 0
  # Words seen fewer times in train map to <unk>.
  config.min_count = 1
  # Tokens per training window (truncated back-propagation length).
  config.seq_len = 32
  # Global batch size (windows per step), split across devices.
  config.batch_size = 32
  # Word embedding size.
  config.emb_dim = 128
  # LSTM state size = head input features.
  config.hidden_dim = 128
  # Number of LSTM layers (Transformer blocks for the transformer).
  config.num_layers = 1
  # Attention heads (transformer only).
  config.num_heads = 4
  # Feed-forward width (transformer only).
  config.mlp_dim = 512
  # Dropout on embeddings and between layers.
  config.dropout_rate = 0.1
  # Peak AdamW learning rate.
  config.learning_rate = 3e-3
  # Linear warm-up steps to the peak learning rate.
  config.warmup_steps = 100
  # Global gradient-norm clipping threshold.
  config.grad_clip_norm = 1.0
  # AdamW decoupled weight decay.
  config.weight_decay = 0.0
  # Total training steps.
  config.num_train_steps = 1000
  # Validation perplexity every this many steps (and at the end).
  config.eval_every_steps = 250
  # Evaluate on the first this many tokens of valid/test (0: the whole split).
  config.eval_max_tokens = 20000
  # Progress-bar and metrics-file update interval (steps).
  config.log_every_steps = 20
  # Orbax checkpoint interval (steps); the run resumes from the latest.
  config.checkpoint_every_steps = 250
  # Seed for parameters, dropout, sampling and batch order.
  config.seed = 0
  # Devices to use for data parallelism (0: all local devices).
  config.num_devices = 0
  # Tie the output layer to the input embedding table (full head; emb_dim == hidden_dim).
  config.tie_embeddings = False
  # Device mesh, e.g. "data=4,model=2": batch split on data, output layer's vocabulary on model
  # ("": every device on data). With --distributed it spans the devices of every process.
  config.mesh_shape = ""
  return config
