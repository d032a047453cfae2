"""
Times the pre-training step (forward, backward, optimiser) and prints tokens/s, MFU and peak
memory; when transformers is installed, times the same configuration built on transformers'
Starcoder2Model (made bidirectional, with the same heads and loss) in the same run.

    python bench.py config/mose_tiny36.py               # CPU, fp32 (the 1B shape at width 128)
    python bench.py config/mose_1b.py --vocab_size=49156 --batch_size=8 --block_size=2048 --compile=true   # one GPU, bf16
    python bench.py config/mose_tiny.py --vocab_size=8196 --json_out=bench.jsonl --label=tiny   # + one JSON line
    python bench.py config/mose_1b.py --vocab_size=49156 --profile=true   # + where the step's time goes
    python bench.py config/mose_tiny.py --vocab_size=8196 --batch_size=512 --block_size=64 --profile=true
                                                        # the fine-tuning step's shape (finetune_tiny: 256 pairs)

MFU is the model's FLOPs (model.estimate_flops, forward x 3) per second over the device's peak:
training.PEAK_FLOPS' dense bf16 figure for a GPU, a measured matmul for a CPU. Peak memory is
torch.cuda.max_memory_allocated over each implementation's own steps on CUDA (the other one's
weights, if resident, included); on a CPU it is the process's maximum resident set, for the whole
run. With --json_out=PATH one JSON object per run is appended to PATH; a run that runs out of
device memory appends one with "error": "oom" and exits with status 3, so that a driver can retry
with a smaller batch.
"""
import copy
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

from model import MoSE, MoSEConfig, attention
from training import autocast_context, mask_tokens, peak_flops

# -----------------------------------------------------------------------------
batch_size = 8
block_size = 512
steps = 5                 # timed steps
warmup = 2                # untimed steps first (allocator, compile)
vocab_size = 100281       # cl100k_base + 4 added tokens (49156 for the released tokenizer)
device = 'cuda' if torch.cuda.is_available() else 'cpu'
dtype = 'auto'            # bfloat16 autocast where bf16 matmuls are native (training.auto_dtype)
compile = False
compare_transformers = True
seed = 1337
json_out = ''             # a path: append one JSON object with this run's results
label = ''                # a name for this configuration in the JSON record
profile = False           # then: model.py's step in phases, its MLM loss and attention timed alone, top kernels
# model (MoSEConfig defaults: the released 1B; a config file overrides them)
n_layer = 36
n_embd = 1024
n_head = 16
n_kv_head = 4
intermediate_size = 12288
rope_theta = 999999.4420358813
norm_eps = 1e-5
bias = True
attn_dropout = 0.0
resid_dropout = 0.0
embd_dropout = 0.0
init_std = 0.018042
embed_std = 0.0
exit_layers = [4, 9, 18, 27, 36]
conditional_size = 4
# keys the pre-training config files also set, accepted and unused here
out_dir, total_batch_tokens, max_steps, warmup_steps, learning_rate, lr_milestones = '', 0, 0, 0, 0.0, []
log_interval, eval_interval, eval_batches, ckpt_interval = 0, 0, 0, 0
embed_lr_mult, data_dir, tokenizer = 1.0, '', ''
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())
# -----------------------------------------------------------------------------

device_type = 'cuda' if device.startswith('cuda') else 'cpu'
dtype, ptdtype, autocast = autocast_context(device_type, dtype)
if device_type == 'cuda':
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
torch.manual_seed(seed)

cfg = MoSEConfig(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_kv_head=n_kv_head,
                 intermediate_size=intermediate_size, rope_theta=rope_theta, max_seq_len=block_size, norm_eps=norm_eps,
                 bias=bias, attn_dropout=attn_dropout, resid_dropout=resid_dropout, embd_dropout=embd_dropout,
                 init_std=init_std, embed_std=embed_std, exit_layers=exit_layers, conditional_size=conditional_size,
                 pad_id=vocab_size - 1)
with torch.device(device):  # initialised where it runs: the 1B model's normal_ inits are slow on a CPU
    model = MoSE(cfg)
