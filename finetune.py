"""
Multi-exit fine-tuning of a pre-trained MoSE (paper 4.1, 4.2, 6.3).

Text-to-code + code-to-code retrieval:  python finetune.py --task retrieval
Clone detection (BigCloneBench format): python finetune.py --task clone
On 8 GPUs:                              torchrun --nproc_per_node=8 finetune.py --task retrieval --batch_size=256
A laptop CPU (mose_tiny):               python finetune.py config/finetune_tiny.py --task retrieval
Single-exit baseline (paper 6.3):       python finetune.py --task retrieval --single_exit 9
From a released checkpoint:             python finetune.py --task retrieval --init_from path/to/ModularStarEncoder \
                                            --tokenizer path/to/starcoder2-tokenizer

Retrieval: `<sep>{instruction}<sep>{text}<cls>` inputs, a projection head and a CLIP loss at every
exit, weighted by depth; batches hold both kinds of pairs equally, 30% of code augmented; the
negatives are the global batch, through GradCache (Gao et al. 2021) under accumulation. Clone:
`<sep>{snippet 1}<sep>{snippet 2}<cls>` and a binary classifier per exit on <cls>.
"""
import os
import re
import string
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from torch.nn.parallel import DistributedDataParallel as DDP

from data import load_bigclonebench, read_pairs
from encode import batched_forward, encoder
from metrics import mrr, precision_recall_f1, target_ranks
from model import EXIT_WEIGHTINGS, MoSE, load_state
from stage import MASTER, fail, make_out_dir, print0
from tokenizer import get_tokenizer
from training import (EpochSampler, Objective, UserError, all_reduce_sum, append_log, autocast_context,
                      check_milestones, check_model_tokenizer, leave_distributed, left_pad, list_checkpoints, load_model,
                      lr_at, micro_batch_start, rng_state, save_run, set_rng_state, setup_distributed, truncate_log)

WORD = re.compile(r'\b[A-Za-z_][A-Za-z0-9_]*\b')


def augment_code(code, rng):
    """Paper 4.1: every word that occurs more than twice and has at least 3 characters is
    replaced by a random string, the same one at each occurrence. Only code goes through this."""
    counts = Counter(WORD.findall(code))
    frequent = sorted(w for w, c in counts.items() if c > 2 and len(w) >= 3)
    new = {}
    for w in frequent:
        while True:
            s = rng.choice(list(string.ascii_letters)) + ''.join(
                rng.choice(list(string.ascii_letters + string.digits), size=int(rng.integers(2, 10))))
            if s not in counts and s not in new.values():
                break
        new[w] = s
    return WORD.sub(lambda m: new.get(m.group(0), m.group(0)), code) if new else code


def retrieval_texts(row, rng, augment_prob):
    """(query, code) texts of one training pair: each code snippet (the code side, and the query of
    a code-code pair) is augmented with probability augment_prob; natural language never is."""
    aug = lambda code: augment_code(code, rng) if rng.random() < augment_prob else code
    query = row['query'] if row['kind'] == 'text-code' else aug(row['query'])
    return query, aug(row['code'])


KINDS = {'text-code': 1, 'code-code': 2, 'clone': 3}  # the kinds of training pairs, each a stream of its own


def augment_rng(seed, kind, g):
    """The generator of the augmentation of stream position g of one kind of pair: a pure function
    of the position (a resumed run draws the same), and a different stream for every kind."""
    return np.random.default_rng([seed, KINDS[kind], g])


def clip_loss(q, c, scale):
    """CLIP loss (Radford et al. 2021): q, c (N, D) L2-normalised, row i of q matches row i of c;
    symmetric cross-entropy over the (N, N) scaled cosine matrix. Also returns top-1 accuracy."""
    logits = scale * q @ c.T                                     # (N, N)
    labels = torch.arange(len(q), device=q.device)
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    return loss, (logits.argmax(1) == labels).float().mean()


def gather_rows(z):
    """(b, D) on each rank -> (world * b, D) in rank order; this rank's rows keep their graph, so
    gradients flow back to each rank's own part (the others are constants here)."""
    if not dist.is_initialized():
        return z
    parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, z.detach().contiguous())
    parts[dist.get_rank()] = z
    return torch.cat(parts)


