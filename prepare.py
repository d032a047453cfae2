"""
Prepare the data of every stage: ICC pre-training shards, fine-tuning pairs, clone-detection pairs.

    python prepare.py                                   # everything, from this Python's sources
    python prepare.py --max_len=256 --bpe_vocab=8192    # the same with an 8k code BPE trained on them
    python prepare.py --input=debian --bpe_vocab=8192   # Debian source packages: 7 languages, ~1,000 repositories
    python prepare.py --task=icc --max_len=512          # ICC shards only (data/icc/)
    python prepare.py --task=nsp --max_len=512          # next-sentence pairs instead (data/nsp/; paper 6.3's baseline)
    python prepare.py --task=icc --input=stack.jsonl    # a Stack-v2 style dump: {repo_name, content} a line
    python prepare.py --task=icc --input=repos/         # a directory whose subdirectories are repositories
    python prepare.py --task=retrieval --input=csn/python/final/jsonl   # CodeSearchNet -> text-code pairs
    python prepare.py --task=synthconl --input=SynthCoNL/data           # SynthCoNL parquet/jsonl -> pairs
    python prepare.py --task=dedup-bench                # near-dedup speed on 100k SynthCoNL-format rows
    python prepare.py --decontaminate=csn/go/final/jsonl/test,poj104/test.jsonl   # evaluation files no training
                                                        # output may contain (default: ../shared/data)

Writes under out_dir (formats in data.py): icc/ (paper 2.1), retrieval/{train,valid,test}.jsonl, the same functions
in codesearchnet/{language}/ and bigclonebench/ layouts, synthconl/; splits by repository per language (splits.json).
Held-out functions that copy a training one, and training functions and files that contain an evaluation function,
are left out (decontaminate.py); the manifests count them.
"""
import functools
import hashlib
import json
import multiprocessing as mp
import os
import re
import time

import numpy as np
from tqdm import tqdm

import functions
import sources
from debian import LANGUAGES
from data import built_with
from decontaminate import (DEFAULT_EVAL_DIR, MIN_CHARS, drop_heldout_near_duplicates, eval_sources, find_contamination,
                           load_eval_sets, report, without_files)
from dedup import function_groups, minhash_dedup, normalized
from icc import run_icc
from sources import assign_splits, cap_corpus, corpus_fingerprint, file_tasks, source_text
from stage import fail, make_dir, print0

SPLITS = ('train', 'valid', 'test')  # of the functions' repositories
CSN_LANGUAGES = ('python', 'java', 'javascript', 'go', 'ruby', 'php')  # CodeSearchNet's, written in its layout


# ----------------------------------------------------------------------------- functions (fine-tuning data)

def _functions_of_file(task):
    """Worker: (repo, relpath, entry, language) -> function dicts with repo, path, the file's git sha
    and language."""
    repo, rel, entry, lang = task
    text, _ = source_text(entry)
    if text is None:
        return []
    sha = hashlib.sha1(b'blob %d\0' % len(text.encode()) + text.encode()).hexdigest()
    out = functions.functions(text, lang)
    for f in out:
        f.update(repo=repo, path=rel, sha=sha, language=lang)
    return out


def collect_functions(repos, roots, languages, num_proc=1):
    """All functions of the corpus's files in `languages` (tree-sitter, functions.py), in num_proc processes."""
    tasks = [(repo, rel, e, functions.language_of(rel)) for repo, rel, e in file_tasks(repos, roots)]
    tasks = [t for t in tasks if t[3] in languages]
    t0 = time.time()
    with mp.Pool(num_proc) as pool:
        funcs = [f for fs in tqdm(pool.imap(_functions_of_file, tasks, chunksize=32), total=len(tasks),
                                  desc='functions', unit='file', mininterval=1) for f in fs]
    dt = time.time() - t0
    per = {}
    for f in funcs:
        per[f['language']] = per.get(f['language'], 0) + 1
    print0(f"functions: {len(funcs):,} from {len(tasks):,} files in {dt:.1f}s ({len(funcs) / max(dt, 1e-9):,.0f}/s; "
           + ', '.join(f"{k} {v:,}" for k, v in sorted(per.items())) + ')')
    return funcs


