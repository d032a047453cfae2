"""
Self-distilled MLM + in-context-classification pre-training of MoSE (paper 2.1, 2.2, 3.1).

Laptop CPU (a few minutes):      python pretrain.py config/mose_tiny.py
One GPU:                         python pretrain.py config/mose_1b.py --batch_size=8
One node, 8 GPUs:                torchrun --nproc_per_node=8 pretrain.py config/mose_1b.py
N nodes (run on each node R):    torchrun --nnodes=N --node_rank=R --nproc_per_node=8 \
                                     --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 pretrain.py config/mose_1b.py
Resume the newest checkpoint:    python pretrain.py config/mose_tiny.py --init_from=resume

The data are the ICC shards of prepare.py (or, with --objective=nsp, its next-sentence pairs:
the baseline of paper 6.3). Every step logs the loss, per-exit MLM loss and
accuracy, per-exit ICC accuracy, lr, tokens/s and MFU; the held-out repositories are evaluated
at intervals on all ranks; checkpoints are step-numbered, atomic and hold what an exact resume
needs (model, optimiser, every rank's RNG, data position, config).
"""
import os
import time
from dataclasses import fields

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from data import load_icc
from icc import OBJECTIVES
from model import EXIT_STATS, MoSE, MoSEConfig
from stage import MASTER, fail, make_out_dir, print0
from tokenizer import get_tokenizer
from training import (EpochSampler, Objective, UserError, all_reduce_sum, append_log, autocast_context,
                      check_milestones, check_model_tokenizer, leave_distributed, left_pad, list_checkpoints, load_model,
                      lr_at, mask_tokens, micro_batch_start, peak_flops, save_run, set_rng_state, setup_distributed, truncate_log)

# -----------------------------------------------------------------------------
# I/O
out_dir = 'out/pretrain'         # checkpoints and log.jsonl
data_dir = 'data/icc'            # ICC shards and manifest.json from prepare.py
objective = 'icc'                # what the <cls> classifier learns: 'icc' (paper 2.1) or 'nsp', BERT's next-sentence
                                 # pairs (paper 6.3's baseline: prepare.py --task=nsp, --data_dir=data/nsp); the
                                 # shards must hold it. Logs keep the key icc_acc for either
tokenizer = 'cl100k_base'        # must be the tokenizer the shards were built with
init_from = 'scratch'            # 'scratch', 'resume' (newest checkpoint in out_dir) or a released checkpoint dir
log_interval = 10                # steps between log lines
eval_interval = 250              # steps between evaluations on the held-out repositories (and at start / end)
eval_batches = 20                # micro-batches per rank per evaluation
ckpt_interval = 250              # steps between checkpoints (and one at the end)
keep_last = 3                    # checkpoints kept on disk
time_limit = 0.0                 # seconds of wall-clock; > 0 stops early with a checkpoint
cpu_time_limit = 0.0             # seconds of this process's CPU time (all threads); > 0 stops early with a
                                 # checkpoint: equal-compute comparisons on a shared CPU
# data
total_batch_tokens = 4_194_304   # global batch in tokens (paper 3.1: 4M); = batch_size x block_size x accum x world
batch_size = 8                   # sequences per micro-batch per process
block_size = 2048                # longest sequence (model max_seq_len); the shards must fit in it
mlm_rate = 0.15                  # paper 2.1: 15% of ordinary tokens, 80-10-10
# model (MoSEConfig; config/mose_1b.py gives the released values)
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
embed_std = 0.0                  # token-embedding init std; 0 = init_std (small models: 1.0, MoSEConfig.init_weights)
exit_layers = [4, 9, 18, 27, 36]  # a single exit, e.g. [36], is the paper's single-exit baseline
conditional_size = 4
# optimiser (paper 3.1)
learning_rate = 6.24e-4
max_steps = 245_000
warmup_steps = 4000
# multi-step decay (paper 3.1, the DeepSeek LLM scheme it cites): from each step on, the peak lr x its multiplier
lr_milestones = [(120_000, 0.36), (185_000, 0.1), (220_000, 0.031), (230_000, 0.01), (240_000, 0.001)]
weight_decay = 0.1
embed_lr_mult = 1.0              # the token embedding's lr as a multiple of learning_rate (model.configure_optimizers)
beta1 = 0.9
beta2 = 0.95
eps = 1e-6
grad_clip = 1.0
# system
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'auto'                   # 'auto': bfloat16 autocast where bf16 matmuls are native (training.auto_dtype)
compile = False                  # torch.compile the model and loss
seed = 1337
# -----------------------------------------------------------------------------
config = {}  # every setting by name, filled in by the configurator
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())  # -> config
# -----------------------------------------------------------------------------

