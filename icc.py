"""
The ICC pre-training dataset (paper 2.1, Fig. 2), in data.py's shard format: every file of the
corpus as snippets (split_snippets), the plan of which snippets share a sequence (icc_plan: one
repository, label 1, or two interleaved, label 0), the sequences <sep> s1 <sep> s2 ... <cls>
(assemble) in shards per split (write_icc_split), and the manifest, written last (run_icc).
The baseline it replaces (paper 6.3, Table 3), from the same snippets: BERT's next-sentence pairs
<sep> a <sep> b <cls>, b the snippet after a in its file (label 1) or one of another repository
(label 0), one pair a sequence (nsp_plan; objective='nsp', data/nsp/).

    run_icc(repos, roots, source, fingerprint, held_out, 'data', 'cl100k_base', max_len=2048)   # data/icc/
    run_icc(..., objective='nsp')                                                                  # data/nsp/
"""
import multiprocessing as mp
import os
import re
import time

import numpy as np
from tqdm import tqdm

from data import built_with, write_json, write_shard
from decontaminate import without_files
from sources import SOURCE_EXTS, assign_splits, source_text
from stage import make_dir, print0


# ----------------------------------------------------------------------------- snippets and sequences

def split_snippets(text, tok, budget):
    """Token id lists of <= budget tokens each: the whole file if it fits, else chunks cut at line
    boundaries (paper 2.1: snippets are files; long ones are split so each fits with <sep>, <cls>).
    Each chunk is encoded on its own (a token never spans two snippets); a single line longer than
    the budget is cut by tokens."""
    ids = tok.encode(text)
    if len(ids) <= budget:
        return [ids] if ids else []
    lines = text.splitlines(keepends=True)
    if len(lines) == 1:
        return [ids[i:i + budget] for i in range(0, len(ids), budget)]
    # tokens per line from the one encoding: a token counts for the line where its first byte is
    tok_start = np.cumsum(tok.token_byte_lengths()[ids]) - tok.token_byte_lengths()[ids]
    line_start = np.cumsum([0] + [len(l.encode('utf-8')) for l in lines[:-1]])
    counts = np.diff(np.append(np.searchsorted(tok_start, line_start), len(ids))).tolist()
    target = max(1, budget - 16)  # re-encoding a chunk can differ by a few tokens at its edges
    chunks, cur, n = [], [], 0
    for line, c in zip(lines, counts):
        if cur and n + c > target:
            chunks.append(''.join(cur))
            cur, n = [], 0
        cur.append(line)
        n += c
    chunks.append(''.join(cur))
    if len(chunks) == 1:  # cannot happen unless counts were off: halve
        half = len(lines) // 2
        chunks = [''.join(lines[:half]), ''.join(lines[half:])]
    return [s for c in chunks for s in split_snippets(c, tok, budget)]  # re-encode; recurse if still long


def icc_plan(lengths, max_len, seed):
    """Figure 2's build_concatenation over all repositories, on snippet lengths only.

    lengths: per repository, the token counts of its snippets (each <= max_len - 2).
    Returns [(label, [(repo, snippet), ...])] where every snippet appears exactly once.
    Repository a is drawn with probability proportional to its remaining snippets (so pools drain
    evenly), and with probability 1/2 a second repository b is interleaved: a, b, a, b, ...
    Differences from the pseudocode, on purpose:
    - a snippet that does not fit is left in its pool for a later sequence (sample_snippet would
      drop it), so every snippet is used exactly once;
    - no dangling <sep> before <cls> when the loop breaks;
    - label 0 only if a snippet of b actually made it in. The pseudocode can break before adding
      one (a's first snippet leaves no room); such a sequence holds one repository: label 1."""
    rng = np.random.default_rng(seed)
    for r, ls in enumerate(lengths):
        for i, n in enumerate(ls):
            if n + 2 > max_len:
                raise ValueError(f"snippet {i} of repository {r} has {n} tokens: over max_len - 2 = {max_len - 2}")
    pools = [list(rng.permutation(len(ls))) for ls in lengths]  # drawn from the end: without replacement
    remaining = np.array([len(p) for p in pools], dtype=np.int64)
    plan = []

    def draw(weights):
        c = np.cumsum(weights)
        return int(np.searchsorted(c, rng.random() * c[-1], side='right'))

    while remaining.sum():
        a = draw(remaining)
        is_negative = rng.random() < 0.5
        others = remaining.copy()
        others[a] = 0
        b = draw(others) if is_negative and others.sum() else None
        items, n, label = [], 1, 1  # n counts the final <cls>
        while pools[a]:
            i = pools[a][-1]
            if n + 1 + lengths[a][i] > max_len:
                break
            items.append((a, pools[a].pop()))
            n += 1 + lengths[a][i]
            if b is not None and pools[b]:
                j = pools[b][-1]
                if n + 1 + lengths[b][j] > max_len:
                    break
                items.append((b, pools[b].pop()))
                n += 1 + lengths[b][j]
                label = 0
        remaining[a] = len(pools[a])
        if b is not None:
            remaining[b] = len(pools[b])
        plan.append((label, items))
    return plan


