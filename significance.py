"""
Do the exits find different things? Paired permutation tests between exits (paper 6.2, Fig. 4).

For one retrieval task every query has, at each exit, the cosine similarity of its embedding to
its correct candidate's. Two exits are compared on the same queries by the paired t statistic of
the per-query differences, and its null distribution by random sign flips of those differences
(under "the two exits give the same similarity" each difference is as likely + as -); the paper
uses 10,000 permutations and alpha 0.05, and marks p < 0.05 with * and p < 0.001 with **. The
pairs are tested one by one, without a correction for the number of pairs, as in the paper.

    python evaluate.py --exit=all --significance=csn    # -> out_dir/significance_csn.png, the table, results.json
"""
import itertools

import numpy as np


def paired_t(d, signs=None):
    """Paired t statistic mean(d) / (sd(d, ddof=1) / sqrt(n)) of differences d (n,), or of the
    sign-flipped differences signs * d for each row of signs (P, n) -> (P,). A flip leaves
    sum(d^2) unchanged, so only the mean needs the signs: a matrix-vector product."""
    d = np.asarray(d, dtype=np.float64)
    n = len(d)
    mean = d.mean() if signs is None else (signs @ d) / n       # () or (P,)
    var = np.maximum(np.dot(d, d) - n * mean ** 2, 0) / (n - 1)  # sd^2, ddof=1
    with np.errstate(divide='ignore', invalid='ignore'):
        return mean / np.sqrt(var / n)


def all_sign_flips(n):
    """(2^n, n) every vector of n signs +-1, the identity (all +1) first."""
    bits = (np.arange(2 ** n)[:, None] >> np.arange(n)[None, :]) & 1  # (2^n, n)
    return (1 - 2 * bits).astype(np.float64)


def paired_permutation_test(a, b, n_permutations=10000, seed=0, chunk=1000):
    """Two-sided paired permutation test of a (n,) against b (n,), the same queries in the same
    order. Returns (t, p): t the paired t statistic of d = a - b (> 0: a higher), p its two-sided
    p-value under random sign flips of d.

    The p-value follows scipy.stats.permutation_test(permutation_type='samples',
    alternative='two-sided') to the letter, so that the two can be compared: with T the flipped
    statistics and a relative tolerance of 100 machine epsilons for ties,
        p = min(1, 2 * min(#(T <= t) + k, #(T >= t) + k) / (P + k)),
    where, when 2^n <= n_permutations, the P = 2^n flips are all enumerated and k = 0 (exact),
    and else P = n_permutations flips are drawn (numpy default_rng(seed)) and k = 1: the observed
    sign pattern counts as one of the permutations, so p is never 0. All differences zero: (0, 1)."""
    if np.ndim(a) != 1 or np.shape(a) != np.shape(b) or len(a) < 2:
        raise ValueError(f"a and b must be 1-d of equal length >= 2, got shapes {np.shape(a)}, {np.shape(b)}")
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)  # (n,)
    if not np.any(d):
        return 0.0, 1.0
    n = len(d)
    t = float(paired_t(d))
    gamma = abs(t) * np.finfo(np.float64).eps * 100 if np.isfinite(t) else 0.0
    exact = n < 30 and 2 ** n <= n_permutations
    rng = np.random.default_rng(seed)
    batches = [all_sign_flips(n)] if exact else \
        ((1 - 2 * rng.integers(0, 2, size=(min(chunk, n_permutations - s), n))).astype(np.float64)  # (chunk, n)
         for s in range(0, n_permutations, chunk))
    less = greater = 0
    for signs in batches:
        null = paired_t(d, signs)                                           # (chunk,)
        less += int(np.count_nonzero(null <= t + gamma))
        greater += int(np.count_nonzero(null >= t - gamma))
    k, total = (0, 2 ** n) if exact else (1, n_permutations)
    return t, min(1.0, 2 * min(less + k, greater + k) / (total + k))


def exit_tests(sims, n_permutations=10000, seed=0):
    """sims: {exit: (n,) similarity of each query to its correct candidate}, the same queries at
    every exit. Returns [(exit_i, exit_j, t, p)] for every pair i < j in the order given; t > 0:
    exit_i gives the correct candidate the higher similarity."""
    exits = list(sims)
    return [(i, j, *paired_permutation_test(sims[i], sims[j], n_permutations, seed))
            for i, j in itertools.combinations(exits, 2)]