SPECIALS = {vocab_size - 4, vocab_size - 3, vocab_size - 2, vocab_size - 1}  # sep, cls, mask, pad
g = torch.Generator().manual_seed(seed)
idx = torch.randint(0, vocab_size - 4, (batch_size, block_size), generator=g)
idx[:, -1] = vocab_size - 3  # <cls> last
inputs, positions, targets = mask_tokens(idx, SPECIALS, vocab_size, vocab_size - 2, g)
labels = torch.randint(0, 2, (batch_size,), generator=g)
batch = [t.to(device) for t in (inputs, positions, targets, labels)]
flops_per_step = 3 * model.estimate_flops(block_size, mlm_tokens=len(targets) / batch_size) * batch_size
peak = peak_flops(device, ptdtype if device_type == 'cpu' else torch.bfloat16)


def make_step(loss_fn, params):
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-6, fused=device_type == 'cuda')

    def step():
        with autocast:
            loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    step.loss_fn, step.opt, step.params = loss_fn, opt, params
    return step


def sync():
    if device_type == 'cuda':
        torch.cuda.synchronize()


def timed(fn, n=3):
    """Median seconds of fn() over n calls, the device synchronised around each."""
    ts = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


CATEGORIES = (  # kernel (CUDA) or operator (CPU) names, lower-cased, first match wins
    ('attention', ('flash', 'fmha', 'attention', 'sdpa')),
    ('layernorm', ('layer_norm', 'layernorm')),
    ('matmul', ('gemm', 'gemv', 'cutlass', 'nvjet', 'xmma', 'cublas', 'aten::mm', 'aten::addmm', 'aten::bmm', 'matmul')),
    ('softmax (MLM / ICC loss)', ('softmax',)),
    ('optimizer', ('adam',)),
    ('gradient norm / clip', ('norm', 'foreach')),
)


def category(name):
    n = name.lower()
    return next((c for c, keys in CATEGORIES if any(k in n for k in keys)), 'other (elementwise, copies)')


def profile_model_step():
    """Where model.py's step goes: the phases of one step; the MLM loss of every exit and the attention
    of every block timed alone (forward + backward, the shapes of this run); and one step under
    torch.profiler, its device time by kind of kernel (operators on a CPU) and the top kernels."""
    step, out = runners['model.py'], {}
    sync()
    t = [time.perf_counter()]
    with autocast:
        loss = step.loss_fn()
    sync()
    t.append(time.perf_counter())
    loss.backward()
    sync()
    t.append(time.perf_counter())
    torch.nn.utils.clip_grad_norm_(step.params, 1.0)
    step.opt.step()
    step.opt.zero_grad(set_to_none=True)
    sync()
    t.append(time.perf_counter())
    out['phases_ms'] = {k: 1000 * (b - a) for k, a, b in zip(('forward', 'backward', 'clip + optimizer'), t, t[1:])}

    exits = list(cfg.exit_layers)
    hs = [torch.randn(batch_size, block_size, n_embd, device=device, requires_grad=True) for _ in exits]

    def mlm():
        with autocast:
            total = sum(model.mlm_loss(h, e, batch[1], batch[2])[0] for h, e in zip(hs, exits))
        total.backward()
    hd = n_embd // n_head  # q, k, v in the compute dtype, as the blocks' projections give them under autocast
    q = torch.randn(batch_size, n_head, block_size, hd, device=device, dtype=ptdtype, requires_grad=True)
    k, v = (torch.randn(batch_size, n_kv_head, block_size, hd, device=device, dtype=ptdtype, requires_grad=True)
            for _ in range(2))
    gy = torch.randn_like(q)
    ones = torch.ones(batch_size, block_size, dtype=torch.bool, device=device)
    p = attn_dropout

    def attn(mask):
        return lambda: attention(q, k, v, mask, p).backward(gy)

    def sdpa():  # SDPA on the compute dtype as it comes, which model.attention does not use for bf16 on a CPU
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p, enable_gqa=n_kv_head != n_head).backward(gy)
    out['alone_ms'] = {f'MLM loss, {len(exits)} exits': 1000 * timed(mlm),
                       f'attention, {n_layer} blocks, mask None': 1000 * n_layer * timed(attn(None)),
                       f'attention, {n_layer} blocks, all-True mask': 1000 * n_layer * timed(attn(ones)),
                       f'SDPA in {dtype} directly, {n_layer} blocks': 1000 * n_layer * timed(sdpa)}
    model.zero_grad(set_to_none=True)
    hs = q = k = v = gy = None  # freed before the profile

    from torch.profiler import ProfilerActivity, profile as tprofile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device_type == 'cuda' else [])
    with tprofile(activities=acts) as prof:
        step()
        sync()
    rows = []
    for e in prof.key_averages():
        if device_type == 'cuda':  # kernels only: an operator's device time is its kernels'
            if getattr(e, 'device_type', None) is None or 'CUDA' not in str(e.device_type):
                continue
            us = getattr(e, 'self_device_time_total', None) or getattr(e, 'self_cuda_time_total', 0)
        else:
            us = e.self_cpu_time_total
        if us > 0:
            rows.append((us, e.key))
    total = sum(us for us, _ in rows) or 1.0
    by_cat = {}
    for us, name in rows:
        by_cat[category(name)] = by_cat.get(category(name), 0.0) + us
    out['profiled_ms'] = total / 1000
    out['by_kind_pct'] = {c: 100 * us / total for c, us in sorted(by_cat.items(), key=lambda kv: -kv[1])}
    out['top'] = [{'name': name[:120], 'pct': 100 * us / total} for us, name in sorted(rows, reverse=True)[:8]]
    return out


