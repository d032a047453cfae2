# Fine-tuning mose_tiny on a laptop CPU, after `python pretrain.py config/mose_tiny.py`:
#   python finetune.py config/finetune_tiny.py --task retrieval
#   python finetune.py config/finetune_tiny.py --task clone
# pairs per step = batch_size x accum x world = 32 x 1 x 1 = 32 (paper: 2,048 retrieval, 64 clone);
# the paper's lr of 1e-5 is for 2,048-pair batches and a 1B model; a small model and batch learn faster at 1e-4.
batch_size = 32
total_batch = 32
max_len = 256
max_steps = 150
warmup_steps = 10
learning_rate = 1e-4
eval_interval = 50
eval_max = 500
ckpt_interval = 50
log_interval = 10
