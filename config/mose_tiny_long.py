# MoSE tiny, pre-trained at compute-optimal tokens: the long CPU run (issue of the recipe's long run).
# Applied after mose_tiny (config files apply left to right):
#   python pretrain.py config/mose_tiny.py config/mose_tiny_long.py
#   python finetune.py config/finetune_tiny.py --task=retrieval --init_from=out/pretrain-long --max_steps=400
# Same shape as the demo (2.45M parameters in backbone + embedding); 10x its steps:
#   10,000 steps x 4,096 tokens = 41M tokens, 16.7 tokens per parameter (compute-optimal ~20; the demo: 1.7),
#   ~16 MFLOP a token -> ~6.6e14 FLOPs, ~63 min on 2 cores at the demo's ~10,900 tokens/s (bf16 autocast).
# 160k of the Debian corpus's 455k training sequences: a third of an epoch, so nothing is seen twice.
# Resumable: --init_from=resume continues exactly.
out_dir = 'out/pretrain-long'
max_steps = 10_000
warmup_steps = 200
lr_milestones = [(8_000, 0.3), (9_500, 0.1)]   # the last fifth at 0.3x, the last 5% at 0.1x (as mose_small)
log_interval = 100
eval_interval = 1_000
ckpt_interval = 500