def mem_text(b):
    return f"{b / 2 ** 30:.2f} GiB" if b is not None else 'n/a'


record = {'label': label, 'device': device, 'device_name': torch.cuda.get_device_name(device) if device_type == 'cuda' else 'cpu',
          'torch': torch.__version__, 'dtype': dtype, 'compile': compile, 'threads': torch.get_num_threads(),
          'batch_size': batch_size, 'block_size': block_size, 'n_layer': n_layer, 'n_embd': n_embd, 'vocab_size': vocab_size,
          'exit_layers': list(cfg.exit_layers), 'params': model.num_params(), 'peak_flops': peak,
          'flops_per_step': flops_per_step, 'error': None, 'runs': {}}


def write_record():
    if json_out:
        os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
        with open(json_out, 'a') as f:
            f.write(json.dumps(record) + '\n')


def out_of_memory(e):
    """One line and exit status 3 (with the record written): the driver retries with a smaller batch."""
    record['error'] = 'oom'
    write_record()
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    print(f"error: out of memory at batch {batch_size} x {block_size} on {record['device_name']} ({msg})", file=sys.stderr)
    sys.exit(3)


print(f"device {device} ({record['device_name']}), {dtype}, {torch.get_num_threads()} threads, batch {batch_size} x "
      f"{block_size}, {model.num_params() / 1e6:.1f}M parameters, compile {compile}, "
      f"peak {f'{peak / 1e12:.2f} TFLOP/s' if peak else 'n/a (this GPU is not in training.PEAK_FLOPS: no MFU)'}")
ours_loss = torch.compile(model.pretrain_loss) if compile else model.pretrain_loss
runners = {'model.py': make_step(lambda: ours_loss(batch[0], None, *batch[1:])[0], list(model.parameters()))}

try:
    import transformers
except ImportError:
    transformers = None