def repository_splits(repos, roots, language_of, fn_languages, fingerprint, out_dir, seed, heldout_fraction,
                      num_proc=1):
    """The one split of the corpus, by repository: {repository: 'train' | 'valid' | 'test'} by number
    of functions (heldout_fraction each for valid and test), made per language (the corpus's, or
    the one most of a repository's functions are in) so that every language has held-out
    repositories. Every stage keeps to it: a test repository is never pre-trained on (it is an ICC
    validation one) and the tokenizer is trained on the train split only. Returns (split, the
    functions or None, the record to write to out_dir/splits.json once every stage has succeeded,
    or None); reused from that file for this corpus and these settings, so that a rerun does not
    parse the corpus again."""
    settings = {'corpus_sha256': fingerprint, 'seed': seed, 'heldout_fraction': heldout_fraction,
                'by': 'language', 'function_languages': sorted(fn_languages)}
    try:
        with open(os.path.join(out_dir, 'splits.json')) as f:
            saved = json.load(f)
        if saved.get('settings') == settings:
            return saved['splits'], None, None
    except (OSError, ValueError):
        pass
    funcs = collect_functions(repos, roots, fn_languages, num_proc)
    sizes, langs = {}, {}
    for f in funcs:
        sizes[f['repo']] = sizes.get(f['repo'], 0) + 1
        langs.setdefault(f['repo'], {}).setdefault(f['language'], 0)
        langs[f['repo']][f['language']] += 1
    by_lang = {}
    for r in sizes:
        lang = language_of.get(r) or max(sorted(langs[r]), key=langs[r].get)
        lang = 'c' if lang == 'cpp' else lang  # C/C++ is one language of the corpus (debian.LANGUAGES)
        by_lang.setdefault(lang, {})[r] = sizes[r]
    split_of = {}
    for lang in sorted(by_lang):
        split_of.update(assign_splits(by_lang[lang], {'train': 1 - 2 * heldout_fraction, 'valid': heldout_fraction,
                                                      'test': heldout_fraction}, seed))
    for lang in sorted(by_lang):
        n = {s: sum(1 for r in by_lang[lang] if split_of[r] == s) for s in SPLITS}
        print0(f"split {lang}: {n['train']} train, {n['valid']} valid, {n['test']} test repositories")
    return split_of, funcs, {'settings': settings, 'splits': split_of}


# ----------------------------------------------------------------------------- fine-tuning and clone pairs


def clean_functions(repos, roots, fn_languages, split_of, funcs, evals, dedup_threshold, num_proc):
    """The functions of the corpus (collected here when None), their groups (function_groups) and
    'where': each function's split, or None where it is left out (decontaminate.py): a held-out
    copy or near-duplicate of a training function, or a training function that contains a function
    of an evaluation set. Also the files pre-training leaves out ('icc_files') and the 'record' of
    both for the manifests. Every stage that is rebuilt uses this one result."""
    funcs = collect_functions(repos, roots, fn_languages, num_proc) if funcs is None else funcs
    groups = function_groups(funcs, dedup_threshold, num_proc)
    where = [split_of[f['repo']] for f in funcs]
    heldout = drop_heldout_near_duplicates(funcs, groups, where)
    print0(f"heldout: dropped {heldout['valid']:,} valid and {heldout['test']:,} test functions, copies or "
           f"near-duplicates (Jaccard >= {dedup_threshold}) of a training function, and "
           f"{heldout['valid_of_test']:,} valid functions of a test function")
    found = find_contamination(evals, funcs, groups, where, split_of, repos, roots, dedup_threshold, num_proc)
    for line in report(found['record']):
        print0(line)
    groups['rep'] = [next((k for k in members if where[k]), None) for members in groups['reps']]  # first one kept
    return {'funcs': funcs, 'groups': groups, 'where': where, 'icc_files': found['icc_files'],
            'record': {'heldout_near_duplicates': heldout, 'decontamination': found['record']}}


def local_url(f):
    return f"local://{f['repo']}/{f['path']}#L{f['line']}-L{f['end_line']}"


def text_code_pairs(funcs, groups, where):
    """CodeSearchNet's way: per split, (text-code pairs, the same functions as CodeSearchNet rows).
    Documented functions; query = the first paragraph of the documentation, code = the function
    without it; CodeSearchNet's filters (functions.csn_reason); one function per near-duplicate
    component; where[k]: the split of function k, None if it is left out."""
    from data import pair_row
    pairs, csn, seen = {s: [] for s in SPLITS}, {s: [] for s in SPLITS}, set()
    for k, f in enumerate(funcs):
        comp, s = groups['comp'][groups['gid'][k]], where[k]
        if s is None or functions.csn_reason(f, f['language']) is not None or comp in seen:
            continue
        seen.add(comp)
        pairs[s].append(pair_row('text-code', f['query'], None, f['code'], f['language'], f['repo'], local_url(f)))
        csn[s].append(functions.csn_row(f, f['repo'], s, f['sha'], local_url(f)))
    return pairs, csn


