# Fine-tuning mose_tiny on a laptop CPU, after `python pretrain.py config/mose_tiny.py`:
#   python finetune.py config/finetune_tiny.py --task retrieval
#   python finetune.py config/finetune_tiny.py --task clone
# pairs per step = batch_size x accum x world = 64 x 1 x 1 = 64 (paper: 2,048 retrieval, 64 clone), half
# text-code and half code-code as in the paper; inputs cut at 128 tokens. A small model trained briefly
# needs what the paper's 1B model does not (README, diagnosis; each measured against the alternative):
# - lr 1e-3 (the paper's 1e-5 is for a 1B model and 2,048-pair batches), and 150x that (0.15) for the token
#   embedding, which starts at std 1: lexical matching is learnt in the embedding, and at 1e-3 it moves 0.1% a
#   step (5,440 pairs: MRR 18.0 / 17.9 / 17.0 / 15.9 / 13.0% at exits 1-8 against 8.0-12.0% at 1e-3, RESULTS.md);
# - the mean of the exit's token states as the embedding (pooling='mean'): the final <cls> state of a
#   briefly trained model carries almost nothing of the other tokens;
# - no projection heads (proj_heads=False): at width 128 a random two-layer head halves the MRR reached;
# - cosines x 20 (CodeSearchNet's NBoW scale) and no dropout.
tokenizer = 'data/tokenizer'
batch_size = 64
total_batch = 64
max_len = 128
max_steps = 300
warmup_steps = 20
learning_rate = 1e-3
embed_lr_mult = 150.0
pooling = 'mean'
proj_heads = False
logit_scale = 20.0
dropout = 0.0
eval_interval = 100
eval_max = 1000
ckpt_interval = 100
log_interval = 20
