# MoSE tiny36: the 1B model's shape (36 layers, exits 4/9/18/27/36, heads : kv heads = 4,
# intermediate = 12 x width) at width 128: a structural replica for speed comparisons
# (python bench.py config/mose_tiny36.py) and for reading the 1B code path on a laptop. With the
# released init and cl100k it does not learn in CPU budgets (RESULTS.md); the demo's recipe is
# config/mose_tiny.py.
# Batch arithmetic: tokens per step = batch_size x block_size x grad_accum x world_size.

# model
n_layer = 36
n_embd = 128
n_head = 4
n_kv_head = 1
intermediate_size = 1536
exit_layers = [4, 9, 18, 27, 36]
conditional_size = 4
attn_dropout = 0.0
resid_dropout = 0.0
embd_dropout = 0.0

# pre-training on a laptop CPU: python prepare.py --max_len=512 && python pretrain.py config/mose_tiny36.py
# tokens per step = batch_size x block_size x accum x world = 4 x 512 x 1 x 1 = 2,048 (bench.py prints the speed).
out_dir = 'out/pretrain'
block_size = 512
batch_size = 4
total_batch_tokens = 2048
max_steps = 300
warmup_steps = 20
learning_rate = 1e-3
# the paper's milestones at the same fractions of the run (120k/245k, 185k/245k, ...)
lr_milestones = [(147, 0.36), (226, 0.1), (269, 0.031), (282, 0.01), (294, 0.001)]
log_interval = 10
eval_interval = 50
eval_batches = 25
ckpt_interval = 50