def nsp_plan(file_snippets, seed):
    """BERT's next-sentence prediction pairs, the baseline ICC replaces (paper 2.1, 6.3, Table 3).

    file_snippets: per repository, the number of snippets of each of its files, in file order (a
    repository's snippets are numbered across its files in that order). Every snippet that has a
    successor in its file is the first snippet `a` of one pair, in seeded order: with probability
    1/2 the pair is (a, its successor), label 1, else (a, a snippet drawn uniformly from the other
    repositories), label 0. Returns [(label, [(repo, a), (repo', b)])], one pair a sequence."""
    rng = np.random.default_rng(seed)
    firsts, start = [], np.cumsum([0] + [sum(c) for c in file_snippets])  # start[r]: r's first global index
    for r, counts in enumerate(file_snippets):
        i = 0
        for c in counts:
            firsts += [(r, i + k) for k in range(c - 1)]
            i += c
    if not firsts:
        raise ValueError("nsp: no file of two or more snippets, so no next-snippet pair")
    if len(file_snippets) < 2:
        raise ValueError("nsp: one repository, so no pair of two repositories (label 0)")
    total = int(start[-1])
    plan = []
    for k in rng.permutation(len(firsts)):
        r, i = firsts[k]
        if rng.random() < 0.5:
            plan.append((1, [(r, i), (r, i + 1)]))
            continue
        g = int(rng.integers(total - (start[r + 1] - start[r])))  # a global index outside repository r
        g = g if g < start[r] else g + int(start[r + 1] - start[r])
        o = int(np.searchsorted(start, g, side='right')) - 1
        plan.append((0, [(r, i), (o, g - int(start[o]))]))
    return plan


def assemble(items, snippets, sep_id, cls_id):
    """<sep> s1 <sep> s2 ... <cls> as uint32; snippets[repo][i] are token arrays."""
    parts = []
    for r, i in items:
        parts += [np.array([sep_id], np.uint32), snippets[r][i]]
    parts.append(np.array([cls_id], np.uint32))
    return np.concatenate(parts).astype(np.uint32)


# ----------------------------------------------------------------------------- the corpus tokenised, the shards written

def snippet_budget(max_len, snippet_len=0):
    """The longest snippet in tokens: snippet_len, or by default (max_len - 3) // 2, so that a second
    snippet always fits and sequences mix two repositories as often as ICC needs (paper 2.1)."""
    budget = snippet_len or (max_len - 3) // 2
    if not 1 <= budget <= max_len - 2:
        raise ValueError(f"snippet_len={snippet_len}: must be in [1, max_len - 2 = {max_len - 2}]")
    return budget


OBJECTIVES = ('icc', 'nsp')  # the pre-training sequences: ICC's packed repositories, or BERT's next-snippet pairs
_TOK, _BUDGET = None, None  # a tokenising worker's tokenizer and snippet budget (_init_worker)


def _init_worker(name, budget):
    global _TOK, _BUDGET
    from tokenizer import get_tokenizer
    _TOK, _BUDGET = get_tokenizer(name), budget


def _tokenise_file(task):
    """Worker: (repo index, file index, path or (path, text)) -> (ri, fi, skip reason, bytes, snippets)."""
    ri, fi, src = task
    text, why = source_text(src)
    if text is None:
        return ri, fi, why, 0, []
    snippets = [np.array(s, dtype=np.uint32) for s in split_snippets(text, _TOK, _BUDGET)]
    return ri, fi, None, len(text.encode('utf-8')), snippets


def clean_icc_dir(icc_dir):
    """Remove what an interrupted or different build left: the manifest first (so the directory
    never looks complete while it is rewritten), then temp files and shards."""
    removed = 0
    if os.path.exists(os.path.join(icc_dir, 'manifest.json')):
        os.remove(os.path.join(icc_dir, 'manifest.json'))
    for name in sorted(os.listdir(icc_dir)):
        if name.endswith('.tmp') or re.fullmatch(r'(train|val)_\d{4}\.bin', name):
            os.remove(os.path.join(icc_dir, name))
            removed += 1
    if removed:
        print0(f"icc: removed {removed} files of an earlier incomplete or different build")


def sample_files(repos, fraction, seed):
    """ceil(fraction x n) of each repository's n files, drawn in seeded order and kept in file order:
    every repository stays, with a share of its files (a pre-training run of a few million tokens
    reads a few percent of a 100M-token corpus; tokenising the rest would only cost time)."""
    if fraction >= 1:
        return repos
    rng = np.random.default_rng(seed)
    out = {}
    for r in sorted(repos):
        keep = np.sort(rng.permutation(len(repos[r]))[:int(np.ceil(fraction * len(repos[r])))])
        out[r] = [repos[r][i] for i in keep]
    return out