if objective not in OBJECTIVES:
    fail(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")

# setup: processes, precision, the batch in tokens
ddp, rank, local_rank, world_size, device = setup_distributed(device)
device_type = 'cuda' if device.startswith('cuda') else 'cpu'
dtype, ptdtype, autocast = autocast_context(device_type, dtype)
torch.manual_seed(seed + rank)
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
try:
    check_milestones(lr_milestones)
except UserError as e:
    fail(e)
tokens_per_micro = batch_size * block_size * world_size
if total_batch_tokens % tokens_per_micro:
    fail(f"total_batch_tokens={total_batch_tokens} is not divisible by batch_size x block_size x world_size "
         f"= {batch_size} x {block_size} x {world_size} = {tokens_per_micro}")
grad_accum = total_batch_tokens // tokens_per_micro
rows_per_step = batch_size * grad_accum * world_size
print0(f"tokens per step: {batch_size} x {block_size} x {grad_accum} (accum) x {world_size} (world) "
       f"= {total_batch_tokens:,}")
if MASTER:
    make_out_dir(out_dir)

# data
try:
    tok = get_tokenizer(tokenizer)
    train_data = load_icc(data_dir, 'train', tok.meta(), tok.n_vocab)
    val_data = load_icc(data_dir, 'val', tok.meta(), tok.n_vocab)
except (OSError, ValueError, UserError) as e:
    fail(e)
if train_data.manifest['max_len'] > block_size:
    fail(f"{data_dir}: shards were built with max_len={train_data.manifest['max_len']} > block_size={block_size}; "
         f"rebuild them with `python prepare.py --max_len={block_size}` or raise block_size")
if len(train_data) == 0 or len(val_data) == 0:
    fail(f"{data_dir}: empty split (train {len(train_data)}, val {len(val_data)} sequences)")
data_objective = train_data.manifest.get('objective', 'icc')  # manifests before NSP hold ICC
if data_objective != objective:
    fail(f"{data_dir}/manifest.json: its sequences are for objective={data_objective!r}, "
         f"this run's objective is {objective!r} (build with `python prepare.py --task={objective}`, pass "
         f"--data_dir=data/{objective})")
train_order, val_order = EpochSampler(len(train_data), seed), EpochSampler(len(val_data), seed)


def get_batch(split, first_row):
    """Micro-batch of the stream positions first_row .. first_row + batch_size - 1: left-padded
    ids, MLM inputs/positions/targets, ICC labels and the number of real tokens, counted here on
    the host. The masking RNG is keyed by the position, so a batch is the same whatever the world
    size, accumulation or resume point."""
    data, order = (train_data, train_order) if split == 'train' else (val_data, val_order)
    seqs, labels = zip(*(data.get(order(g)) for g in range(first_row, first_row + batch_size)))
    idx = left_pad([s.astype(np.int64) for s in seqs], tok.pad_id, vocab_size=tok.n_vocab)  # (B, T)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + first_row + (0 if split == 'train' else 1 << 40))
    inputs, positions, targets = mask_tokens(idx, tok.special_ids, tok.n_vocab, tok.mask_id, gen, mlm_rate)
    if len(targets) == 0:  # only specials: the MLM loss is undefined; prepare.py never writes such rows
        fail(f"{data_dir}: {split} rows {first_row}..{first_row + batch_size - 1} of the stream hold no token to mask "
             f"(empty snippets); rebuild the shards with prepare.py")
    mask = idx != tok.pad_id                                                                  # (B, T)
    to = lambda t: t.pin_memory().to(device, non_blocking=True) if device_type == 'cuda' else t
    return (to(inputs), to(mask), to(positions), to(targets), to(torch.tensor(labels, dtype=torch.long)),
            int(mask.sum()))


# model: from scratch, the newest checkpoint of out_dir, or a released checkpoint (continued pre-training)
model_args = {f.name: globals()[f.name] for f in fields(MoSEConfig) if f.name in globals()}
model_args.update(vocab_size=tok.n_vocab, pad_id=tok.pad_id, sep_id=tok.sep_id, max_seq_len=block_size)
step, data_pos, ckpt, resume = 0, 0, {}, init_from == 'resume'
try:
    if init_from == 'scratch':
        model = MoSE(MoSEConfig(**model_args))
    else:
        if resume and not list_checkpoints(out_dir):
            fail(f"init_from='resume' but {out_dir} holds no checkpoint (start with --init_from=scratch)")
        model, ckpt, where = load_model(out_dir if resume else init_from, 'python pretrain.py')
        check_model_tokenizer(model, ckpt, tok, where)
        if resume:
            ours = MoSEConfig(**model_args)
            differ = [k for k in model_args if getattr(model.config, k) != getattr(ours, k)]
            if differ:
                fail(f"{where} is a checkpoint of another config: "
                     f"{', '.join(f'{k}={getattr(model.config, k)!r} here {model_args[k]!r}' for k in differ)}")
            step, data_pos = ckpt['step'], ckpt['data_pos']
            print0(f"resuming from {where} at step {step}")
except (OSError, ValueError, UserError) as e:
    fail(e)
model.to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), eps, device_type, embed_lr_mult)
if resume:
    optimizer.load_state_dict(ckpt['optimizer'])
    if len(ckpt['rng']) == world_size:
        set_rng_state(ckpt['rng'][rank], device)
    else:
        print0(f"warning: checkpoint has RNG states of {len(ckpt['rng'])} ranks, this run has {world_size}: "
               f"dropout RNG reseeded")
