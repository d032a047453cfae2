"""
Evaluation of a fine-tuned MoSE at its exits (paper 6.1, 6.2: Table 1, Table 2, Figure 1b).

    python evaluate.py                  # csn + code-code on prepare.py's held-out data, every exit in one pass
    python evaluate.py --exit 18        # one exit; --exit 4,36 some; --exit=all every one
    python evaluate.py --task csn --csn_dir=CodeSearchNet/resources/data            # {lang}/final/jsonl/test
    python evaluate.py --task ct --ct_dir=CodeXGLUE/Code-Code/code-to-code-trans/data
    python evaluate.py --task poj104 --poj104_path=POJ-104/dataset/test.jsonl
    python evaluate.py --task bcb --bcb_dir=BigCloneBench/dataset                   # a clone model
    python evaluate.py --task all ...   # every task whose data (and model) is there
    python evaluate.py --init_from=ModularStarEncoder-finetuned --tokenizer=starcoder2-tokenizer ...

Each task's protocol is its eval_ function's docstring (benchmarks.py); chance, BM25 and the NBoW floor run
on the same batches. Writes out_dir/results.json, predictions/{task}_exit{E}.jsonl (bcb .txt) for the CodeXGLUE
evaluators, and tradeoff.png: each metric against forward GFLOPs per exit (Fig. 1b).
"""
import os
import time

import numpy as np
import torch

from baselines import bm25_scores, train_nbow
from benchmarks import eval_bcb, eval_code_code, eval_csn, eval_ct, eval_poj104, timing_sample
from data import (atomic_open, load_bigclonebench, load_codesearchnet, load_codexglue_ct, load_poj104, read_pairs,
                  write_json)
from encode import batched_forward, encoder  # the one batching of the project
from significance import pooled, report as significance_report
from stage import fail, format_table, make_dir, make_out_dir, note
from tokenizer import get_tokenizer
from training import UserError, autocast_context, check_model_tokenizer, load_model


# -----------------------------------------------------------------------------
# command line

def parse_exits(spec, valid):
    """'all' -> every configured exit; '18' -> [18]; '4,36' or '[4, 36]' -> [4, 36]."""
    valid = list(valid)
    s = str(spec).strip().strip('[]()').replace(' ', '')
    if s.lower() == 'all':
        return valid
    try:
        exits = sorted({int(x) for x in s.split(',') if x})
    except ValueError:
        exits = []
    if not exits:
        raise UserError(f"--exit={spec!r}: expected an exit layer such as {valid[-1]}, a comma list such as "
                        f"{valid[0]},{valid[-1]}, or 'all'; valid exits: {valid}")
    for e in exits:
        if e not in valid:
            raise UserError(f"exit {e} is not configured; valid exits: {valid}")
    return exits


def parse_tasks(spec):
    """'default' -> csn + code-code, 'all' -> every task (both lenient: a task whose data or model
    is missing is skipped with a note); otherwise a comma list of task names (strict)."""
    known = ('csn', 'code-code', 'ct', 'poj104', 'bcb')
    s = spec.strip().lower()
    if s == 'default':
        return ['csn', 'code-code'], True
    if s == 'all':
        return list(known), True
    names = [t for t in s.replace(' ', '').split(',') if t]
    for t in names:
        if t not in known:
            raise UserError(f"unknown task {t!r}: expected default, all, or a comma list of {', '.join(known)}")
    if not names:
        raise UserError("--task is empty")
    return list(dict.fromkeys(names)), False


def parse_significance(spec, tasks):
    """'' -> None; 'csn' -> ('csn', ''): the per-exit tests on every csn query; 'csn/python' on one
    language's; 'code-code' on the code-code pairs. The task must be among those run."""
    task, _, group = spec.strip().lower().partition('/')
    if not task:
        return None
    if task not in ('csn', 'code-code') or task not in tasks or (group and task != 'csn'):
        raise UserError(f"--significance={spec!r}: expected csn, csn/<language> or code-code, "
                        f"a retrieval task that runs (tasks: {', '.join(tasks)})")
    return task, group


# -----------------------------------------------------------------------------
# scoring, timing

def clone_scorer(model, exits, autocast):
    """idx -> {exit: (B, 1) p(clone)} from each exit's classifier: one forward to the deepest exit."""
    logits = encoder(model, exits, autocast, 'classify')

    @torch.inference_mode()
    def fn(idx):
        return {e: torch.softmax(v.float(), -1)[:, 1:2] for e, v in logits(idx).items()}
    return fn