if compare_transformers and transformers is not None:
    hf_cfg = transformers.Starcoder2Config(
        vocab_size=cfg.padded_vocab_size, hidden_size=n_embd, intermediate_size=intermediate_size, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_kv_head, max_position_embeddings=block_size,
        rope_theta=rope_theta, use_bias=bias, norm_epsilon=norm_eps, sliding_window=None, residual_dropout=resid_dropout,
        embedding_dropout=embd_dropout, attention_dropout=attn_dropout, hidden_act='gelu_pytorch_tanh',
        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    hf_cfg.is_causal = False  # bidirectional: transformers builds no causal mask ...
    hf = transformers.Starcoder2Model(hf_cfg).to(device)
    for layer in hf.layers:
        layer.self_attn.is_causal = False  # ... and SDPA is not told to apply one
    hf.load_state_dict({k: v for k, v in model.state_dict().items() if k.split('.')[0] in ('embed_tokens', 'layers', 'norm')})
    heads = copy.deepcopy(model)  # the same heads and loss as model.py, as a separate copy of the weights
    head_params = [p for m in (heads.exit_embedding, heads.mlm_head, heads.icc_head) for p in m.parameters()]

    def hf_loss():
        hs = hf(input_ids=batch[0], output_hidden_states=True).hidden_states
        total = 0.0
        for e in cfg.exit_layers:
            total = total + e / n_layer * (F.cross_entropy(heads.mlm_logits(hs[e], e, batch[1]).float(), batch[2]) +
                                           F.cross_entropy(heads.icc_logits(hs[e], e).float(), batch[3]))
        return total

    with torch.no_grad(), autocast:  # the same function first
        diff = (hf_loss() - model.pretrain_loss(batch[0], None, *batch[1:])[0]).abs().item()
    print(f"loss difference model.py vs transformers: {diff:.2e}")
    record['loss_diff_transformers'] = diff
    runners['transformers'] = make_step(torch.compile(hf_loss) if compile else hf_loss,
                                        list(hf.parameters()) + head_params)

# the implementations take turns step by step, so that a machine whose speed drifts (a shared CPU,
# clocks) slows them alike; each starts from the same weights and sees the same batch
times = {name: [] for name in runners}
first = {}   # the first step: allocator warm-up, and compilation with --compile=true
peak_mem = {name: 0 for name in runners}
losses = {}
try:
    for i in range(warmup + steps):
        for name, step in runners.items():
            sync()
            if device_type == 'cuda':
                torch.cuda.reset_peak_memory_stats(device)
            t0 = time.perf_counter()
            loss = step()
            sync()
            dt = time.perf_counter() - t0
            if device_type == 'cuda':
                peak_mem[name] = max(peak_mem[name], torch.cuda.max_memory_allocated(device))
            first.setdefault(name, dt)
            if i >= warmup:
                times[name].append(dt)
            losses[name] = loss.item()
except torch.OutOfMemoryError as e:
    out_of_memory(e)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
dts = {}
for name, ts in times.items():
    dts[name] = dt = sorted(ts)[len(ts) // 2] if ts else first[name]  # median step
    mfu = flops_per_step / dt / peak if peak else None
    mem = peak_mem[name] if device_type == 'cuda' else None
    record['runs'][name] = {'ms_per_step': 1000 * dt, 'tok_s': batch_size * block_size / dt, 'mfu': mfu,
                            'peak_mem_bytes': mem, 'first_step_s': first[name], 'loss': losses[name],
                            'loss_finite': math.isfinite(losses[name])}
    print(f"{name:>14}: {dt * 1000:8.1f} ms/step | {batch_size * block_size / dt:10,.0f} tok/s | "
          f"mfu {f'{100 * mfu:5.1f}%' if mfu is not None else '  n/a'} | peak mem {mem_text(mem)} | "
          f"first step {first[name]:.1f} s")
if device_type == 'cpu':
    print(f"peak memory on the CPU: max resident set of this process, all runs together: {mem_text(rss)}")
record['max_rss_bytes'] = rss
if 'transformers' in dts:
    print(f"model.py is {dts['transformers'] / dts['model.py']:.2f}x transformers' Starcoder2Model on this step")
    record['speedup_vs_transformers'] = dts['transformers'] / dts['model.py']
if profile:
    try:
        record['profile'] = pr = profile_model_step()
    except torch.OutOfMemoryError as e:
        out_of_memory(e)
    print('model.py step, phases: ' + ', '.join(f"{k} {v:.1f} ms" for k, v in pr['phases_ms'].items()))
    print('alone (forward + backward): ' + ', '.join(f"{k} {v:.1f} ms" for k, v in pr['alone_ms'].items()))
    print(f"profiled step ({pr['profiled_ms']:.1f} ms of {'kernels' if device_type == 'cuda' else 'operators'}): " +
          ', '.join(f"{k} {v:.0f}%" for k, v in pr['by_kind_pct'].items()))
    for row in pr['top']:
        print(f"  {row['pct']:5.1f}%  {row['name']}")
write_record()
if not all(r['loss_finite'] for r in record['runs'].values()):
    sys.exit("error: non-finite loss (" + ', '.join(f"{n}: {r['loss']}" for n, r in record['runs'].items()) + ")")
