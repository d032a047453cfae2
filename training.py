"""
What pretrain.py and finetune.py share: distributed setup, the autocast policy, the sample order,
left-padded batches, MLM masking, the learning-rate schedule, peak FLOPs for MFU, step-numbered
atomic checkpoints that hold everything needed for an exact resume, and the one checkpoint ->
model loader of the three stages (evaluate.py too).
"""
import contextlib
import functools
import gc
import glob
import json
import os
import re
import time

import numpy as np
import torch
import torch.distributed as dist

from data import atomic_open
from model import MoSE, check_token_ids, config_to_dict, load_checkpoint
from stage import MASTER
from tokenizer import check_tokenizer


class UserError(Exception):
    """Bad input from the user: the stage prints one line and exits non-zero, no traceback."""


# -----------------------------------------------------------------------------
# distributed

def setup_distributed(device):
    """DDP from torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE): nccl on CUDA, gloo on CPU.
    Returns (ddp, rank, local_rank, world_size, device)."""
    if int(os.environ.get('RANK', -1)) == -1:
        return False, 0, 0, 1, device
    rank, local_rank, world = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    if device.startswith('cuda'):
        device = f'cuda:{local_rank}'
        torch.cuda.set_device(device)
    dist.init_process_group(backend='nccl' if device.startswith('cuda') else 'gloo')
    return True, rank, local_rank, world, device


def leave_distributed():
    """The end of a DDP run: every rank waits for rank 0's last checkpoint, then the process group goes.
    The caller deletes its DDP wrapper first: while the wrapper's reducer holds the gloo group, the
    group outlives destroy_process_group and its threads are torn down at interpreter exit, where
    gloo can abort ('terminate called without an active exception') after a run that succeeded."""
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def all_reduce_sum(t):
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class Objective(torch.nn.Module):
    """Makes one method of the model (a loss) the forward of a module, so that DDP's
    gradient hooks and torch.compile see the whole loss; the raw model is what is saved."""

    def __init__(self, model, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *args, **kwargs):
        return getattr(self.model, self.method)(*args, **kwargs)


def auto_dtype(device_type):
    """'bfloat16' autocast where the hardware runs bf16 matmuls natively (CUDA GPUs that support it,
    CPUs with AVX512-BF16 or AMX, whose bf16 matmuls outrun fp32 ones several times), else
    'float32'. Parameters and optimiser state stay float32 either way."""
    if device_type == 'cuda':
        return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float32'
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((l for l in f if l.startswith('flags')), '').split()
    except OSError:
        flags = []
    return 'bfloat16' if {'avx512_bf16', 'amx_bf16'} & set(flags) else 'float32'


def autocast_context(device_type, dtype):
    """Resolve a stage's `dtype` setting ('auto' -> auto_dtype) into (name, torch dtype, autocast
    context); float32 runs without autocast."""
    dtype = auto_dtype(device_type) if dtype == 'auto' else dtype
    ptdtypes = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
    if dtype not in ptdtypes:
        raise UserError(f"dtype {dtype!r}: expected auto, float32, bfloat16 or float16")
    pt = ptdtypes[dtype]
    return dtype, pt, contextlib.nullcontext() if pt == torch.float32 else torch.autocast(device_type, dtype=pt)


# -----------------------------------------------------------------------------
# sample order and batches

class EpochSampler:
    """sampler(g): the g-th sample of an endless stream over n items. Epoch g // n visits all items
    once, in a permutation that is a pure function of (seed, epoch): sampling without replacement
    per epoch, resumable from a position alone. The permutation is computed once per epoch."""

    def __init__(self, n, seed):
        if n == 0:
            raise UserError("the dataset is empty")
        self.n, self.seed, self._epoch, self._perm = n, seed, None, None

    def __call__(self, g):
        epoch, i = divmod(g, self.n)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return int(self._perm[i])


def batch_rows(step, micro, accum, world, rank, batch_size):
    """Global stream positions of the rows of one micro-batch. A step consumes world * accum *
    batch_size consecutive positions; rank r's micro-batch m takes its own disjoint slice, so one
    process with accumulation k sees exactly the rows that k processes see."""
    start = ((step * accum + micro) * world + rank) * batch_size
    return range(start, start + batch_size)


def micro_batch_start(data_pos, micro, accum, world, rank, batch_size):
    """The first stream position of this rank's micro-batch `micro` of the step that starts at data_pos."""
    return data_pos + batch_rows(0, micro, accum, world, rank, batch_size).start


