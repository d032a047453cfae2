# MoSE small: the paper's ablation scale (paper 6.3: two 30M-parameter models on 3B tokens), for one GPU
# or a few CPU hours, resumable (python pretrain.py config/mose_small.py --init_from=resume continues exactly).
#   python prepare.py --max_len=512 --bpe_vocab=8192 && python pretrain.py config/mose_small.py
# Shape: 12 layers of width 512 (8 heads, 2 kv heads, MLP 4x), exits at the paper's fractions of depth
# (4/36 ... 36/36 of 12, rounded): 1, 3, 6, 9, 12.
# Arithmetic: 33.1M parameters in the blocks, 4.2M in the embedding; ~6 x 37M = 0.22 GFLOP a token
# forward + backward, plus attention. tokens per step = 32 x 512 x accum x world = 65,536 (accum derived);
# 10,000 steps = 655M tokens, ~18 tokens per parameter (compute-optimal ~20), ~1.5e17 FLOPs: a few hours
# on one modern GPU; on 2 CPU cores (~0.1 TFLOP/s effective) a few hours buy only a few % of it.
# Not run end to end here (no GPU was available): RESULTS.md says what was.

# model
n_layer = 12
n_embd = 512
n_head = 8
n_kv_head = 2
intermediate_size = 2048
exit_layers = [1, 3, 6, 9, 12]
conditional_size = 4
embed_std = 1.0
attn_dropout = 0.0
resid_dropout = 0.0
embd_dropout = 0.0

# data
out_dir = 'out/pretrain-small'
data_dir = 'data/icc'
tokenizer = 'data/tokenizer'
block_size = 512
batch_size = 32
total_batch_tokens = 65_536
max_steps = 10_000
warmup_steps = 500
learning_rate = 1e-3
lr_milestones = [(8_000, 0.3), (9_500, 0.1)]
log_interval = 20
eval_interval = 500
eval_batches = 20
ckpt_interval = 500