def code_code_pairs(funcs, groups, where, rng):
    """Per split, pairs of real functions that are near-duplicates of each other but not the same
    text once documentation is removed (vendored copies in other versions, "Copied from" code, ports,
    overrides in sibling classes), like SynthCoNL's "same task, different code" pairs. Both have the
    same name, so that a pair is one function in two places rather than look-alike siblings
    (pad_start / pad_end); each function is in at most one pair (a greedy matching, most similar
    first), so a cluster of look-alikes does not fill a batch with false negatives. Returns
    (pairs, the number dropped because their functions lie in two splits)."""
    from data import pair_row
    rep, pairs, dropped, used = groups['rep'], {s: [] for s in SPLITS}, 0, set()
    for a, b, jac in sorted(groups['near'], key=lambda x: -x[2]):
        if rep[a] is None or rep[b] is None:
            continue
        (fa, fb), split = (funcs[rep[a]], funcs[rep[b]]), where[rep[a]]
        if split != where[rep[b]]:
            dropped += 1
            continue
        if a in used or b in used or fa['name'] != fb['name']:
            continue
        ca, cb = fa['code'], fb['code']
        if normalized(ca) == normalized(cb) or functions.code_lines(ca) < 3 or functions.code_lines(cb) < 3:
            continue
        if rng.random() < 0.5:
            fa, fb, ca, cb = fb, fa, cb, ca
        used.update((a, b))
        pairs[split].append(pair_row('code-code', ca, fa['language'], cb, fb['language'], fa['repo'],
                                     f"{local_url(fa)}|{local_url(fb)}"))
    return pairs, dropped


def write_retrieval(out_dir, text_code, code_code, csn, split_of, settings, record):
    """retrieval/{split}.jsonl and, for each CodeSearchNet language with pairs, its layout
    (codesearchnet/{language}/final/jsonl/{split}/{language}_{split}_0.jsonl.gz; C/C++ pairs are in
    the pairs files only), then retrieval/manifest.json (last)."""
    from data import atomic_open, write_json, write_pairs
    rdir, counts = os.path.join(out_dir, 'retrieval'), {}
    make_dir(rdir)
    langs = [lang for lang in CSN_LANGUAGES if any(r['language'] == lang for s in SPLITS for r in csn[s])]
    for lang, s in [(lang, s) for lang in CSN_LANGUAGES if lang not in langs for s in SPLITS]:
        stale = os.path.join(out_dir, 'codesearchnet', lang, 'final', 'jsonl', s, f'{lang}_{s}_0.jsonl.gz')
        if os.path.exists(stale):  # from an earlier build of another corpus
            os.remove(stale)
    for s in SPLITS:
        write_pairs(os.path.join(rdir, f'{s}.jsonl'), text_code[s] + code_code[s])
        for lang in langs:
            cdir = os.path.join(out_dir, 'codesearchnet', lang, 'final', 'jsonl', s)
            make_dir(cdir)
            with atomic_open(os.path.join(cdir, f'{lang}_{s}_0.jsonl.gz'), 'wt', encoding='utf-8') as fh:
                for r in csn[s]:
                    if r['language'] == lang:
                        fh.write(json.dumps(r, ensure_ascii=False) + '\n')
        per = {}
        for p in text_code[s]:
            per[p['code_lang']] = per.get(p['code_lang'], 0) + 1
        counts[s] = {'text-code': len(text_code[s]), 'code-code': len(code_code[s]), 'text-code by language': per}
        print0(f"retrieval {s}: {len(text_code[s]):,} text-code + {len(code_code[s]):,} code-code pairs, "
               f"{sum(1 for r in split_of.values() if r == s)} repositories; text-code "
               + ', '.join(f"{k} {v:,}" for k, v in sorted(per.items())))
    write_json(os.path.join(rdir, 'manifest.json'), {'format': 'mose-pairs', 'settings': settings, 'counts': counts,
                                                     **record})
    return counts