def read_training_pairs(task, train_pairs, valid_pairs, bcb_dir, kinds=('text-code', 'code-code')):
    """(streams {kind: training rows} of the kinds asked for, validation rows, functions {id: code} for
    clone pairs)."""
    if task == 'clone':
        funcs, train_rows, skipped = load_bigclonebench(bcb_dir, 'train')
        _, valid_rows, vskipped = load_bigclonebench(bcb_dir, 'valid')
        if skipped + vskipped:
            print0(f"skipped {skipped} train / {vskipped} valid pairs whose ids are missing from {bcb_dir}/data.jsonl")
        return {'clone': train_rows}, valid_rows, funcs
    train_rows, valid_rows = read_pairs(train_pairs), read_pairs(valid_pairs)
    streams = {k: [r for r in train_rows if r['kind'] == k] for k in kinds}
    streams = {k: v for k, v in streams.items() if v}
    if not streams:
        raise UserError(f"{train_pairs}: no {' or '.join(kinds)} pairs")
    if len(streams) < len(kinds):
        print0(f"warning: {train_pairs} holds only {next(iter(streams))} pairs; batches cannot be balanced")
    return streams, valid_rows, None


def make_batch(first, streams, orders, per_stream, tok, max_len, funcs=None, seed=0, augment_prob=0.0):
    """The sequences of the micro-batch whose rows start at stream position `first` in each stream.
    Retrieval: (b queries then b codes, None); clone: (b pairs, b labels)."""
    queries, codes, labels = [], [], []
    for name, rows in streams.items():
        for g in range(first // len(streams), first // len(streams) + per_stream):
            r = rows[orders[name](g)]
            if name == 'clone':
                codes.append(tok.pair(funcs[r[0]], funcs[r[1]], max_len))
                labels.append(r[2])
                continue
            query, code = retrieval_texts(r, augment_rng(seed, name, g), augment_prob)
            codes.append(tok.code_input(code, r['code_lang'], max_len))
            queries.append(tok.query_input(query, max_len) if r['kind'] == 'text-code'
                           else tok.code_input(query, r['query_lang'], max_len))
    return queries + codes, (labels if 'clone' in streams else None)


def resume_run(out_dir, config):
    """(model, checkpoint) of the newest checkpoint of out_dir, which must be of a run with these settings."""
    if not list_checkpoints(out_dir):
        raise UserError(f"init_from='resume' but {out_dir} holds no checkpoint")
    model, ckpt, where = load_model(out_dir, f"python finetune.py --task {config['task']}")
    theirs = ckpt.get('config', {})  # the settings the model and the data stream depend on
    keys = ('task', 'single_exit', 'max_len', 'tokenizer', 'pooling', 'center', 'exit_norm', 'exit_weighting',
            'code_code')
    # checkpoints made before these settings had their defaults
    theirs = {'center': False, 'exit_norm': False, 'exit_weighting': 'depth', 'code_code': True, **theirs}
    differ = [f"{k}={theirs.get(k)!r} here {config[k]!r}" for k in keys if theirs.get(k) != config[k]]
    if differ:
        raise UserError(f"{where} is a checkpoint of another config: {', '.join(differ)}")
    print0(f"resuming from {where} at step {ckpt['step']}")
    return model, ckpt


def finetune_model(init_from, tok, task, single_exit=0, proj_heads=True, dropout=0.1, pooling='cls', center=False,
                   exit_norm=False):
    """The fine-tuning model of a pre-trained one (a checkpoint, a pre-training out_dir or a released
    directory): its backbone (the first single_exit layers when > 0) with the task's heads, one per
    exit, and its dropout."""
    pre, ckpt, where = load_model(init_from, 'python pretrain.py config/mose_tiny.py')
    check_model_tokenizer(pre, ckpt, tok, where)
    print0(f"initialised from {where}" + (f" (step {ckpt['step']})" if 'step' in ckpt else ''))
    if single_exit:
        pre = pre.truncated(single_exit, keep_exits=[single_exit])
    cfg = replace(pre.config, proj_heads=task == 'retrieval' and proj_heads, n_classes=2 if task == 'clone' else 0,
                  attn_dropout=dropout, resid_dropout=dropout, embd_dropout=dropout, pooling=pooling,
                  center=task == 'retrieval' and center, exit_norm=exit_norm, sep_id=tok.sep_id)
    model = MoSE(cfg)
    ours = model.state_dict()
    load_state(model, {k: v for k, v in pre.state_dict().items() if k in ours}, where='the pre-trained model', strict=False)
    return model


def freeze_pretraining_heads(model):
    """The pre-training heads take no part in fine-tuning."""
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith(('mlm_head.', 'icc_head.', 'exit_embedding.')))