def tokenise_corpus(repos, tokenizer, budget, num_proc):
    """Every file of the corpus as snippets of at most `budget` tokens, in num_proc processes.
    Returns ({repository: its snippets in file order}, for the repositories with any, and stats;
    stats['file_snippets'][repository] counts the snippets of each of its files, in that order)."""
    names = sorted(repos)
    tasks = [(ri, fi, f) for ri, r in enumerate(names) for fi, f in enumerate(repos[r])]
    snippets = [[None] * len(repos[r]) for r in names]
    st = {'skipped': {}, 'bytes': 0, 'tokens': 0}
    t0 = time.time()
    with mp.Pool(num_proc, initializer=_init_worker, initargs=(tokenizer, budget)) as pool, \
            tqdm(total=len(tasks), desc='tokenise', unit='file', mininterval=1) as bar:
        for ri, fi, why, nb, sn in pool.imap_unordered(_tokenise_file, tasks, chunksize=8):
            if why:
                st['skipped'][why] = st['skipped'].get(why, 0) + 1
            snippets[ri][fi] = sn
            st['bytes'] += nb
            st['tokens'] += sum(len(s) for s in sn)
            bar.update(1)
    st['seconds'] = time.time() - t0
    flat = {r: [s for fs in snippets[ri] for s in fs] for ri, r in enumerate(names)}
    st['files'] = sum(1 for fs in snippets for f in fs if f)
    st['empty'] = [r for r in names if not flat[r]]
    st['file_snippets'] = {r: [len(f) for f in snippets[ri] if f] for ri, r in enumerate(names) if flat[r]}
    return {r: v for r, v in flat.items() if v}, st


def write_icc_split(icc_dir, split, snippets, tok, max_len, seed, shard_tokens, objective='icc', file_snippets=None):
    """The sequences of one split in shards of about shard_tokens tokens: ICC's (icc_plan over
    {repository: snippets}) or NSP's (nsp_plan over file_snippets, {repository: snippets per file}).
    Returns its manifest entry and the largest token id."""
    rs = sorted(snippets)
    plan = (icc_plan([[len(s) for s in snippets[r]] for r in rs], max_len, seed) if objective == 'icc' else
            nsp_plan([file_snippets[r] for r in rs], seed))
    shards, seqs, labels, n_seq_tok, tot, pos, max_id = [], [], [], 0, 0, 0, 0
    for i, (label, items) in enumerate(plan):
        seq = assemble(items, [snippets[r] for r in rs], tok.sep_id, tok.cls_id)
        seqs.append(seq)
        labels.append(label)
        n_seq_tok += len(seq)
        max_id = max(max_id, int(seq.max()))
        if n_seq_tok >= shard_tokens or i == len(plan) - 1:
            shards.append(f"{split}_{len(shards):04d}.bin")
            write_shard(os.path.join(icc_dir, shards[-1]), seqs, labels)
            tot, pos = tot + n_seq_tok, pos + sum(labels)
            seqs, labels, n_seq_tok = [], [], 0
    if plan:
        print0(f"{objective} {split}: {len(rs):,} repositories, {len(plan):,} sequences, {tot:,} tokens, "
               f"mean length {tot / len(plan):,.0f}, label 0 (two repositories) {1 - pos / len(plan):.1%}")
    return {'shards': shards, 'sequences': len(plan), 'tokens': tot, 'repositories': len(rs), 'positives': pos}, max_id