def clone_pairs(funcs, groups, where, rng):
    """Per split, BigCloneBench-style (function, function, label) rows, balanced 1:1: positives are
    near-duplicate pairs (each function in at most 3) plus identical copies in different files (at
    most 3 pairs per group); negatives random pairs of the same split and language whose estimated
    Jaccard is below 0.3, from two near-duplicate components."""
    reps, ok, sig, comp, rep = groups['reps'], groups['ok'], groups['sig'], groups['comp'], groups['rep']
    split = lambda k: where[k]
    pos, n_pos = {s: [] for s in SPLITS}, {}
    for a, b, jac in sorted(groups['near'], key=lambda x: -x[2]):
        fa, fb = rep[a], rep[b]
        if fa is not None and fb is not None and split(fa) == split(fb) and n_pos.get(a, 0) < 3 and n_pos.get(b, 0) < 3:
            pos[split(fa)].append((fa, fb))
            n_pos[a], n_pos[b] = n_pos.get(a, 0) + 1, n_pos.get(b, 0) + 1
    for g in ok:  # identical copies in two files (type-1 clones)
        m = [k for k in reps[g] if where[k]]
        copies = [(x, y) for x, y in zip(m, m[1:]) if (funcs[x]['repo'], funcs[x]['path']) !=
                  (funcs[y]['repo'], funcs[y]['path']) and split(x) == split(y)]
        for x, y in copies[:3]:
            pos[split(x)].append((x, y))
    rows = {}
    for s in SPLITS:
        pool, negs, tries = [g for g in ok if rep[g] is not None and split(rep[g]) == s], set(), 0
        while len(negs) < len(pos[s]) and len(pool) > 1 and tries < 50 * len(pos[s]) + 100:
            tries += 1
            a, b = (int(x) for x in rng.choice(len(pool), 2, replace=False))
            ga, gb = pool[a], pool[b]
            if funcs[rep[ga]]['language'] != funcs[rep[gb]]['language']:
                continue  # a negative in two languages would be trivially told apart
            if (sig[ga] == sig[gb]).mean() < 0.3 and comp[ga] != comp[gb]:
                negs.add((rep[ga], rep[gb]))
        rows[s] = [(x, y, 1) for x, y in pos[s]] + [(x, y, 0) for x, y in sorted(negs)]
        rng.shuffle(rows[s])
    return rows


def write_clone(out_dir, funcs, rows, settings, record):
    """bigclonebench/data.jsonl + {split}.txt (idx1 TAB idx2 TAB label), then manifest.json (last)."""
    from data import atomic_open, write_json
    bdir, idx, counts = os.path.join(out_dir, 'bigclonebench'), {}, {}
    make_dir(bdir)
    lines = {}
    for s in SPLITS:
        lines[s] = []
        for x, y, lab in rows[s]:
            for k in (x, y):
                idx.setdefault(k, str(len(idx)))
            lines[s].append(f"{idx[x]}\t{idx[y]}\t{lab}\n")
        counts[s] = {'positive': sum(r[2] for r in rows[s]), 'negative': sum(1 - r[2] for r in rows[s])}
        print0(f"clone {s}: {counts[s]['positive']:,} positive + {counts[s]['negative']:,} negative pairs")
    with atomic_open(os.path.join(bdir, 'data.jsonl'), 'w', encoding='utf-8') as fh:
        for k, i in idx.items():
            fh.write(json.dumps({'func': funcs[k]['original_string'], 'idx': i}, ensure_ascii=False) + '\n')
    for s in SPLITS:
        with atomic_open(os.path.join(bdir, f'{s}.txt'), 'w', encoding='utf-8') as fh:
            fh.writelines(lines[s])
    write_json(os.path.join(bdir, 'manifest.json'), {'format': 'bigclonebench', 'settings': settings, 'counts': counts,
                                                     **record})
    return counts