def stars(p):
    """The paper's marks: ** for p < 0.001, * for p < 0.05, '' otherwise."""
    return '**' if p < 0.001 else '*' if p < 0.05 else ''


def format_tests(table, sims):
    """The table in text: one row per pair of exits, with each exit's mean similarity."""
    rows = [[f"{i} vs {j}", f"{np.mean(sims[i]):.4f}", f"{np.mean(sims[j]):.4f}",
             f"{np.mean(np.asarray(sims[i]) - np.asarray(sims[j])):+.4f}", f"{t:+.2f}", f"{p:.4g}", stars(p)]
            for i, j, t, p in table]
    cells = [['exits', 'mean sim i', 'mean sim j', 'mean diff', 't', 'p', '']] + rows
    w = [max(len(r[c]) for r in cells) for c in range(len(cells[0]))]
    return '\n'.join('  '.join(x.ljust(w[c]) if c in (0, 6) else x.rjust(w[c]) for c, x in enumerate(r)).rstrip()
                     for r in cells)


def t_matrix(table, exits):
    """(E, E) t statistics: cell (r, c) the t of exit r against exit c (antisymmetric), and the p's; NaN on the diagonal."""
    pos = {e: k for k, e in enumerate(exits)}
    T, P = np.full((len(exits),) * 2, np.nan), np.full((len(exits),) * 2, np.nan)  # (E, E)
    for i, j, t, p in table:
        T[pos[i], pos[j]], T[pos[j], pos[i]] = t, -t
        P[pos[i], pos[j]] = P[pos[j], pos[i]] = p
    return T, P


def plot_heatmap(path, table, exits, title):
    """A PNG heatmap of the t statistics between exits (paper Fig. 4): row exit against column
    exit, annotated with t and * (p < 0.05) or ** (p < 0.001). Returns a note when matplotlib is
    missing, else None."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no significance heatmap (pip install matplotlib)"
    T, P = t_matrix(table, exits)
    finite = np.abs(T[np.isfinite(T)])
    vmax = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(exits), 0.6 + 0.7 * len(exits)))
    im = ax.imshow(np.ma.masked_invalid(T), cmap='coolwarm', vmin=-vmax, vmax=vmax)
    for r, c in itertools.product(range(len(exits)), repeat=2):
        if r != c:
            ax.text(c, r, f"{T[r, c]:.1f}{stars(P[r, c])}", ha='center', va='center', fontsize=8)
    ax.set_xticks(range(len(exits)), [str(e) for e in exits])
    ax.set_yticks(range(len(exits)), [str(e) for e in exits])
    ax.set_xlabel('exit (column)')
    ax.set_ylabel('exit (row)')
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label='t (row - column)')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def pooled(target_sims, group=''):
    """{exit: (n,)} from {group: {exit: (n_g,)}}: the queries of one group (a language), or of all
    groups one after another ('')."""
    if group and group not in target_sims:
        raise ValueError(f"no group {group!r} to test; there are: {', '.join(target_sims)}")
    groups = [target_sims[group]] if group else list(target_sims.values())
    return {e: np.concatenate([g[e] for g in groups]) for e in groups[0]}


def report(sims, path, title, n_permutations=10000, seed=0):
    """Run exit_tests on sims {exit: (n,)}, print the table, write the heatmap to path. Returns
    the record for results.json."""
    table = exit_tests(sims, n_permutations, seed)
    print(f"\n{title}: paired permutation tests ({n_permutations:,} sign flips), * p < 0.05, ** p < 0.001")
    print(format_tests(table, sims))
    msg = plot_heatmap(path, table, list(sims), title)
    print(f"note: {msg}" if msg else f"wrote {path}")
    return {'queries': len(next(iter(sims.values()))), 'n_permutations': n_permutations, 'seed': seed,
            'mean_similarity': {str(e): float(np.mean(v)) for e, v in sims.items()},
            'pairs': [{'exit_i': i, 'exit_j': j, 't': t, 'p': p} for i, j, t, p in table],
            'plot': None if msg else path}