def run_icc(repos, roots, source, fingerprint, held_out, out_dir, tokenizer, max_len, snippet_len=0, val_fraction=0.05,
            seed=1337, shard_tokens=64 * 2 ** 20, max_bytes=0, num_proc=1, clean=None, clean_settings=None,
            objective='icc', file_fraction=1.0):
    """ICC pre-training shards (paper 2.1, Fig. 2) in out_dir/icc/, or with objective='nsp' BERT's
    next-snippet pairs (nsp_plan, the same snippets) in out_dir/nsp/, split by repository; the
    `held_out` repositories (the retrieval test split) are validation ones, never pre-trained on,
    and the files of clean()['icc_files'] (those that contain an evaluation function) are left out;
    file_fraction < 1 tokenises that share of each repository's files (sample_files).
    The manifest is written last: its presence marks a complete dataset, reused on a rerun."""
    from tokenizer import get_tokenizer
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}: expected one of {', '.join(OBJECTIVES)}")
    tok = get_tokenizer(tokenizer)
    icc_dir = os.path.join(out_dir, objective)
    make_dir(icc_dir)
    budget = snippet_budget(max_len, snippet_len)
    settings = {'source': source, 'corpus_sha256': fingerprint, 'tokenizer': tok.meta(), 'max_len': max_len,
                'snippet_len': budget, 'val_fraction': val_fraction, 'seed': seed, 'shard_tokens': shard_tokens,
                'max_bytes': max_bytes, 'held_out': sorted(held_out), 'objective': objective, **(clean_settings or {}),
                **({'file_fraction': file_fraction} if file_fraction < 1 else {})}
    mpath = os.path.join(icc_dir, 'manifest.json')
    if built_with(icc_dir, settings):
        print0(f"{objective}: {mpath} is complete and was built with these settings: reusing it")
        return
    if max_len < 5:
        raise ValueError(f"max_len={max_len}: must be >= 5 (<sep> snippet <sep> snippet <cls>)")
    clean_icc_dir(icc_dir)
    record = {}
    if clean is not None:
        c = clean()
        repos, record = without_files(repos, roots, c['icc_files']), {'decontamination': c['record']['decontamination']}
        print0(f"{objective}: {len(c['icc_files']):,} files that contain an evaluation function left out")
    if file_fraction < 1:
        n_all = sum(len(v) for v in repos.values())
        repos = sample_files(repos, file_fraction, seed)
        print0(f"{objective}: {sum(len(v) for v in repos.values()):,} of {n_all:,} files tokenised "
               f"(icc_file_fraction={file_fraction})")
    flat, st = tokenise_corpus(repos, tokenizer, budget, num_proc)
    dt, n_tok = st['seconds'], st['tokens']
    print0(f"{objective}: {len(flat):,} repositories, {st['files']:,} files, {st['bytes'] / 1e6:,.1f} MB, {n_tok:,} tokens "
           f"in {dt:.1f}s ({n_tok / max(dt, 1e-9) / 1e6:.2f}M tokens/s on {num_proc} processes)")
    if st['skipped']:
        print0(f"{objective}: skipped files: " + ', '.join(f"{v:,} {k}" for k, v in sorted(st['skipped'].items())))
    if st['empty']:
        print0(f"{objective}: {len(st['empty'])} repositories with no usable file skipped (e.g. {', '.join(st['empty'][:3])})")
    if not flat:
        raise ValueError(f"input {source}: no usable source file in any repository "
                         f"(extensions read: {', '.join(sorted(SOURCE_EXTS))})")
    split_of = assign_splits({r: sum(len(s) for s in v) for r, v in flat.items() if r not in held_out},
                             {'train': 1 - val_fraction, 'val': val_fraction}, seed)
    split_of.update({r: 'val' for r in flat if r in held_out})
    manifest = {'format': 'mose-icc', 'version': 1, 'objective': objective, 'tokenizer': tok.meta(), 'max_len': max_len,
                'snippet_len': budget, 'seed': seed, 'splits': {},
                'val_repositories': sorted(r for r in flat if split_of[r] == 'val'),
                'max_token_id': 0, 'source': source, 'settings': settings, 'stats': {}, **record}
    for si, split in enumerate(('train', 'val')):
        part = {r: v for r, v in flat.items() if split_of[r] == split}
        manifest['splits'][split], max_id = write_icc_split(icc_dir, split, part, tok, max_len, seed + si, shard_tokens,
                                                            objective, st['file_snippets'])
        manifest['max_token_id'] = max(manifest['max_token_id'], max_id)
    n_snip = sum(len(v) for v in flat.values())
    packed = sum(v['tokens'] for v in manifest['splits'].values()) / max(sum(v['sequences'] for v in
                                                                             manifest['splits'].values()), 1)
    single = (n_tok + 2 * n_snip) / max(n_snip, 1)  # one snippet a sequence: <sep> snippet <cls>
    manifest['stats'] = {'repositories': len(flat), 'files': st['files'], 'bytes': st['bytes'], 'tokens': n_tok,
                         'snippets': n_snip, 'skipped_files': st['skipped'],
                         'repositories_without_files': len(st['empty']), 'mean_len_packed': packed,
                         'mean_len_single': single, 'pad_share': 1 - packed / max_len,  # were all padded to max_len
                         'tokenise_seconds': dt, 'tokens_per_s': n_tok / max(dt, 1e-9)}
    print0(f"{objective}: mean sequence length {packed:,.0f} tokens ({1 - packed / max_len:.1%} padding at {max_len})"
           + (f" with ICC packing, {single:,.0f} without (one snippet a sequence; paper 2.1: 1,300 vs 630)"
              if objective == 'icc' else f" (NSP: two snippets a sequence; max_len {max_len})"))
    write_json(mpath, manifest)  # last: its presence marks a complete dataset
    print0(f"{objective}: wrote {mpath}")