def retrieval_loss(zq, zc, weights, scale):
    """Depth-weighted CLIP loss over the global batch. zq, zc: {exit: (n, D)} of this rank, gathered
    across ranks here. Returns the total and (n_exits, 2) statistics: loss, in-batch top-1 accuracy."""
    total, stats = 0.0, []
    for e, w in weights.items():
        loss, acc = clip_loss(gather_rows(zq[e]), gather_rows(zc[e]), scale)
        total = total + w * loss
        stats.append(torch.stack([loss.detach(), acc]))
    return total, torch.stack(stats)                         # (n_exits, 2)


def clone_step(objective, batches, weights, autocast):
    """Forward and backward of one step's clone micro-batches [(idx, labels)]; returns (n_exits, 2): loss, accuracy."""
    exits, stats = list(weights), 0.0
    for m, (idx, labels) in enumerate(batches):
        if isinstance(objective, DDP):
            objective.require_backward_grad_sync = m == len(batches) - 1
        with autocast:
            logits = objective(idx, exits)
        losses = {e: F.cross_entropy(logits[e].float(), labels) for e in exits}
        (sum(weights[e] * losses[e] for e in exits) / len(batches)).backward()
        stats = stats + torch.stack([torch.stack([losses[e].detach(), (logits[e].argmax(1) == labels).float().mean()])
                                     for e in exits]) / len(batches)
    return stats


def retrieval_step(objective, batches, weights, autocast, scale, device):
    """Forward and backward of one step's retrieval micro-batches [(idx (2b, T), None)]: b queries then
    b codes each. The loss of every rank is the same global loss; its gradient w.r.t. this rank's
    embeddings is exact, and DDP averages over ranks, hence the factor world size. With several
    micro-batches, GradCache: 1) embeddings without a graph, 2) the loss and its gradient w.r.t.
    them, 3) each micro-batch again, with the same dropout, backpropagating that gradient."""
    exits, world = list(weights), dist.get_world_size() if dist.is_initialized() else 1
    ddp = isinstance(objective, DDP)
    if len(batches) == 1:
        with autocast:
            z = objective(batches[0][0], exits)
        n = len(batches[0][0]) // 2
        total, stats = retrieval_loss({e: z[e][:n] for e in exits}, {e: z[e][n:] for e in exits}, weights, scale)
        (total * world).backward()
        return stats
    states, cached = [], []
    with torch.no_grad():
        for idx, _ in batches:
            states.append(rng_state(device))
            with autocast:
                cached.append(objective(idx, exits))
    z = {e: torch.cat([c[e] for c in cached]).requires_grad_(True) for e in exits}  # (accum * 2b, D)
    n = len(batches[0][0]) // 2  # rows per micro-batch: b queries then b codes
    q = {e: torch.cat([z[e][2 * n * m:2 * n * m + n] for m in range(len(batches))]) for e in exits}
    c = {e: torch.cat([z[e][2 * n * m + n:2 * n * (m + 1)] for m in range(len(batches))]) for e in exits}
    total, stats = retrieval_loss(q, c, weights, scale)
    (total * world).backward()
    for m, (idx, _) in enumerate(batches):
        set_rng_state(states[m], device)
        if ddp:
            objective.require_backward_grad_sync = m == len(batches) - 1
        with autocast:
            zm = objective(idx, exits)
        torch.autograd.backward([zm[e] for e in exits], [z[e].grad[2 * n * m:2 * n * (m + 1)] for e in exits])
    return stats