def build_finetune(which, source, fingerprint, split_of, fn_languages, clean, clean_settings, out_dir, seed=1337,
                   heldout_fraction=0.1, dedup_threshold=0.7):
    """Retrieval pairs (text-code and code-code, and a CodeSearchNet-format copy) and BigCloneBench-
    format clone pairs from the functions of a corpus in fn_languages; paper 4.1 uses SynthCoNL,
    which is not shipped: these are the same kinds of pairs from real local code. `which`: a subset
    of {'retrieval', 'clone'}; `split_of`: the repository split (a pair across two splits is
    dropped); clean(): the functions with what is left out of them (clean_functions), called only
    when something is rebuilt. Each output directory gets a manifest.json, written last; a rerun
    with the same settings reuses it."""
    settings = {'source': source, 'corpus_sha256': fingerprint, 'seed': seed, 'heldout_fraction': heldout_fraction,
                'dedup_threshold': dedup_threshold, 'function_languages': sorted(fn_languages),
                'extraction': 'tree-sitter 2', 'valid_without_test': True, **clean_settings}
    # a changed setting rebuilds an earlier build's data ('tree-sitter 2': Doxygen's commands end a query)
    dirs = {'retrieval': os.path.join(out_dir, 'retrieval'), 'clone': os.path.join(out_dir, 'bigclonebench')}
    for w in list(which):
        if built_with(dirs[w], settings):
            print0(f"{w}: {dirs[w]} is complete and was built with these settings: reusing it")
            which = [x for x in which if x != w]
        elif os.path.exists(os.path.join(dirs[w], 'manifest.json')):
            os.remove(os.path.join(dirs[w], 'manifest.json'))  # being rebuilt: not complete until the end
    if not which:
        return {}
    rng = np.random.default_rng(seed)
    c = clean()
    funcs, groups, where = c['funcs'], c['groups'], c['where']
    if not funcs:
        raise ValueError(f"no functions ({', '.join(sorted(fn_languages))}) found in the corpus: nothing to build "
                         f"fine-tuning pairs from")
    counts = {}
    if 'retrieval' in which:
        text_code, csn = text_code_pairs(funcs, groups, where)
        code_code, dropped = code_code_pairs(funcs, groups, where, rng)
        counts.update({f'retrieval/{s}': n for s, n in
                       write_retrieval(out_dir, text_code, code_code, csn, split_of, settings, c['record']).items()})
        print0(f"retrieval: {dropped} near-duplicate pairs across two splits dropped")
    if 'clone' in which:
        rows = clone_pairs(funcs, groups, where, rng)
        counts.update({f'bigclonebench/{s}': n for s, n in
                       write_clone(out_dir, funcs, rows, settings, c['record']).items()})
    return counts


# ----------------------------------------------------------------------------- tokenizer

def train_corpus_bpe(repos, roots, train_repos, fingerprint, out_dir, bpe_vocab, bpe_bytes, seed, clean=None,
                     clean_settings=None):
    """Train (or reuse) a byte-level BPE of bpe_vocab entries on the files of `train_repos`, at most
    bpe_bytes of them in seeded order, into out_dir/tokenizer/; returns that directory. The files
    that contain an evaluation function (clean()['icc_files'], decontaminate.py) are left out, as
    pre-training leaves them out."""
    from data import write_json
    from tokenizer import train_bpe
    tdir = os.path.join(out_dir, 'tokenizer')
    settings = {'corpus_sha256': fingerprint, 'vocab_size': bpe_vocab, 'bytes': bpe_bytes, 'seed': seed,
                'repositories': len(train_repos), **(clean_settings or {})}
    if built_with(tdir, settings):
        print0(f"tokenizer: {tdir} was trained with these settings: reusing it")
        return tdir
    train = {r: repos[r] for r in train_repos}
    drop = clean()['icc_files'] if clean is not None else set()
    kept = without_files(train, roots, drop)
    files = [f for r in train_repos for f in kept[r]]
    order = np.random.default_rng(seed).permutation(len(files))
    stats = {'files': 0, 'bytes': 0, 'left_out': sum(map(len, train.values())) - len(files)}

    def texts():
        for i in order:
            if stats['bytes'] >= bpe_bytes:
                return
            text = source_text(files[i])[0]
            if text:
                stats['files'] += 1
                stats['bytes'] += len(text.encode('utf-8'))
                yield text
    t0 = time.time()
    if os.path.exists(os.path.join(tdir, 'manifest.json')):
        os.remove(os.path.join(tdir, 'manifest.json'))  # being retrained: not complete until the end
    make_dir(tdir)
    tok = train_bpe(texts(), bpe_vocab, tdir)
    write_json(os.path.join(tdir, 'manifest.json'), {'format': 'bpe', 'settings': settings, 'stats': stats,
                                                     'repositories': sorted(train_repos)})
    print0(f"tokenizer: byte-level BPE of {bpe_vocab:,} entries (n_vocab {tok.n_vocab:,}) trained on {stats['files']:,} "
           f"files, {stats['bytes'] / 1e6:.1f} MB of {len(train_repos)} training repositories in {time.time() - t0:.1f}s "
           f"({stats['left_out']:,} files that contain an evaluation function left out)")
    return tdir