def left_pad(seqs, pad_id, multiple=8, max_len=None, vocab_size=None):
    """List of 1-D int arrays -> (B, T) long tensor on the host, left-padded (the last token stays
    <cls>) to the longest row rounded up to `multiple` (fewer distinct shapes for compiled kernels).
    With vocab_size, every id is checked here, once per batch, so that the forward on a GPU need
    not read its input back (MoSE.forward)."""
    T = max(len(s) for s in seqs)
    T = -(-T // multiple) * multiple
    if max_len is not None:
        T = min(T, max_len)
    out = np.full((len(seqs), T), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        if len(s) > T:
            raise UserError(f"a sequence of {len(s)} tokens exceeds the model's max_seq_len {T}")
        out[i, T - len(s):] = s
    idx = torch.from_numpy(out)
    if vocab_size is not None:
        check_token_ids(idx, vocab_size)
    return idx


def mask_tokens(idx, special_ids, vocab_size, mask_id, generator, rate=0.15):
    """BERT masking (Devlin et al. 2019; paper 2.1): select `rate` of the ordinary tokens (never
    specials or padding); of those, 80% become <mask>, 10% a random ordinary token, 10% stay.
    Returns (inputs (B, T), positions (N,) flat indices, targets (N,) original ids)."""
    specials = torch.tensor(sorted(special_ids), dtype=idx.dtype)
    eligible = ~torch.isin(idx, specials)                                       # (B, T)
    selected = eligible & (torch.rand(idx.shape, generator=generator) < rate)   # (B, T)
    if not selected.any() and eligible.any():  # keep the loss defined on tiny batches
        selected.view(-1)[eligible.view(-1).nonzero()[0]] = True
    positions = selected.view(-1).nonzero().squeeze(1)                          # (N,)
    targets = idx.view(-1)[positions]                                           # (N,)
    u = torch.rand(positions.shape, generator=generator)
    ordinary = _ordinary_ids(frozenset(special_ids), vocab_size)
    random_ids = ordinary[torch.randint(len(ordinary), positions.shape, generator=generator)]
    values = torch.where(u < 0.8, torch.full_like(targets, mask_id), torch.where(u < 0.9, random_ids, targets))
    inputs = idx.clone()
    inputs.view(-1)[positions] = values
    return inputs, positions, targets


@functools.lru_cache(maxsize=4)
def _ordinary_ids(special_ids, vocab_size):
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[[i for i in special_ids if i < vocab_size]] = False
    return keep.nonzero().squeeze(1)


# -----------------------------------------------------------------------------
# schedule

def check_milestones(milestones):
    """The lr_milestones setting: [(step, multiplier), ...], steps increasing and >= 0, multipliers > 0."""
    pairs = isinstance(milestones, (list, tuple)) and all(
        isinstance(m, (list, tuple)) and len(m) == 2 and isinstance(m[0], int) and not isinstance(m[0], bool)
        and m[0] >= 0 and isinstance(m[1], (int, float)) and m[1] > 0 for m in milestones)
    if not pairs or any(a[0] >= b[0] for a, b in zip(milestones, milestones[1:])):
        raise UserError(f"lr_milestones={milestones!r}: expected [(step, multiplier), ...] with increasing steps "
                        f">= 0 and multipliers > 0")


def lr_at(step, peak, warmup, milestones=()):
    """Linear warmup to `peak` over `warmup` steps, then multi-step decay (DeepSeek LLM, Bi et al.
    2024): from each milestone step on, the lr is peak x that milestone's multiplier."""
    if step < warmup:
        return peak * (step + 1) / warmup
    mult = 1.0
    for at, m in milestones:
        if step >= at:
            mult = m
    return peak * mult


# -----------------------------------------------------------------------------
# MFU

PEAK_FLOPS = {  # dense bf16 tensor-core peaks per device, from the vendors' data sheets
    'H200': 989e12, 'H100 SXM': 989e12, 'H100 NVL': 835e12, 'H100 PCIe': 756e12, 'H100': 989e12,
    'GH200': 989e12, 'B200': 2250e12, 'A100': 312e12, 'A800': 312e12, 'L40S': 362e12, 'L4': 121e12,
    'A10G': 70e12, 'A10': 125e12, 'RTX 4090': 165e12, 'RTX 3090': 71e12, 'V100': 125e12, 'T4': 65e12,
    'MI300X': 1307e12, 'MI250X': 383e12,
}


def peak_flops(device, dtype=torch.float32, cache_dir=os.path.expanduser('~/.cache/mose')):
    """Peak FLOP/s of one device: the table for GPUs (longest matching name), and for a CPU a
    matmul measured once and cached per (cpu, threads, dtype)."""
    if str(device).startswith('cuda'):
        name = torch.cuda.get_device_name(device)
        for key in sorted(PEAK_FLOPS, key=len, reverse=True):
            if key in name:
                return PEAK_FLOPS[key]
        return None
    cpu = 'cpu'
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), 'cpu')
    except OSError:
        pass
    key = f"{cpu}|{torch.get_num_threads()}|{dtype}"
    path = os.path.join(cache_dir, 'cpu_peak_flops.json')
    cache = {}
    if os.path.isfile(path):
        try:
            with open(path) as f:
                cache = json.load(f)
        except (OSError, json.JSONDecodeError):
            cache = {}
    if key not in cache:
        g = torch.Generator().manual_seed(0)  # never draw from the global RNG: runs must not depend on the cache
        a, b = (torch.randn(2048, 2048, generator=g).to(dtype) for _ in range(2))
        a @ b
        t0, n = time.perf_counter(), 8
        for _ in range(n):
            a @ b
        cache[key] = 2 * 2048 ** 3 * n / (time.perf_counter() - t0)
        try:
            os.makedirs(cache_dir, exist_ok=True)
            with atomic_open(path, 'w') as f:
                json.dump(cache, f)
        except OSError:
            pass  # an unwritable home only costs a re-measure next time
    return cache[key]