def snippets_per_second(fn, seqs, batch_size, pad_id, device='cpu', max_seq_len=None, min_time=1.0, max_reps=10):
    """Throughput of fn over `seqs`, encoded as the evaluation encodes (batched_forward: sorted by
    length, batches of batch_size). Passes repeat until min_time has passed (at most max_reps);
    snippets/s from the median pass. Run it after the evaluation: kernels and allocator are warm."""
    sync = torch.cuda.synchronize if str(device).startswith('cuda') else (lambda: None)
    times, t_start = [], time.perf_counter()
    while len(times) < max_reps and (not times or time.perf_counter() - t_start < min_time):
        sync()
        t0 = time.perf_counter()
        batched_forward(fn, seqs, batch_size, pad_id, device, max_seq_len, what=None)
        sync()
        times.append(time.perf_counter() - t0)
    return len(seqs) / float(np.median(times))


# -----------------------------------------------------------------------------
# writing, the trade-off plot

def write_lines(path, lines):
    """Text lines, written atomically (data.atomic_open)."""
    with atomic_open(path, 'w', encoding='utf-8') as f:
        for line in lines:
            f.write(line + '\n')


def plot_tradeoff(path, series, title, levels=None):
    """Metric (%) vs forward GFLOPs, one point per exit, one line per metric (paper Fig. 1b).
    series: {label: [(exit, GFLOPs, value in [0, 1]), ...]}; levels: {label: {baseline: value}},
    drawn as horizontal lines in the colour of their series (chance, BM25, NBoW). Returns a note
    when matplotlib is missing, else None."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no trade-off plot (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, points in series.items():
        points = sorted(points)
        xs, ys = [g for _, g, _ in points], [100 * v for _, _, v in points]
        lines = ax.plot(xs, ys, marker='o', label=label)
        color = lines[0].get_color() if lines else None
        for (e, _, _), x, y in zip(points, xs, ys):
            ax.annotate(f"L{e}", (x, y), textcoords='offset points', xytext=(4, 4), fontsize=8)
        for (name, v), style in zip((levels or {}).get(label, {}).items(), (':', '--', '-.')):
            ax.axhline(100 * v, color=color, linestyle=style, linewidth=1, label=f"{label}: {name}")
    ax.set_xlabel('forward GFLOPs per 512-token snippet')
    ax.set_ylabel('score (%)')
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


# -----------------------------------------------------------------------------
# data, models, cost, report

def csn_sources(root, split):
    """Paths to read: the distributed layout {root}/{lang}/final/jsonl/{split}/, a {lang} dir, or
    else root itself (a file or directory of jsonl files). Rows are grouped by their language."""
    if os.path.isdir(os.path.join(root, 'final', 'jsonl', split)):
        return [os.path.join(root, 'final', 'jsonl', split)]
    if os.path.isdir(root):
        found = [os.path.join(root, lang, 'final', 'jsonl', split) for lang in sorted(os.listdir(root))
                 if os.path.isdir(os.path.join(root, lang, 'final', 'jsonl', split))]
        if found:
            return found
    if not os.path.exists(root):
        raise FileNotFoundError(f"{root}: not found")
    return [root]


def read_task_data(t, split, csn_dir, pairs_dir, ct_dir, poj104_path, bcb_dir, limit=0):
    """The rows of task t, from its files as distributed (formats: data.py); limit > 0: the first N."""
    limited = lambda rows: rows[:limit] if limit > 0 else rows
    if t == 'csn':
        langs = {}
        for path in csn_sources(csn_dir, split):
            for r in load_codesearchnet(path):
                langs.setdefault(r['language'], []).append(r)
        return {lang: limited(rows) for lang, rows in sorted(langs.items())}
    if t == 'code-code':
        path = os.path.join(pairs_dir, f'{split}.jsonl')
        rows = [r for r in read_pairs(path) if r['kind'] == 'code-code']
        if not rows:
            raise UserError(f"{path}: no code-code pairs")
        return limited(rows)
    if t == 'ct':
        if not ct_dir:
            raise UserError("task ct needs --ct_dir=<CodeXGLUE code-to-code-trans data dir>")
        return limited(load_codexglue_ct(ct_dir, split))
    if t == 'poj104':
        if not poj104_path:
            raise UserError("task poj104 needs --poj104_path=<POJ-104 jsonl, e.g. test.jsonl>")
        rows, seen = limited(load_poj104(poj104_path)), set()
        for r in rows:
            if r['index'] in seen:
                raise ValueError(f"{poj104_path}: index {r['index']!r} occurs twice (indices must be unique)")
            seen.add(r['index'])
        return rows
    funcs, pairs, n_missing = load_bigclonebench(bcb_dir, split)
    if n_missing:
        note(f"bcb: {n_missing:,} pairs of {bcb_dir}/{split}.txt name ids missing from data.jsonl: skipped")
    return funcs, limited(pairs), n_missing


def load_eval_model(path, kind, tokenizer, device):
    """(model, tokenizer, info) of a retrieval model or (kind 'clone') a clone classifier; the
    tokenizer is `tokenizer`, or else the one the checkpoint records."""
    command = f"python finetune.py --task {kind}"
    if os.path.isfile(os.path.join(path, 'config.json')) and not tokenizer:
        raise UserError(f"{path} is a released checkpoint: pass its tokenizer, "
                        f"--tokenizer=<StarCoder-2 tokenizer dir with vocab.json and merges.txt>")
    model, ckpt, where = load_model(path, command)
    meta = ckpt.get('tokenizer')
    tok = get_tokenizer(tokenizer or (meta.get('source') or meta.get('name') if isinstance(meta, dict) else 'cl100k_base'))
    check_model_tokenizer(model, ckpt, tok, where)
    if kind == 'clone' and model.config.n_classes != 2:
        raise UserError(f"{where} is not a clone classifier (n_classes={model.config.n_classes}); "
                        f"fine-tune one with `{command}` or pass --init_from=<clone checkpoint>")
    if kind == 'retrieval' and model.config.n_classes:
        raise UserError(f"{where} is a clone classifier, not a retrieval model; pass --init_from=<retrieval "
                        f"checkpoint> or run `{command}`")
    if kind == 'retrieval' and not model.config.proj_heads:
        note(f"{where} has no retrieval projection heads (fine-tuned with proj_heads=False, or not fine-tuned): "
             f"using the {model.config.pooling}-pooled exit states")
    return model.to(device).eval(), tok, {'path': where, 'step': ckpt.get('step'), 'tokenizer': tok.name}


def load_models(data, skipped, lenient, init_from, tokenizer, device):
    """{kind: (model, tok, info)}: a retrieval model for the retrieval tasks of `data`, a clone
    classifier for bcb. Under 'all' (lenient) the tasks of a model that is absent move from `data`
    to `skipped`, unless no task would be left."""
    models = {}
    for kind in ('retrieval', 'clone'):
        kind_tasks = [t for t in data if (t == 'bcb') == (kind == 'clone')]
        if not kind_tasks:
            continue
        try:
            models[kind] = load_eval_model(init_from or f'out/finetune-{kind}', kind, tokenizer, device)
        except (OSError, ValueError, UserError) as e:
            if not lenient or (kind == 'retrieval' and not init_from) or len(data) == len(kind_tasks):
                raise
            for t in kind_tasks:
                skipped[t] = str(e)
                del data[t]
                note(f"skipping {t}: {e}")
    return models


def make_baselines(bm25, nbow, nbow_pairs, tok, nbow_seconds):
    """{name: score(queries, docs) -> (Q, N) scores}: BM25, and the learned floor, an NBoW trained on
    the fine-tuning pairs with the model's tokenizer; and the NBoW's training record (or None)."""
    baselines = {'BM25': bm25_scores} if bm25 else {}
    if not nbow:
        return baselines, None
    try:
        rows = read_pairs(nbow_pairs)
    except (OSError, ValueError, UserError) as e:
        note(f"no NBoW baseline: {e}")
        return baselines, None
    floor, info = train_nbow([(r['query'], r['code']) for r in rows], tok, max_seconds=nbow_seconds)
    info['pairs_file'] = nbow_pairs
    baselines['NBoW'] = lambda qs, cs: (floor.embed(qs) @ floor.embed(cs).T).numpy()
    print(f"NBoW baseline: {info['epochs']} epochs over {info['pairs']:,} pairs of {nbow_pairs} in {info['seconds']:.1f}s")
    return baselines, info


def exit_costs(model, kind, exits, snippets, autocast, batch_size, speed_batch, device):
    """Per exit: parameters, forward GFLOPs of a 512-token snippet, and snippets/s: the speed_batch
    snippets of median length of `snippets` encoded again to that exit alone (one forward to the
    deepest exit does not tell what a shallower exit costs by itself), in batches of batch_size as in
    the evaluation; the median of repeated passes."""
    tb = [snippets[i] for i in timing_sample([len(x) for x in snippets], speed_batch)]
    cost = {}
    for e in exits:
        one = encoder(model, [e], autocast) if kind == 'retrieval' else clone_scorer(model, [e], autocast)
        cost[str(e)] = {'params': model.num_params(e), 'gflops_512': model.estimate_flops(512, e) / 1e9,
                        'snippets_per_s': snippets_per_second(one, tb, batch_size, model.config.pad_id, device,
                                                              model.config.max_seq_len)}
    return {'exits': cost, 'timing': {'snippets': len(tb), 'mean_tokens': float(np.mean([len(s) for s in tb])),
                                      'batch_size': batch_size}}


HEADLINE = {'csn': [('mrr', 'csn MRR'), ('ndcg@10', 'csn NDCG@10')], 'code-code': [('mrr', 'code-code MRR')],
            'ct': [('mrr', 'ct MRR')], 'poj104': [('map@r', 'poj104 MAP@R')],
            'bcb': [('precision', 'bcb P'), ('recall', 'bcb R'), ('f1', 'bcb F1')]}


def print_report(info, tasks, exits, system):
    """The table of one model: cost and headline metrics per exit, the baselines, csn by language."""
    cols = [(t, k, label) for t in tasks for k, label in HEADLINE[t]]
    header = ['exit', 'params', 'GFLOPs/512', 'snippets/s'] + [label for _, _, label in cols]
    rows = [[str(e), f"{c['params'] / 1e6:.1f}M", f"{c['gflops_512']:.2f}", f"{c['snippets_per_s']:.1f}"] +
            [f"{100 * tasks[t]['exits'][str(e)][k]:.2f}" for t, k, _ in cols]
            for e, c in ((e, info['exits'][str(e)]) for e in exits)]
    timing = info['timing']
    print(f"\nmetrics in %; snippets/s: {timing['snippets']} snippets of median length of {next(iter(tasks))} "
          f"({timing['mean_tokens']:.0f} tokens) in batches of {timing['batch_size']}, {system}")
    print(format_table(header, rows))
    for t, res in tasks.items():
        for name, b in res.get('baselines', {}).items():
            print(f"{name} on the same {t} batches: MRR {100 * np.mean([v['mrr'] for v in b.values()]):.2f}"
                  + (f", NDCG@10 {100 * np.mean([v['ndcg@10'] for v in b.values()]):.2f}" if name != 'chance' else ''))
    langs = list(tasks['csn']['languages']) if 'csn' in tasks else []
    if len(langs) > 1:
        print('\ncsn MRR by language (%)')
        print(format_table(['exit'] + langs + ['avg'],
                           [[str(e)] + [f"{100 * tasks['csn']['exits'][str(e)][k]:.2f}"
                                        for k in [f'mrr/{l}' for l in langs] + ['mrr']] for e in exits]))
    print()


def plot_results(path, results):
    """tradeoff.png of results.json: each task's headline metric per exit against its GFLOPs, with the baselines."""
    series, levels = {}, {}
    for t, res in results['tasks'].items():
        k = {'csn': 'mrr', 'code-code': 'mrr', 'ct': 'mrr', 'poj104': 'map@r', 'bcb': 'f1'}[t]
        cost = results['models'][res['model']]['exits']
        series[f"{t} {k.upper()}"] = [(int(e), cost[e]['gflops_512'], v[k]) for e, v in res['exits'].items()]
        levels[f"{t} {k.upper()}"] = {name: float(np.mean([v[k] for v in b.values()]))
                                      for name, b in res.get('baselines', {}).items()}
    return plot_tradeoff(path, series, 'MoSE: cost vs quality per exit', levels)