# ----------------------------------------------------------------------------- SynthCoNL, CSN, dedup bench

def run_synthconl(path, out_dir, dedup_threshold=0.7, num_proc=1, skip_bad_lines=False):
    """SynthCoNL rows, near-deduplicated on both code columns (paper 5), as pairs in synthconl/train.jsonl."""
    from data import load_synthconl, synthconl_to_pairs, write_pairs
    rows = load_synthconl(path, skip_bad_lines)
    print0(f"synthconl: {len(rows):,} rows from {path}")
    kept, st = minhash_dedup([[r['func1_CSN'] or '' for r in rows], [r['func2'] or '' for r in rows]],
                             dedup_threshold, num_proc)
    print0(f"synthconl: near-dedup removed {st['removed']:,} of {len(rows):,} rows ({st['removed'] / len(rows):.1%}), "
           f"{st['rows_per_s']:,.0f} rows/s")
    pairs = synthconl_to_pairs([rows[i] for i in kept])
    make_dir(os.path.join(out_dir, 'synthconl'))
    out = os.path.join(out_dir, 'synthconl', 'train.jsonl')
    write_pairs(out, pairs)
    print0(f"synthconl: wrote {len(pairs):,} pairs to {out}")


def run_codesearchnet(path, out_dir, skip_bad_lines=False):
    """CodeSearchNet files as text-code pairs in retrieval/codesearchnet.jsonl."""
    from data import load_codesearchnet, pair_row, write_pairs
    rows = load_codesearchnet(path, skip_bad=skip_bad_lines)
    pairs = [pair_row('text-code', r['query'], None, r['code'], r['language'], r['repo'], r['id'])
             for r in rows if r['query'].strip() and r['code'].strip()]
    make_dir(os.path.join(out_dir, 'retrieval'))
    out = os.path.join(out_dir, 'retrieval', 'codesearchnet.jsonl')
    write_pairs(out, pairs)
    print0(f"codesearchnet: wrote {len(pairs):,} text-code pairs (docstrings stripped from code) to {out}")


def is_codesearchnet(path):
    if os.path.isdir(path):
        import glob
        files = glob.glob(os.path.join(path, '**', '*.jsonl*'), recursive=True)
        return bool(files) and all(is_codesearchnet(f) for f in files[:1])
    if not path.endswith(('.jsonl', '.jsonl.gz')) or not os.path.isfile(path):
        return False
    from data import iter_jsonl
    for _, r in iter_jsonl(path, skip_bad=True):
        return 'docstring' in r and 'code' in r and 'url' in r
    return False


def lightly_edit(code, rng):
    """A near-copy: one identifier renamed everywhere (what SynthCoNL's duplicates look like, paper 5)."""
    names = sorted(set(re.findall(r'\b[a-z_][a-z0-9_]{2,}\b', code)))
    if not names:
        return code + '\n'
    old = names[int(rng.integers(len(names)))]
    return re.sub(rf'\b{old}\b', old + '_' + str(int(rng.integers(10))), code)


def run_dedup_bench(repos, roots, fn_languages, bench_rows=100_000, dedup_threshold=0.7, seed=1337, num_proc=1):
    """bench_rows SynthCoNL-format rows from real local functions: func1_CSN a function, func2 a
    light edit of it (half the rows) or another real function; real vendored copies add more."""
    rng = np.random.default_rng(seed)
    funcs = [f for f in collect_functions(repos, roots, fn_languages, num_proc)
             if functions.code_lines(f['original_string']) >= 3]
    if not funcs:
        raise ValueError(f"dedup-bench: no functions ({', '.join(sorted(fn_languages))}) in the corpus")
    order = rng.permutation(len(funcs))
    rows = []
    for k in range(bench_rows):
        f = funcs[order[k % len(funcs)]]
        g = funcs[int(rng.integers(len(funcs)))]
        code1 = f['original_string'] if k < len(funcs) else lightly_edit(f['original_string'], rng)
        edited = rng.random() < 0.5
        rows.append({'repository_name': f['repo'], 'func_path_in_repository': f['path'],
                     'language2': f['language'] if edited else g['language'],
                     'func2': lightly_edit(code1, rng) if edited else g['original_string'],
                     'language1_CSN': f['language'], 'func1_CSN': code1, 'func_documentation_string': f['query'],
                     'func_code_url': f"local://{f['repo']}/{f['path']}#L{f['line']}"})
    print0(f"dedup-bench: {len(rows):,} rows from {len(funcs):,} functions; hashing on {num_proc} processes")
    kept, st = minhash_dedup([[r['func1_CSN'] for r in rows], [r['func2'] for r in rows]], dedup_threshold, num_proc)
    print0(f"dedup-bench: removed {st['removed']:,} of {len(rows):,} rows ({st['removed'] / len(rows):.1%}) in "
           f"{st['seconds']:.1f}s: {st['rows_per_s']:,.0f} rows/s (MinHash LSH, 256 permutations, 5-grams, "
           f"threshold {dedup_threshold})")
    return st