ckpt = None  # free memory
net = Objective(model, 'pretrain_loss')  # the model is what is saved; the objective is what is trained
if compile:
    net = torch.compile(net)
if ddp:
    net = DDP(net, device_ids=[local_rank] if device_type == 'cuda' else None)
exits = list(model.config.exit_layers)
peak = peak_flops(device, ptdtype if device_type == 'cpu' else torch.bfloat16)
print0(f"model: {model.num_params() / 1e6:.1f}M parameters "
       f"({', '.join(f'exit {e}: {model.num_params(e) / 1e6:.1f}M' for e in exits)}); "
       f"{len(train_data):,} train / {len(val_data):,} val sequences; "
       f"peak {peak / 1e12 if peak else float('nan'):.2f} TFLOP/s per device")


def named(stats):
    """(n_exits, len(EXIT_STATS)) tensor -> {exit: {statistic: value}} (the log's per-exit record)."""
    return {e: dict(zip(EXIT_STATS, s)) for e, s in zip(exits, stats.tolist())}


@torch.no_grad()
def evaluate():
    """Per-exit MLM loss / accuracy and ICC loss / accuracy on the held-out repositories. Every rank
    takes a disjoint slice of the same fixed batches; the MLM statistics are weighted by masked
    tokens, the ICC ones by rows, and the sums all-reduced."""
    net.eval()
    sums = torch.zeros(2, len(exits), len(EXIT_STATS), device=device)  # (weighted sum | weight, n_exits, stats)
    for i in range(eval_batches):
        inputs, mask, positions, targets, labels, _ = get_batch('val', micro_batch_start(0, i, eval_batches, world_size,
                                                                                         rank, batch_size))
        with autocast:
            _, stats = model.pretrain_loss(inputs, mask, positions, targets, labels)
        w = torch.tensor([len(targets) if k.startswith('mlm') else len(labels) for k in EXIT_STATS],
                         dtype=torch.float32, device=device)                           # (stats,)
        sums[0] += torch.stack([stats[e] for e in exits]).float() * w                  # (n_exits, stats)
        sums[1] += w
    all_reduce_sum(sums)
    net.train()
    return named(sums[0] / sums[1])


def report_eval(res):
    append_log(out_dir, {'step': step, 'eval': {str(e): r for e, r in res.items()}})
    print0(f"eval step {step}: " + ' | '.join(f"exit {e}: mlm {r['mlm_loss']:.3f} acc {r['mlm_acc']:.3f} "
                                             f"{objective} acc {r['icc_acc']:.3f}" for e, r in res.items()))