# -----------------------------------------------------------------------------

if __name__ == '__main__':
    task = 'default'                 # 'default' (csn + code-code on local data), 'all', or a comma list of
                                     # csn, code-code, ct, poj104, bcb
    exit = 'all'                     # an exit layer (18), a comma list (4,36) or 'all' (one pass for all)
    # models
    init_from = ''                   # checkpoint file, a finetune out_dir (its newest checkpoint) or a released
                                     # checkpoint dir (config.json); '' = out/finetune-retrieval for retrieval
                                     # tasks and out/finetune-clone for bcb
    tokenizer = ''                   # '' = the one recorded in the checkpoint; a released model needs the
                                     # StarCoder-2 tokenizer dir (vocab.json + merges.txt)
    # data (formats as distributed; the defaults are prepare.py's local held-out data)
    split = 'test'
    csn_dir = 'data/codesearchnet'   # {lang}/final/jsonl/{split}/*.jsonl.gz, a {lang} dir, or jsonl(.gz) file(s)
    pairs_dir = 'data/retrieval'     # {split}.jsonl fine-tuning pairs: its code-code pairs
    ct_dir = ''                      # CodeXGLUE code-to-code-trans data dir ({split}.java-cs.txt.{java,cs})
    poj104_path = ''                 # POJ-104 jsonl ({label, index, code}), e.g. test.jsonl
    bcb_dir = 'data/bigclonebench'   # data.jsonl + {split}.txt
    limit = 0                        # > 0: only the first N rows / pairs of each task (a quick look, not comparable)
    # baselines on the same batches as the model (baselines.py): chance, BM25 and the learned floor
    bm25 = True                      # BM25 on csn / code-code / ct
    nbow = True                      # CodeSearchNet's NBoW, trained on nbow_pairs with the model's tokenizer
    nbow_pairs = ''                  # its training pairs; '' = {pairs_dir}/train.jsonl, the fine-tuning pairs
    nbow_seconds = 60.0              # training budget of the NBoW (5 epochs, or fewer if this runs out)
    # inference
    max_len = 512                    # tokens per input, prompt and <cls> included (CodeXGLUE's usual 512)
    batch_size = 64
    candidates = 1000                # csn / code-code batch size: 1 target among 999 distractors
    pred_top = 100                   # candidates per query in the csn / code-code / ct prediction files
    threshold = 0.5                  # bcb: a pair is a clone when p(clone) > threshold
    speed_batch = 64                 # snippets in the fixed timing set (per-exit snippets/s): those of median length
    significance = ''                # 'csn', 'csn/<language>' or 'code-code': paired permutation tests of the
                                     # similarity to the correct candidate between every two exits (paper Fig. 4)
    # output
    out_dir = 'out/eval'
    plot = True                      # tradeoff.png (needs matplotlib)
    # system
    device = 'cuda' if torch.cuda.is_available() else 'cpu'
    dtype = 'auto'                   # 'auto': bfloat16 autocast where bf16 matmuls are native (training.auto_dtype)
    threads = 0                      # CPU threads for torch; 0 = torch's default. On a CPU shared with other jobs,
                                     # fewer threads than cores avoids OpenMP spin-waits
    # -------------------------------------------------------------------------
    config = {}  # every setting by name, filled in by the configurator
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())  # -> config
    # -------------------------------------------------------------------------

    # setup: before any work, so that an unwritable out_dir or a bad setting stops at once
    make_out_dir(out_dir)
    if threads > 0:
        torch.set_num_threads(threads)
    device_type = 'cuda' if device.startswith('cuda') else 'cpu'
    try:
        dtype, _, autocast = autocast_context(device_type, dtype)
        tasks, lenient = parse_tasks(task)  # 'default' / 'all' skip a task whose data or model is absent
        sig = parse_significance(significance, tasks)
    except UserError as e:
        fail(e)
    if device_type == 'cuda':
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    for key, val in (('batch_size', batch_size), ('candidates', candidates), ('speed_batch', speed_batch),
                     ('max_len', max_len)):
        if val < (3 if key == 'max_len' else 1):
            fail(f"{key}={val} must be positive (max_len >= 3)")

    # data: every selected benchmark is read first, so that a bad file stops before any model work
    data, skipped = {}, {}
    for t in tasks:
        try:
            data[t] = read_task_data(t, split, csn_dir, pairs_dir, ct_dir, poj104_path, bcb_dir, limit)
        except (OSError, ValueError, UserError) as e:
            if not lenient or not isinstance(e, (FileNotFoundError, UserError)):
                fail(e)  # absent data is skipped, never a malformed file
            skipped[t] = str(e)
    if not data:
        fail("no data to evaluate: " + '; '.join(f"{t}: {why}" for t, why in skipped.items()) +
             ("; run `python prepare.py` first" if task == 'default' else ''))
    for t, why in skipped.items():
        note(f"skipping {t}: {why}")
    if sig and (sig[0] not in data or sig[1] and sig[1] not in data[sig[0]]):
        fail(f"--significance={significance}: no such data to test (tasks read: {', '.join(data)}"
             + (f"; csn languages: {', '.join(data['csn'])})" if 'csn' in data else ')'))

    # models: one for the retrieval tasks, a clone classifier for bcb; then the baselines
    try:
        models = load_models(data, skipped, lenient, init_from, tokenizer, device)
        exit_sets = {kind: parse_exits(exit, m.config.exit_layers) for kind, (m, _, _) in models.items()}
        if sig and len(exit_sets['retrieval']) < 2:
            raise UserError(f"--significance compares exits: --exit={exit} selects {exit_sets['retrieval']}; "
                            f"pass --exit=all or two or more")
    except (OSError, ValueError, UserError) as e:
        fail(e)
    baselines, floor_info = make_baselines(bm25, nbow and 'retrieval' in models,
                                           nbow_pairs or os.path.join(pairs_dir, 'train.jsonl'),
                                           models['retrieval'][1] if 'retrieval' in models else None, nbow_seconds)

    # run: each model on its tasks, then its per-exit cost
    make_dir(os.path.join(out_dir, 'predictions'))
    system = f"{device} {dtype}" + (f", {torch.get_num_threads()} thread(s)" if device_type == 'cpu' else '')
    results = {'config': config, 'device': device, 'dtype': dtype, 'threads': torch.get_num_threads(),
               'models': {}, 'tasks': {}, 'nbow': floor_info, 'skipped': skipped}
    for kind, (model, tok, info) in models.items():
        exits, L = exit_sets[kind], min(max_len, model.config.max_seq_len)
        if L < max_len:
            note(f"max_len {max_len} exceeds the model's max_seq_len {L}: using {L}")
        kind_tasks = [t for t in data if (t == 'bcb') == (kind == 'clone')]
        print(f"{kind} model: {info['path']}" + (f" (step {info['step']})" if info['step'] is not None else '') +
              f" | exits {exits} | tokenizer {tok.name} | max_len {L} | {device} {dtype} | tasks {', '.join(kind_tasks)}")
        fn = encoder(model, exits, autocast) if kind == 'retrieval' else clone_scorer(model, exits, autocast)

        def encode(seqs, what, lengths=None):
            return batched_forward(fn, seqs, batch_size, tok.pad_id, device, model.config.max_seq_len, lengths, what,
                                   tok.n_vocab)

        run = {'csn': lambda d: eval_csn(d, tok, encode, exits, L, baselines, candidates, pred_top),
               'code-code': lambda d: eval_code_code(d, tok, encode, exits, L, baselines, candidates, pred_top),
               'ct': lambda d: eval_ct(d, tok, encode, exits, L, baselines, pred_top),
               'poj104': lambda d: eval_poj104(d, tok, encode, exits, L),
               'bcb': lambda d: eval_bcb(d, tok, encode, exits, L, threshold, speed_batch)}
        timing = None  # the first task's snippets make the fixed timing set
        for t in kind_tasks:
            t0 = time.time()
            res, lines, snippets = run[t](data[t])
            timing = timing or snippets
            target_sims = res.pop('target_similarity', None)
            if sig and sig[0] == t:
                res['significance'] = significance_report(
                    pooled(target_sims, sig[1]), os.path.join(out_dir, f"significance_{t}.png"),
                    f"{t}{'/' + sig[1] if sig[1] else ''}: similarity to the correct candidate, exit vs exit")
            res['predictions'] = {}
            for e in exits:
                path = os.path.join(out_dir, 'predictions', f"{t}_exit{e}.{'txt' if t == 'bcb' else 'jsonl'}")
                write_lines(path, lines[e])
                res['predictions'][str(e)] = path
            results['tasks'][t] = {**res, 'seconds': time.time() - t0, 'model': kind}
        results['models'][kind] = {**info, **exit_costs(model, kind, exits, timing, autocast, batch_size, speed_batch,
                                                        device)}
        print_report(results['models'][kind], {t: results['tasks'][t] for t in kind_tasks}, exits, system)

    path = os.path.join(out_dir, 'results.json')
    write_json(path, results)
    print(f"wrote {path} and predictions in {os.path.join(out_dir, 'predictions')}")
    if plot:
        msg = plot_results(os.path.join(out_dir, 'tradeoff.png'), results)
        print(f"note: {msg}" if msg else f"wrote {os.path.join(out_dir, 'tradeoff.png')}")
