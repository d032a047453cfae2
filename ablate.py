"""
Self-distilled against single-exit fine-tuning (paper 6.3, Fig. 5), in one command:

    python ablate.py config/finetune_tiny.py --init_from=out/pretrain --seeds=0,1,2 --exits=1,2,4,6,8 --max_steps=200

From one pre-trained checkpoint, for each seed: finetune.py once with the multi-exit loss, and once
per exit K with --single_exit K (the first K layers, one head), with the same pairs, steps and lr
(every setting that is not ablate.py's own, config files included, goes to finetune.py); then
evaluate.py --task csn on each model's exits. The table: per exit, MRR and Recall@1 on the held-out
CodeSearchNet test (the average over languages, and per language), multi-exit and single-exit as
the mean +- std over seeds, and their difference with a paired bootstrap 95% interval over queries.
Writes out_dir/ablation.json and ablation.md.

A script and not a mode of finetune.py: it runs finetune.py and evaluate.py as they are, each in a
process of its own, so that a stop or a crash loses one run at most. Each run lives in
out_dir/{multi|single<K>}-seed<S>/ (its eval in eval/); a rerun skips the runs whose final
checkpoint and results.json are there, and resumes a fine-tuning stopped midway.
"""
import json
import os
import subprocess
import sys
import time

import numpy as np

from data import atomic_open, write_json
from metrics import mrr
from stage import fail, format_table, make_out_dir
from training import UserError, list_checkpoints, load_checkpoint, load_model

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_ints(spec, what, example):
    """'0,1,2' -> [0, 1, 2] (order kept, repeats dropped); anything else is a UserError."""
    try:
        out = list(dict.fromkeys(int(x) for x in str(spec).strip('[]() ').replace(' ', '').split(',') if x))
    except ValueError:
        out = []
    if not out:
        raise UserError(f"--{what}={spec!r}: expected a comma list of integers such as {example}")
    return out


def split_argv(argv, own):
    """(ablate.py's own arguments, the rest for finetune.py): own are the --key=value / --key value
    of a key in `own`; config files and every other setting go to finetune.py."""
    mine, theirs, argv = [], [], list(argv)
    while argv:
        arg = argv.pop(0)
        key = arg[2:].partition('=')[0] if arg.startswith('--') else None
        if key and '=' not in arg and argv and not argv[0].startswith('--'):
            arg = f"{arg}={argv.pop(0)}"
        (mine if key in own or arg in ('--help', '-h') else theirs).append(arg)
    return mine, theirs


def run_plan(seeds, exits):
    """[(name, single_exit, seed)]: per seed the multi-exit run (single_exit 0), then one per exit."""
    return [(f"multi-seed{s}", 0, s) for s in seeds] + [(f"single{k}-seed{s}", k, s) for s in seeds for k in exits]


def trained_step(run_dir):
    """The step of run_dir's newest checkpoint when it is the run's last (step == max_steps), else None."""
    found = list_checkpoints(run_dir)
    if not found:
        return None
    ckpt = load_checkpoint(found[-1])
    return ckpt['step'] if ckpt['step'] == ckpt.get('config', {}).get('max_steps') else None


def evaluated(eval_dir, step, exits):
    """The results.json of eval_dir when it is of the checkpoint at `step` and holds csn at these exits, else None."""
    path = os.path.join(eval_dir, 'results.json')
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        res = json.load(f)
    done = res.get('models', {}).get('retrieval', {}).get('step') == step and \
        {str(e) for e in exits} <= set(res.get('tasks', {}).get('csn', {}).get('exits', {}))
    return res if done else None


def run_logged(cmd, log_path):
    """Run cmd with its output in log_path; a failure stops the ablation with the log's last line."""
    with open(log_path, 'w') as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        with open(log_path) as f:
            last = ([l.strip() for l in f if l.strip()] or ['(no output)'])[-1]
        fail(f"{' '.join(cmd[1:3])} ... exited with {rc}: {last} (log: {log_path})")