# ----------------------------------------------------------------------------- main

if __name__ == '__main__':
    # -----------------------------------------------------------------------------
    # what to build
    task = 'all'  # 'all' (icc + retrieval + clone) | 'icc' | 'nsp' | 'retrieval' | 'clone' | 'synthconl' | 'dedup-bench'
    input = ''  # '' = this Python's sources; 'debian' = Debian source packages; a dir of repositories; a jsonl(.gz)
    # of files; CodeSearchNet / SynthCoNL files
    out_dir = 'data'
    exclude = ''  # a file of package / repository names to leave out, one a line
    # the Debian corpus (--input=debian, debian.py), fetched once into corpus_dir and shared by every out_dir
    corpus_dir = 'data/debian'
    languages = 'python,java,javascript,go,ruby,php,c'  # CodeSearchNet's six and C/C++ ('c')
    repos_per_language = 150  # packages fetched per language
    bytes_per_language = 0  # cap on the unpacked source bytes per language (0 = none)
    max_package_bytes = 1_000_000  # packages with a larger upstream tarball are not chosen
    fetch_jobs = 8  # parallel downloads
    # tokenisation and ICC sequences (paper 2.1)
    tokenizer = 'cl100k_base'  # or a directory with StarCoder-2's vocab.json + merges.txt
    bpe_vocab = 0  # > 0: train a byte-level BPE of this many entries on the training repositories (out_dir/tokenizer/)
    # and build everything with it instead of `tokenizer`
    bpe_bytes = 64_000_000  # cap on the source bytes the BPE is trained on (files in seeded order)
    max_len = 2048  # tokens per sequence, <sep> and <cls> included
    snippet_len = 0  # longest snippet in tokens; longer files are split at line boundaries. 0 = (max_len - 3) // 2,
    # so that a second snippet always fits and sequences mix two repositories (icc.snippet_budget)
    val_fraction = 0.05  # ICC validation share (of bytes), split by repository
    shard_tokens = 64 * 2 ** 20  # tokens per shard file
    max_bytes = 0  # cap on the corpus bytes read (0 = all); repositories are dropped whole, in seeded order
    icc_file_fraction = 1.0  # share of each repository's files made into ICC sequences (seeded; < 1 when the
    # pre-training run reads a small part of the corpus: demo.sh)
    # fine-tuning and clone data
    heldout_fraction = 0.1  # share of functions (by repository) for valid, and again for test
    dedup_threshold = 0.7  # Jaccard threshold of near-duplicates (paper 5)
    decontaminate = DEFAULT_EVAL_DIR  # evaluation sets that no training function or pre-training file may contain,
    # besides the held-out test split (decontaminate.py): comma-separated jsonl(.gz) files with a code field, text
    # files of one function a line, or directories of them (CodeSearchNet, CodeXGLUE, POJ-104); '' = test split
    # only; the default is read beside the repository
    bench_rows = 100_000  # rows of the dedup benchmark
    # system
    seed = 1337
    num_proc = os.cpu_count() or 1
    skip_bad_lines = False  # malformed jsonl lines: False = stop with file:line, True = skip and count
    # -------------------------------------------------------------------------
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())  # -> config
    # -------------------------------------------------------------------------
    TASKS = ('all', 'icc', 'nsp', 'retrieval', 'clone', 'synthconl', 'dedup-bench')
    t_start = time.time()
    try:
        if task not in TASKS:
            raise ValueError(f"--task={task!r}: expected one of {', '.join(TASKS)}")
        if not 0 <= val_fraction < 1 or not 0 <= heldout_fraction < 0.5:
            raise ValueError("val_fraction must be in [0, 1) and heldout_fraction in [0, 0.5)")
        if not 0 < icc_file_fraction <= 1:
            raise ValueError(f"--icc_file_fraction={icc_file_fraction}: expected a share of the files in (0, 1]")
        if not languages or not set(languages.split(',')) <= set(LANGUAGES):
            raise ValueError(f"--languages={languages!r}: expected a comma-separated list of {', '.join(LANGUAGES)}")
        make_dir(out_dir)
        if task == 'synthconl':
            if not input:
                raise ValueError("--task=synthconl needs --input=<SynthCoNL .parquet/.jsonl file or directory>")
            run_synthconl(input, out_dir, dedup_threshold, num_proc, skip_bad_lines)
        elif task == 'retrieval' and input and is_codesearchnet(input):
            run_codesearchnet(input, out_dir, skip_bad_lines)
        else:
            # the evaluation sets that no stage may use (decontaminate.py), read first: a bad file stops the run
            # before any work
            srcs = eval_sources(decontaminate) if task != 'dedup-bench' else []
            evals = load_eval_sets(srcs, skip_bad_lines)
            # the corpus and its one split by repository
            repos, source, language_of, roots = sources.load_corpus(
                input, data_dir=corpus_dir, exclude=exclude, skip_bad=skip_bad_lines,
                repos_per_language=repos_per_language, bytes_per_language=bytes_per_language,
                max_package_bytes=max_package_bytes, languages=tuple(languages.split(',')), seed=seed, jobs=fetch_jobs)
            if not repos or not any(repos.values()):
                raise ValueError(f"input {source}: empty corpus (no repository with source files)")
            repos = cap_corpus(repos, max_bytes, seed)
            fingerprint = corpus_fingerprint(repos)
            # the languages whose functions are read: this Python's own code for the default corpus (the
            # C headers of its packages are not), else every language of `languages` (C/C++ as c and cpp)
            fn_languages = {'python'} if not input else set(languages.split(',')) | (
                {'cpp'} if 'c' in languages.split(',') else set())
            split_of, funcs, record = (repository_splits(repos, roots, language_of, fn_languages, fingerprint, out_dir,
                                                         seed, heldout_fraction, num_proc)
                                       if task != 'dedup-bench' else ({}, None, None))
            # what no stage may use (decontaminate.py), computed once, by the first stage that is rebuilt
            clean_settings = {'decontaminate': [[e['path'], e['sha256']] for e in srcs], 'min_chars': MIN_CHARS}
            clean = functools.lru_cache(maxsize=None)(lambda: clean_functions(
                repos, roots, fn_languages, split_of, funcs, evals, dedup_threshold, num_proc))
            # the tokenizer, trained on the training repositories only, without what pre-training leaves out
            if bpe_vocab:
                tokenizer = train_corpus_bpe(repos, roots, [r for r in sorted(repos) if split_of.get(r, 'train') == 'train'],
                                             fingerprint, out_dir, bpe_vocab, bpe_bytes, seed,
                                             clean if task != 'dedup-bench' else None, clean_settings)
            # the data of each stage
            if task in ('all', 'icc', 'nsp'):
                run_icc(repos, roots, source, fingerprint, {r for r, sp in split_of.items() if sp == 'test'}, out_dir,
                        tokenizer, max_len, snippet_len, val_fraction, seed, shard_tokens, max_bytes, num_proc, clean,
                        clean_settings, objective='nsp' if task == 'nsp' else 'icc', file_fraction=icc_file_fraction)
            if task in ('all', 'retrieval', 'clone'):
                build_finetune({'all': ('retrieval', 'clone')}.get(task, (task,)), source, fingerprint, split_of,
                               fn_languages, clean, clean_settings, out_dir, seed, heldout_fraction, dedup_threshold)
            if task == 'dedup-bench':
                run_dedup_bench(repos, roots, fn_languages, bench_rows, dedup_threshold, seed, num_proc)
            if record:  # the split, once every stage has succeeded
                from data import write_json
                write_json(os.path.join(out_dir, 'splits.json'), record)
    except (ValueError, FileNotFoundError, ImportError, OSError, RuntimeError) as e:
        fail(e)
    print0(f"done in {time.time() - t_start:.1f}s")
