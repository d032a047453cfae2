# MoSE tiny: the 1B model's shape (36 layers, exits 4/9/18/27/36, heads : kv heads = 4,
# intermediate = 12 x width) at width 128, so that a pre-training step runs in about a
# second on a laptop CPU. It is for learning the code path and for the local demo
# (python pretrain.py config/mose_tiny.py), not for benchmark numbers.
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