def train_and_evaluate(run_dir, k, seed, exits, init_from, finetune_args, eval_args, eval_max_len=0):
    """One run: finetune.py into run_dir (resumed when stopped midway; single_exit k, 0 = multi-exit),
    then evaluate.py at `exits` into run_dir/eval; each step skipped when done before.
    Returns (results.json, whether anything ran)."""
    eval_dir = os.path.join(run_dir, 'eval')
    step = trained_step(run_dir)
    res = evaluated(eval_dir, step, exits) if step is not None else None
    if res is not None:
        return res, False
    if step is None:
        resume = bool(list_checkpoints(run_dir))
        make_out_dir(run_dir)
        run_logged([sys.executable, os.path.join(HERE, 'finetune.py'), *finetune_args, f'--out_dir={run_dir}',
                    f'--init_from={"resume" if resume else init_from}', f'--seed={seed}', f'--single_exit={k}'],
                   os.path.join(run_dir, 'finetune.log'))
        step = trained_step(run_dir)
        if step is None:
            fail(f"finetune.py finished without its final checkpoint in {run_dir}")
    max_len = eval_max_len or load_checkpoint(list_checkpoints(run_dir)[-1])['config']['max_len']
    run_logged([sys.executable, os.path.join(HERE, 'evaluate.py'), '--task=csn', f'--init_from={run_dir}',
                f'--out_dir={eval_dir}', f'--exit={",".join(map(str, exits))}', f'--max_len={max_len}', *eval_args],
               os.path.join(run_dir, 'eval.log'))
    res = evaluated(eval_dir, step, exits)
    if res is None:
        fail(f"evaluate.py wrote no results.json of step {step} at exits {exits} in {eval_dir}")
    return res, True


def per_query(res):
    """{exit: {language: (reciprocal ranks (n,), top-1 hits (n,))}} of one evaluate.py csn result,
    from its prediction files (pred_top = candidates, so every target is in its query's list): the
    lines follow the languages of results.json in order, `queries` lines each."""
    csn, out = res['tasks']['csn'], {}
    for e, path in csn['predictions'].items():
        with open(path) as f:
            ranks = [p['answers'].index(p['url']) + 1 for p in map(json.loads, f)]
        out[int(e)], start = {}, 0
        for lang, info in csn['languages'].items():
            r = np.asarray(ranks[start:start + info['queries']], dtype=np.float64)
            start += info['queries']
            key = f'mrr/{lang}' if f'mrr/{lang}' in csn['exits'][e] else 'mrr'
            if not np.isclose(mrr(r), csn['exits'][e][key]):
                raise UserError(f"{path}: the ranks of its predictions do not give results.json's {key}")
            out[int(e)][lang] = (1 / r, (r == 1).astype(np.float64))
    return out