def report_step(out_dir, step, max_steps, stats, weights, lr, seen, dt, steps, world_size):
    """Log and print the step's statistics, stats (n_exits, 2): loss, accuracy of this rank's last
    step, averaged over ranks; `seen` pairs in dt seconds over the `steps` steps since the last report."""
    exits = list(weights)
    st = (all_reduce_sum(stats.detach().clone()) / world_size).tolist()  # (n_exits, 2)
    loss = sum(weights[e] * s[0] for e, s in zip(exits, st))
    append_log(out_dir, {'step': step, 'loss': loss, 'lr': lr, 'pairs_s': seen / dt,
                         'exits': {str(e): {'loss': s[0], 'acc': s[1]} for e, s in zip(exits, st)}})
    per_exit = ' '.join(f"{e}:{s[0]:.3f}/{s[1]:.2f}" for e, s in zip(exits, st))
    print0(f"step {step}/{max_steps} | loss {loss:.4f} | exit:loss/acc {per_exit} | lr {lr:.2e} | "
           f"{seen / dt:,.1f} pairs/s | eta {(max_steps - step) * dt / steps / 60:.1f}m")


@torch.no_grad()
def validate(model, task, rows, tok, max_len, batch_size, autocast, device, funcs=None, eval_max=1000):
    """Retrieval: MRR per exit and kind over up to eval_max validation pairs (all of them the
    candidates); clone: F1 per exit at p(clone) > 0.5. Rank r encodes pairs r, r + world, ...,
    batch_size pairs a forward, batched as the evaluation batches (encode.batched_forward)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    exits, results = list(model.config.exit_layers), {}
    fn = encoder(model, exits, autocast, 'classify' if task == 'clone' else 'encode')
    model.eval()
    for kind in (('text-code', 'code-code') if task == 'retrieval' else ('clone',)):
        part_rows = [r for r in rows if task == 'clone' or r['kind'] == kind][:eval_max]
        if not part_rows:
            continue
        mine = part_rows[rank::world]
        if task == 'clone':
            seqs = [tok.pair(funcs[a], funcs[b], max_len) for a, b, _ in mine]
        else:  # the queries, then their codes
            seqs = [tok.query_input(r['query'], max_len) if kind == 'text-code'
                    else tok.code_input(r['query'], r['query_lang'], max_len) for r in mine]
            seqs += [tok.code_input(r['code'], r['code_lang'], max_len) for r in mine]
        out = batched_forward(fn, seqs, batch_size * (1 if task == 'clone' else 2), tok.pad_id, device,
                              model.config.max_seq_len, what=None, vocab_size=tok.n_vocab)
        parts = [out]
        if world > 1:
            parts = [None] * world
            dist.all_gather_object(parts, out)
        parts = [p for p in parts if p]  # a rank with no pairs returns {}
        for e in exits:
            if task == 'clone':
                pred = torch.cat([p[e].argmax(1) for p in parts])
                gold = np.array([r[2] for w in range(world) for r in part_rows[w::world]])
                results.setdefault(e, {})['f1'] = precision_recall_f1(pred.numpy(), gold)[2]
                continue
            q = torch.cat([p[e][:len(p[e]) // 2] for p in parts])
            c = torch.cat([p[e][len(p[e]) // 2:] for p in parts])
            results.setdefault(e, {})[f'mrr_{kind}'] = mrr(target_ranks((q @ c.T).numpy()))
    model.train()
    return results


if __name__ == '__main__':
    # -------------------------------------------------------------------------
    task = 'retrieval'               # 'retrieval' or 'clone'
    # I/O
    init_from = 'out/pretrain'       # a pre-training out_dir (its newest checkpoint), a checkpoint file, a released
                                     # checkpoint dir (config.json + model.safetensors), or 'resume' (newest in out_dir)
    out_dir = ''                     # default: out/finetune-{task}
    tokenizer = 'cl100k_base'        # the pre-trained model's tokenizer
    train_pairs = 'data/retrieval/train.jsonl'   # retrieval pairs from prepare.py (SynthCoNL, CodeSearchNet or local)
    valid_pairs = 'data/retrieval/valid.jsonl'
    bcb_dir = 'data/bigclonebench'   # clone: data.jsonl + train.txt / valid.txt
    code_code = True                 # retrieval: half of every batch code-code pairs (paper 4.1); False = text-code only
    log_interval = 10
    eval_interval = 200              # steps between validation passes (and at start / end)
    eval_max = 1000                  # validation pairs per kind (retrieval: the candidate pool) or pairs (clone)
    ckpt_interval = 200
    keep_last = 2
    # batch
    batch_size = 32                  # pairs per micro-batch per process
    total_batch = 0                  # pairs per step over all processes; 0 = the paper's: 2,048 retrieval, 64 clone
    max_len = 512                    # tokens per input, instruction and <cls> included
    # objective
    single_exit = 0                  # > 0: keep the first K layers and train one head on exit K (paper 6.3)
    proj_heads = True                # one projection head per exit (paper 4.1); False: the pooled state is the embedding
    pooling = 'cls'                  # the embedding: 'cls' = the final <cls> state (paper, released models); 'mean' =
                                     # the mean over real tokens; 'text' = the mean over the text after the
                                     # instruction (what a small model trained briefly needs: README)
    exit_norm = False                # every exit through the final LayerNorm (model.MoSEConfig.exit_norm): the paper's
                                     # inner exits are raw; a small model's exits 2-6 retrieve better normalised (README)
    center = False                   # retrieval: pooled states minus their batch mean (model.MoSEConfig.center):
                                     # what briefly pre-trained, anisotropic states need (README)
    exit_weighting = 'depth'         # each exit's loss weight: 'depth' = exit / n_layer (paper 2.2); 'uniform' = 1 at
                                     # every exit (exit 1 of 8 then weighs as much as the last; RESULTS.md, ablate.py)
    logit_scale = 10.0               # the paper's "temperature 10": cosine similarities x 10
    augment_prob = 0.3               # fraction of code snippets whose frequent words are renamed (paper 4.1)
    # optimiser (paper 4.1: constant 1e-5; 4.2: 1e-5 with 2,000 warmup steps, 14,000 steps)
    learning_rate = 1e-5
    warmup_steps = -1                # -1 = the paper's: 0 retrieval, 2,000 clone
    max_steps = 0                    # 0 = retrieval 1,000 (the paper gives none), clone 14,000 (paper 4.2)
    lr_milestones = []               # [(step, multiplier), ...]: from each step on, lr x multiplier (training.lr_at);
                                     # [] = the paper's constant lr
    weight_decay = 0.1
    embed_lr_mult = 1.0              # the token embedding's lr as a multiple of learning_rate (model.configure_optimizers)
    beta1 = 0.9
    beta2 = 0.95
    eps = 1e-6
    grad_clip = 1.0
    dropout = 0.1                    # attention / residual / embedding dropout while fine-tuning
    # system
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dtype = 'auto'                   # bfloat16 autocast where bf16 matmuls are native (training.auto_dtype)
    compile = False
    seed = 1337
    # -------------------------------------------------------------------------
    config = {}  # every setting by name, filled in by the configurator
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())  # -> config
    # -------------------------------------------------------------------------

    # setup: the task's defaults (paper 4.1, 4.2), processes, precision, the batch in pairs
    if task not in ('retrieval', 'clone'):
        fail(f"unknown task {task!r}: expected 'retrieval' or 'clone'")
    if exit_weighting not in EXIT_WEIGHTINGS:
        fail(f"exit_weighting={exit_weighting!r}: expected one of {', '.join(EXIT_WEIGHTINGS)}")
    out_dir = out_dir or f'out/finetune-{task}'
    total_batch = total_batch or {'retrieval': 2048, 'clone': 64}[task]
    warmup_steps = warmup_steps if warmup_steps >= 0 else {'retrieval': 0, 'clone': 2000}[task]
    max_steps = max_steps or {'retrieval': 1000, 'clone': 14000}[task]
    config.update(total_batch=total_batch, warmup_steps=warmup_steps, max_steps=max_steps, out_dir=out_dir)
    ddp, rank, local_rank, world_size, device = setup_distributed(device)
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    dtype, ptdtype, autocast = autocast_context(device_type, dtype)
    torch.manual_seed(seed + rank)
    try:
        check_milestones(lr_milestones)
    except UserError as e:
        fail(e)
    if total_batch % (batch_size * world_size):
        fail(f"total_batch={total_batch} is not divisible by batch_size x world_size = {batch_size} x {world_size}")
    grad_accum = total_batch // (batch_size * world_size)
    rows_per_step = batch_size * grad_accum * world_size
    print0(f"pairs per step: {batch_size} x {grad_accum} (accum) x {world_size} (world) = {total_batch}")
    if MASTER:
        make_out_dir(out_dir)

    # data: one stream per kind of pair, each in its own epoch order
    try:
        tok = get_tokenizer(tokenizer)
        streams, valid_rows, funcs = read_training_pairs(task, train_pairs, valid_pairs, bcb_dir,
                                                         ('text-code', 'code-code') if code_code else ('text-code',))
    except (OSError, ValueError, UserError) as e:
        fail(e)
    if batch_size % len(streams):
        fail(f"batch_size={batch_size} must be even to hold both kinds of pairs in equal numbers")
    orders = {k: EpochSampler(len(v), seed + i) for i, (k, v) in enumerate(streams.items())}

    def get_batch(first):
        seqs, labels = make_batch(first, streams, orders, batch_size // len(streams), tok, max_len, funcs, seed,
                                  augment_prob)
        idx = left_pad([np.asarray(s) for s in seqs], tok.pad_id, vocab_size=tok.n_vocab).to(device)
        return idx, (torch.tensor(labels, device=device) if labels is not None else None)

    # model: the newest checkpoint of out_dir, or a pre-trained one with the task's heads
    resume = init_from == 'resume'
    try:
        model, ckpt = resume_run(out_dir, config) if resume else (finetune_model(
            init_from, tok, task, single_exit=single_exit, proj_heads=proj_heads, dropout=dropout, pooling=pooling,
            center=center, exit_norm=exit_norm), {})
    except (OSError, ValueError, UserError) as e:
        fail(e)
    step, data_pos = ckpt.get('step', 0), ckpt.get('data_pos', 0)
    if max_len > model.config.max_seq_len:
        fail(f"max_len={max_len} exceeds the model's max_seq_len={model.config.max_seq_len}")
    freeze_pretraining_heads(model)
    model.to(device)
    exits, weights = list(model.config.exit_layers), model.exit_weights(exit_weighting)
    optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), eps, device_type, embed_lr_mult)
    if resume:
        optimizer.load_state_dict(ckpt['optimizer'])
        if len(ckpt['rng']) == world_size:
            set_rng_state(ckpt['rng'][rank], device)
    ckpt = None  # free memory
    objective = Objective(model, 'encode' if task == 'retrieval' else 'classify')
    if compile:
        objective = torch.compile(objective)
    if ddp:
        objective = DDP(objective, device_ids=[local_rank] if device_type == 'cuda' else None, broadcast_buffers=False)
    print0(f"{task}: {model.num_params() / 1e6:.1f}M backbone parameters, exits {exits}, "
           f"{sum(len(v) for v in streams.values()):,} training pairs")

    def report_eval():
        res = validate(model, task, valid_rows, tok, max_len, batch_size, autocast, device, funcs, eval_max)
        append_log(out_dir, {'step': step, 'eval': {str(e): r for e, r in res.items()}})
        print0(f"eval step {step}: " + ' | '.join(f"exit {e}: " + ' '.join(f"{k} {v:.4f}" for k, v in r.items())
                                                 for e, r in res.items()))

    # -------------------------------------------------------------------------
    # training loop
    if MASTER:
        truncate_log(os.path.join(out_dir, 'log.jsonl'), step)
    if step == 0:
        report_eval()
    t_log, step_logged, seen = time.time(), step, 0
    while step < max_steps:
        lr = lr_at(step, learning_rate, warmup_steps, lr_milestones)
        for group in optimizer.param_groups:
            group['lr'] = lr * group.get('lr_mult', 1.0)
        batches = [get_batch(micro_batch_start(data_pos, m, grad_accum, world_size, rank, batch_size))
                   for m in range(grad_accum)]
        if task == 'clone':
            stats = clone_step(objective, batches, weights, autocast)
        else:
            stats = retrieval_step(objective, batches, weights, autocast, logit_scale, device)
        norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                              grad_clip if grad_clip > 0 else float('inf'))
        if not torch.isfinite(norm):
            fail(f"non-finite loss or gradient at step {step}; nothing saved")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        data_pos += rows_per_step
        seen += rows_per_step
        if step % log_interval == 0 or step == max_steps:
            report_step(out_dir, step, max_steps, stats, weights, lr, seen, time.time() - t_log, step - step_logged,
                        world_size)
            t_log, step_logged, seen = time.time(), step, 0
        if step % eval_interval == 0 or step == max_steps:
            report_eval()
        if step % ckpt_interval == 0 or step == max_steps:
            save_run(out_dir, step, model, optimizer, config, data_pos, tok, keep_last, device)
    if ddp:
        del objective  # the DDP wrapper holds the process group
        leave_distributed()