# -----------------------------------------------------------------------------
# training loop
if MASTER:
    truncate_log(os.path.join(out_dir, 'log.jsonl'), step)
batch = get_batch('train', micro_batch_start(data_pos, 0, grad_accum, world_size, rank, batch_size))
if step == 0 or step >= max_steps:
    report_eval(evaluate())
t_start = t_log = time.time()
cpu_start = time.process_time()
tokens_since, flops_since, step_logged = 0, 0.0, step
while step < max_steps:
    lr = lr_at(step, learning_rate, warmup_steps, lr_milestones)
    for group in optimizer.param_groups:
        group['lr'] = lr * group.get('lr_mult', 1.0)
    loss_sum, stat_sum = 0.0, 0.0
    for micro in range(grad_accum):
        if ddp:  # gradients are all-reduced only on the last micro-step
            net.require_backward_grad_sync = micro == grad_accum - 1
        inputs, mask, positions, targets, labels, n_tokens = batch
        with autocast:
            loss, stats = net(inputs, mask, positions, targets, labels)
            loss = loss / grad_accum
        tokens_since += n_tokens
        flops_since += 3 * model.estimate_flops(inputs.size(1), mlm_tokens=len(targets) / batch_size) * batch_size
        # prefetch the next micro-batch while the backward runs (asynchronously on GPU)
        nxt_pos, nxt_micro = (data_pos, micro + 1) if micro + 1 < grad_accum else (data_pos + rows_per_step, 0)
        batch = get_batch('train', micro_batch_start(nxt_pos, nxt_micro, grad_accum, world_size, rank, batch_size))
        loss.backward()
        loss_sum += loss.detach()
        stat_sum = stat_sum + torch.stack([stats[e] for e in exits]) / grad_accum   # (n_exits, stats)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float('inf'))
    if not torch.isfinite(norm):  # the gradient is all-reduced, so every rank takes the same decision
        fail(f"non-finite loss or gradient at step {step} (loss {float(loss_sum):.4g}, grad norm {float(norm):.4g}); "
             f"nothing saved, the newest checkpoint in {out_dir} is intact")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    data_pos += rows_per_step

    if step % log_interval == 0 or step == max_steps:
        loss_val = all_reduce_sum(loss_sum.clone()).item() / world_size
        st = named(all_reduce_sum(stat_sum.clone()) / world_size)
        dt = time.time() - t_log
        tok_s = tokens_since * world_size / dt
        mfu = flops_since / dt / peak if peak else float('nan')
        eta = (max_steps - step) * dt / (step - step_logged)
        append_log(out_dir, {'step': step, 'loss': loss_val, 'lr': lr, 'tok_s': tok_s, 'mfu': mfu,
                             'grad_norm': float(norm), 'exits': {str(e): s for e, s in st.items()}})
        per_exit = ' '.join(f"{e}:{s['mlm_loss']:.2f}/{s['mlm_acc']:.2f}/{s['icc_acc']:.2f}" for e, s in st.items())
        print0(f"step {step}/{max_steps} | loss {loss_val:.4f} | exit:mlm/acc/{objective}_acc {per_exit} | lr {lr:.2e} | "
               f"{tok_s:,.0f} tok/s | mfu {100 * mfu:.1f}% | eta {eta / 3600:.1f}h")
        t_log, tokens_since, flops_since, step_logged = time.time(), 0, 0.0, step

    out_of_time = False
    if time_limit > 0 or cpu_time_limit > 0:  # every rank takes the decision of the first that runs out
        over = (time_limit > 0 and time.time() - t_start > time_limit) or \
            (cpu_time_limit > 0 and time.process_time() - cpu_start > cpu_time_limit)
        out_of_time = all_reduce_sum(torch.tensor([float(over)], device=device)).item() > 0
    if step % eval_interval == 0 or step == max_steps or out_of_time:
        report_eval(evaluate())
    if step % ckpt_interval == 0 or step == max_steps or out_of_time:
        save_run(out_dir, step, model, optimizer, config, data_pos, tok, keep_last, device)
    if out_of_time:
        print0(f"time limit reached at step {step}: {time.time() - t_start:.0f}s wall, "
               f"{time.process_time() - cpu_start:.0f}s CPU")
        break

if ddp:
    del net  # the DDP wrapper holds the process group
    leave_distributed()
