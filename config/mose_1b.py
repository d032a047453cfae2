# MoSE 1B, the released configuration (paper 3 and 3.1; official config.json).
#   one node:  torchrun --nproc_per_node=8 pretrain.py config/mose_1b.py
#   N nodes:   torchrun --nnodes=N --node_rank=R --nproc_per_node=8 \
#                       --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 pretrain.py config/mose_1b.py
# Batch arithmetic: tokens per step = batch_size x block_size x grad_accum x world_size
#   = 8 x 2,048 x 256 x 1 GPU  = 16 x 2,048 x 16 x 8 GPUs = 16 x 2,048 x 2 x 64 GPUs = 4,194,304 (4M, paper 3.1);
#   pretrain.py derives grad_accum from total_batch_tokens / (batch_size x block_size x world_size).
# 245,000 steps x 4M tokens ~ 1T tokens of The Stack v2.

# model (ModularStarEncoder config.json)
n_layer = 36
n_embd = 1024
n_head = 16
n_kv_head = 4
intermediate_size = 12288
rope_theta = 999999.4420358813
norm_eps = 1e-5
bias = True
attn_dropout = 0.1
resid_dropout = 0.1
embd_dropout = 0.1
init_std = 0.018042
exit_layers = [4, 9, 18, 27, 36]
conditional_size = 4

# batch (the schedule and optimiser defaults of pretrain.py are the paper's)
block_size = 2048
batch_size = 8                  # per GPU; accum = 4,194,304 / (8 x 2,048 x world): 32 on one 8-GPU node
total_batch_tokens = 4_194_304
max_steps = 245_000
