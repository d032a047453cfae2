# Fine-tuning mose_tiny on a laptop CPU, after `python pretrain.py config/mose_tiny.py`:
#   python finetune.py config/finetune_tiny.py --task retrieval
#   python finetune.py config/finetune_tiny.py --task clone
# pairs per step = batch_size x accum x world = 16 x 1 x 1 = 16 (paper: 2,048 retrieval, 64 clone),
# inputs cut at 128 tokens: ~6 s a step on 2 cores. The paper's lr of 1e-5 is for 2,048-pair
# batches and a 1B model; this small model and batch learn faster at 1e-4.
batch_size = 16
total_batch = 16
max_len = 128
max_steps = 80
warmup_steps = 5
learning_rate = 1e-4
eval_interval = 40
eval_max = 300
ckpt_interval = 40
log_interval = 10