def mean_std(values):
    """(mean, sample std) over seeds; std is None for a single seed."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def paired_bootstrap(a, b, n_boot=10_000, seed=0, alpha=0.05):
    """a, b: {language: (n_seeds, n_queries)} per-query scores of two models on the same queries.
    The difference (a - b) of their means, over seeds then queries, averaged over languages (as
    evaluate.py averages), and its paired bootstrap (1 - alpha) percentile interval: the queries of
    each language drawn with replacement, the same draw for a, b and every seed.
    Returns (difference, low, high)."""
    rng = np.random.default_rng(seed)
    d = {g: (np.asarray(a[g], dtype=np.float64) - np.asarray(b[g], dtype=np.float64)).mean(0) for g in a}  # (n,)
    boots = np.zeros(n_boot)
    for v in d.values():
        for s in range(0, n_boot, 1000):  # chunks: (1000, n) indices at a time
            idx = rng.integers(0, len(v), size=(min(1000, n_boot - s), len(v)))
            boots[s:s + len(idx)] += v[idx].mean(1)
    boots /= len(d)
    lo, hi = np.percentile(boots, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(np.mean([v.mean() for v in d.values()])), float(lo), float(hi)


def compare(multi, single, n_boot=10_000):
    """multi, single: {seed: {language: (n,) scores}} of one exit and metric. Returns
    {'avg' | language: {multi, multi_std, single, single_std, diff, ci}} (std over seeds; the
    average row averages the languages per seed first)."""
    seeds, langs = sorted(multi), list(next(iter(multi.values())))
    out = {}
    for g in ['avg'] + (langs if len(langs) > 1 else []):
        groups = langs if g == 'avg' else [g]
        row = {}
        for name, runs in (('multi', multi), ('single', single)):
            row[name], row[f'{name}_std'] = mean_std([np.mean([runs[s][l].mean() for l in groups]) for s in seeds])
        diff, lo, hi = paired_bootstrap({l: [multi[s][l] for s in seeds] for l in groups},
                                        {l: [single[s][l] for s in seeds] for l in groups}, n_boot)
        row.update(diff=diff, ci=[lo, hi])
        out[g] = row
    return out


def pm(mean, std):
    return f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if std is not None else '')


def tables(ablation):
    """(main table: the average over languages per exit, per-language table or '') as text."""
    header = ['exit', 'multi MRR', 'single MRR', 'Δ MRR [95% CI]', 'multi R@1', 'single R@1', 'Δ R@1 [95% CI]']

    def cells(rows):
        return sum(([pm(r['multi'], r['multi_std']), pm(r['single'], r['single_std']),
                     f"{100 * r['diff']:+.2f} [{100 * r['ci'][0]:+.2f}, {100 * r['ci'][1]:+.2f}]"] for r in rows), [])
    main = [[e] + cells([m['mrr']['avg'], m['recall@1']['avg']]) for e, m in ablation['exits'].items()]
    langs = [g for g in next(iter(ablation['exits'].values()))['mrr'] if g != 'avg']
    per_lang = [[f"{e} {g}"] + cells([m['mrr'][g], m['recall@1'][g]]) for e, m in ablation['exits'].items()
                for g in langs]
    return format_table(header, main), (format_table(['exit language'] + header[1:], per_lang) if langs else '')


if __name__ == '__main__':
    _before = set(globals())
    # -------------------------------------------------------------------------
    init_from = 'out/pretrain'       # the pre-trained checkpoint every run starts from (also passed to finetune.py)
    seeds = '0,1,2'                  # fine-tuning seeds: each seed runs the multi-exit model and every single-exit one
    exits = ''                       # the exits compared, a comma list; '' = every exit of the pre-trained model
    out_dir = 'out/ablation'         # one directory per run, ablation.json and ablation.md
    csn_dir = 'data/codesearchnet'   # the held-out CodeSearchNet-style test (evaluate.py --csn_dir)
    eval_max_len = 0                 # tokens per input at evaluation; 0 = the fine-tuning max_len
    candidates = 1000                # csn batch size: 1 target among 999 distractors (evaluate.py)
    eval_batch_size = 64
    eval_limit = 0                   # > 0: only the first N test rows of each language (a smoke run, not a result)
    n_boot = 10_000                  # bootstrap resamples of the queries
    # -------------------------------------------------------------------------
    _own = set(globals()) - _before - {'_before'}
    _argv, _rest = split_argv(sys.argv[1:], _own)
    sys.argv = [sys.argv[0]] + _argv  # the configurator reads ablate.py's own settings; the rest is finetune.py's
    config = {}  # every setting by name, filled in by the configurator
    exec(open(os.path.join(HERE, 'configurator.py')).read())  # -> config
    passthrough = _rest
    # -------------------------------------------------------------------------

    # check everything before the first run: seeds, the checkpoint and its exits, the test data
    try:
        seed_list = parse_ints(seeds, 'seeds', '0,1,2')
        if init_from == 'resume':
            raise UserError("--init_from must be a pre-trained checkpoint (each run resumes by itself)")
        pre, _, where = load_model(init_from, 'python pretrain.py config/mose_tiny.py')
        valid = list(pre.config.exit_layers)
        exit_list = parse_ints(exits, 'exits', ','.join(map(str, valid))) if exits else valid
        for e in exit_list:
            if e not in valid:
                raise UserError(f"exit {e} is not an exit of {where}; its exits: {valid}")
        if not os.path.exists(csn_dir):
            raise UserError(f"{csn_dir}: no CodeSearchNet-style test data (run `python prepare.py` or pass --csn_dir)")
    except (OSError, ValueError, UserError) as e:
        fail(e)
    del pre
    make_out_dir(out_dir)
    # the runs of out_dir are of one set of settings: a rerun with others would mix them in one table
    settings = {'init_from': init_from, 'finetune': passthrough, 'csn_dir': csn_dir, 'eval_max_len': eval_max_len,
                'candidates': candidates, 'eval_limit': eval_limit}
    settings_path = os.path.join(out_dir, 'settings.json')
    if os.path.isfile(settings_path):
        with open(settings_path) as f:
            theirs = json.load(f)
        if theirs != settings:
            differ = ', '.join(k for k in settings if theirs.get(k) != settings[k])
            fail(f"{out_dir} holds runs of other settings ({differ} differ): pass another --out_dir")
    write_json(settings_path, settings)
    plan = run_plan(seed_list, exit_list)
    print(f"{len(plan)} runs from {where}: multi-exit and single-exit {exit_list}, seeds {seed_list}; "
          f"finetune.py {' '.join(passthrough)}", flush=True)

    # run: fine-tune (or resume, or skip), then evaluate (or skip) each model; ETA from the runs done here
    eval_args = [f'--csn_dir={csn_dir}', f'--candidates={candidates}', f'--pred_top={candidates}',
                 f'--batch_size={eval_batch_size}', f'--limit={eval_limit}', '--bm25=false', '--nbow=false',
                 '--plot=false']  # pred_top = candidates: every query's whole ranking, for Recall@1 and the bootstrap
    results, t_spent, n_ran = {}, 0.0, 0
    for i, (name, k, seed) in enumerate(plan):
        t0 = time.time()
        res, ran = train_and_evaluate(os.path.join(out_dir, name), k, seed, [k] if k else exit_list, init_from,
                                      passthrough, eval_args, eval_max_len)
        if ran:
            t_spent, n_ran = t_spent + time.time() - t0, n_ran + 1
        status = f"done in {time.time() - t0:.0f}s" if ran else "finished before: skipped"
        try:
            results[name] = per_query(res)
        except (OSError, ValueError, KeyError, UserError) as e:
            fail(f"{name}: {e}")
        eta = f" | eta {t_spent / n_ran * (len(plan) - i - 1) / 60:.1f}m" if n_ran else ''
        print(f"[{i + 1}/{len(plan)}] {name}: {status}{eta}", flush=True)

    # the comparison: per exit and metric, multi-exit against single-exit over seeds and queries
    ablation = {'init_from': where, 'seeds': seed_list, 'finetune_args': passthrough, 'config': config,
                'n_boot': n_boot, 'exits': {}}
    for e in exit_list:
        ablation['exits'][str(e)] = {
            metric: compare({s: {g: v[j] for g, v in results[f"multi-seed{s}"][e].items()} for s in seed_list},
                            {s: {g: v[j] for g, v in results[f"single{e}-seed{s}"][e].items()} for s in seed_list},
                            n_boot)
            for j, metric in enumerate(('mrr', 'recall@1'))}
    main, per_lang = tables(ablation)
    head = (f"csn test, metrics in %: multi-exit (self-distilled) against single-exit fine-tuning per exit, "
            f"mean ± std over seeds {seed_list}; Δ = multi - single with a paired bootstrap 95% interval "
            f"over queries ({n_boot:,} resamples)")
    text = f"{head}\n\n{main}\n" + (f"\nper language\n\n{per_lang}\n" if per_lang else '')
    print('\n' + text)
    write_json(os.path.join(out_dir, 'ablation.json'), ablation)
    with atomic_open(os.path.join(out_dir, 'ablation.md'), 'w', encoding='utf-8') as f:
        f.write(f"{head}\n\n```\n{main}\n```\n" + (f"\nper language\n\n```\n{per_lang}\n```\n" if per_lang else ''))
    print(f"wrote {os.path.join(out_dir, 'ablation.json')} and ablation.md")