# -----------------------------------------------------------------------------
# checkpoints

CKPT_RE = re.compile(r'ckpt_(\d{7})\.pt$')


def checkpoint_path(out_dir, step):
    return os.path.join(out_dir, f'ckpt_{step:07d}.pt')


def list_checkpoints(out_dir):
    """Complete checkpoints in out_dir, oldest first (temporary files are never listed)."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(out_dir, 'ckpt_*.pt'))
             if (m := CKPT_RE.search(os.path.basename(p)))]
    return [p for _, p in sorted(found)]


def save_checkpoint(out_dir, step, state, keep_last):
    """Write state to ckpt_{step}.pt atomically (temp file, fsync, os.replace), then delete all but
    the newest keep_last. A kill at any point leaves every listed checkpoint complete."""
    os.makedirs(out_dir, exist_ok=True)
    path = checkpoint_path(out_dir, step)
    with atomic_open(path, 'wb', fsync=True) as f:
        torch.save(state, f)
    for old in list_checkpoints(out_dir)[:-keep_last] if keep_last > 0 else []:
        os.remove(old)
    return path


def load_model(path, command):
    """checkpoint -> model, the one loader of pretrain, finetune and evaluate. `path`: a checkpoint
    file, a training out_dir (its newest checkpoint) or a released directory (config.json +
    model.safetensors). Returns (model, ckpt, where): the checkpoint dict ({} for a released
    directory) and what was read. Nothing there is a UserError that says to run `command`."""
    if os.path.isfile(os.path.join(path, 'config.json')):
        return MoSE.from_pretrained(path, verbose=MASTER), {}, path
    where = path
    if os.path.isdir(path):
        found = list_checkpoints(path)
        if not found:
            raise UserError(f"no checkpoint in {path}: run `{command}` first (or pass --init_from=...)")
        where = found[-1]
    elif not os.path.isfile(path):
        raise UserError(f"no checkpoint {'at' if path.endswith('.pt') else 'in'} {path}: run `{command}` first "
                        f"(or pass --init_from=...)")
    ckpt = load_checkpoint(where)
    return MoSE.from_checkpoint(ckpt, where), ckpt, where


def check_model_tokenizer(model, ckpt, tok, where):
    """`tok` is the tokenizer the checkpoint records (if it records one) and has the model's vocabulary."""
    if isinstance(ckpt.get('tokenizer'), dict):
        check_tokenizer(ckpt['tokenizer'], tok, where)
    if model.config.vocab_size != tok.n_vocab:
        raise UserError(f"{where}: the model's vocab_size {model.config.vocab_size} does not match tokenizer "
                        f"{tok.name!r} (n_vocab {tok.n_vocab}); pass --tokenizer=<the model's tokenizer>")


def rng_state(device):
    """This process's RNG states (dropout and anything else drawing from torch's generators)."""
    state = {'torch': torch.get_rng_state()}
    if str(device).startswith('cuda'):
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device):
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and str(device).startswith('cuda'):
        torch.cuda.set_rng_state(state['cuda'], device)


def gather_rng_states(device):
    """Every rank's RNG state, in rank order (rank 0 writes them all into the checkpoint)."""
    mine = rng_state(device)
    if not dist.is_initialized():
        return [mine]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, mine)
    return states


def append_log(out_dir, entry):
    """One json line of out_dir/log.jsonl, written by rank 0."""
    if MASTER:
        with open(os.path.join(out_dir, 'log.jsonl'), 'a') as f:
            f.write(json.dumps(entry) + '\n')


def save_run(out_dir, step, model, optimizer, config, data_pos, tok, keep_last, device):
    """A training run's checkpoint: all that an exact resume needs (model, optimiser, every rank's
    RNG, data position, settings). Collective: every rank gives its RNG state; rank 0 writes."""
    rng = gather_rng_states(device)
    if MASTER:
        path = save_checkpoint(out_dir, step, {
            'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
            'model_config': config_to_dict(model.config), 'config': config, 'step': step,
            'data_pos': data_pos, 'rng': rng, 'tokenizer': tok.meta()}, keep_last)
        print(f"saved {path}", flush=True)


def truncate_log(path, step):
    """Drop log lines of steps after `step` (written by a run that was killed after its last
    checkpoint), so that a resumed run's log reads as one uninterrupted run."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        keep = [l for l in f if l.strip() and json.loads(l).get('step', 0) <= step]
    with atomic_open(path, 'w') as f:
        f.writelines(keep)
