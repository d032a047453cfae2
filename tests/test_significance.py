"""
significance.py tests (CPU, seconds):  python -m pytest tests/test_significance.py -q

The paired permutation test is checked against scipy.stats.permutation_test (exactly where both
enumerate every sign flip, within the binomial error of 10,000 random flips otherwise) and
scipy's paired t; evaluate.py --significance runs as a subprocess on test_evaluate's tiny bench.
"""
import json

import numpy as np
import pytest
from scipy import stats

import significance as sg
import test_evaluate


bench, run_eval = test_evaluate.bench, test_evaluate.run_eval  # bench: its pytest fixture, reused


def paired_t_statistic(x, y, axis=-1):
    """An independent paired statistic for scipy: the t of scipy's own paired t-test."""
    return stats.ttest_rel(x, y, axis=axis).statistic


def scipy_test(a, b, n_resamples=10000, rng=0):
    return stats.permutation_test((a, b), paired_t_statistic, permutation_type='samples', vectorized=True,
                                  n_resamples=n_resamples, alternative='two-sided', rng=rng)


@pytest.mark.parametrize('n, shift, seed', [(6, 0.0, 0), (9, 0.4, 1), (12, 0.3, 2), (13, 0.8, 3), (11, -0.5, 4)])
def test_exact_mode_equals_scipy(n, shift, seed):
    # 2^n <= 10,000: both enumerate every sign flip, so t and p agree to rounding
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = a - shift + rng.normal(size=n)
    t, p = sg.paired_permutation_test(a, b, n_permutations=10000)
    ref = scipy_test(a, b)
    assert t == pytest.approx(ref.statistic, rel=1e-12)
    assert p == pytest.approx(ref.pvalue, rel=1e-12, abs=1e-15)
    assert abs(p * 2 ** n - round(p * 2 ** n)) < 1e-9  # an exact p is a count over the 2^n flips


def test_hand_case_three_differences():
    # d = (1, 2, 3): the 8 flips give t = +-sum/..; only all +1 and all -1 reach |t| >= t_obs, so p = 2/8
    a, b = np.array([1.0, 2.0, 3.0]), np.zeros(3)
    t, p = sg.paired_permutation_test(a, b)
    assert t == pytest.approx(2.0 / (1.0 / np.sqrt(3)))  # mean 2, sd 1, n 3
    assert p == pytest.approx(0.25)


@pytest.mark.parametrize('shift, seed', [(0.15, 0), (0.3, 1), (0.0, 2)])
def test_random_mode_agrees_with_scipy_within_binomial_error(shift, seed):
    # n = 80: 2^80 flips, both draw 10,000 at random; each one-sided tail count is a binomial
    # proportion with standard error sqrt(q(1-q)/N), p = 2q, and the two estimates are independent
    rng = np.random.default_rng(seed)
    a = rng.normal(size=80)
    b = a - shift + rng.normal(size=80)
    N = 10000
    t, p = sg.paired_permutation_test(a, b, n_permutations=N, seed=seed)
    ref = scipy_test(a, b, N, rng=seed + 100)
    assert t == pytest.approx(ref.statistic, rel=1e-12)
    q = max(min(p, ref.pvalue) / 2, 1 / N)
    se = 2 * np.sqrt(2 * q * (1 - q) / N)  # of the difference of two p estimates
    assert abs(p - ref.pvalue) < 5 * se + 2 / N, (p, ref.pvalue, se)
    # and both near the t distribution's p (the permutation null of t is close to it at n = 80)
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue, abs=0.03)


def test_random_mode_never_gives_zero_and_is_deterministic():
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    b = a - 1.0 + 0.1 * rng.normal(size=200)  # a huge difference: no flip reaches t
    t, p = sg.paired_permutation_test(a, b, n_permutations=10000, seed=0)
    assert t > 50 and p == pytest.approx(2 / 10001)  # the +1 convention: (0 + 1) / (N + 1), both tails
    assert sg.paired_permutation_test(a, b, seed=3) == sg.paired_permutation_test(a, b, seed=3)


def test_real_difference_is_found_and_no_difference_is_not():
    # 500 queries whose similarity at exit B is 0.02 higher (noise 0.1): a real effect, t ~ 4.5;
    # with no difference, p > 0.05 on at least 17 of 20 seeds (expected 19)
    rng = np.random.default_rng(7)
    base = rng.uniform(0.2, 0.8, size=500)
    shifted = base + 0.02 + 0.1 * rng.normal(size=500)
    assert sg.paired_permutation_test(base, shifted, 2000, seed=0)[1] < 0.05
    null_ps = []
    for seed in range(20):
        r = np.random.default_rng(100 + seed)
        x = rng.uniform(0.2, 0.8, size=100)
        null_ps.append(sg.paired_permutation_test(x + 0.1 * r.normal(size=100), x + 0.1 * r.normal(size=100),
                                                  2000, seed=seed)[1])
    assert sum(p > 0.05 for p in null_ps) >= 17, null_ps


def test_degenerate_inputs():
    assert sg.paired_permutation_test(np.ones(5), np.ones(5)) == (0.0, 1.0)
    with pytest.raises(ValueError):
        sg.paired_permutation_test(np.ones(5), np.ones(4))
    with pytest.raises(ValueError):
        sg.paired_permutation_test(np.ones(1), np.ones(1))


def test_exit_tests_every_pair_antisymmetric_and_stars():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.8, size=300)
    sims = {1: base, 2: base + 0.05 + 0.05 * rng.normal(size=300), 4: base + 0.05 * rng.normal(size=300)}
    table = sg.exit_tests(sims, 2000)
    assert [(i, j) for i, j, _, _ in table] == [(1, 2), (1, 4), (2, 4)]
    t12 = dict(((i, j), (t, p)) for i, j, t, p in table)[(1, 2)]
    assert t12[0] == pytest.approx(stats.ttest_rel(sims[1], sims[2]).statistic) and t12[0] < 0
    assert sg.stars(t12[1]) == '**'
    assert (sg.stars(0.0009), sg.stars(0.001), sg.stars(0.049), sg.stars(0.05)) == ('**', '*', '*', '')
    T, P = sg.t_matrix(table, [1, 2, 4])
    np.testing.assert_allclose(T, -T.T)
    assert np.isnan(T[0, 0]) and T[0, 1] == t12[0] and P[1, 0] == t12[1]
    text = sg.format_tests(table, sims).splitlines()
    assert len(text) == 4 and text[1].startswith('1 vs 2') and text[1].endswith('**')


def test_pooled_concatenates_groups_or_picks_one():
    g = {'go': {2: np.array([1.0]), 4: np.array([2.0])}, 'python': {2: np.array([3.0, 4.0]), 4: np.array([5.0, 6.0])}}
    assert {e: v.tolist() for e, v in sg.pooled(g).items()} == {2: [1.0, 3.0, 4.0], 4: [2.0, 5.0, 6.0]}
    assert sg.pooled(g, 'python')[4].tolist() == [5.0, 6.0]
    with pytest.raises(ValueError, match='java'):
        sg.pooled(g, 'java')


def assert_png(path):
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    import matplotlib.image
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_heatmap_is_a_png(tmp_path):
    pytest.importorskip('matplotlib')
    rng = np.random.default_rng(0)
    sims = {e: rng.uniform(size=50) + 0.01 * e for e in (1, 2, 4, 8)}
    path = str(tmp_path / 'h.png')
    assert sg.plot_heatmap(path, sg.exit_tests(sims, 1000), list(sims), 'test') is None
    assert_png(path)


def test_evaluate_significance_end_to_end(bench, tmp_path):
    pytest.importorskip('matplotlib')
    d, out = bench, tmp_path / 'ev'
    rc, stdout, err = run_eval('--task=csn', '--exit=all', f'--csn_dir={d}/csn', '--candidates=10', '--significance=csn',
                               '--bm25=false', '--nbow=false', '--speed_batch=4', '--batch_size=8', '--threads=1',
                               f'--out_dir={out}', '--plot=false', cwd=d)
    assert rc == 0, stdout + err
    assert_png(out / 'significance_csn.png')
    sig = json.load(open(out / 'results.json'))['tasks']['csn']['significance']
    assert sig['queries'] == 27 and sig['n_permutations'] == 10000  # python 20 (2 batches of 10) + go 7
    assert [(r['exit_i'], r['exit_j']) for r in sig['pairs']] == [(2, 4)]
    assert 0 < sig['pairs'][0]['p'] <= 1 and np.isfinite(sig['pairs'][0]['t'])
    assert '2 vs 4' in stdout and 'paired permutation tests' in stdout
    # one language; an unknown language, a single exit or a task without batches stop with one line
    rc, stdout, err = run_eval('--task=csn', f'--csn_dir={d}/csn', '--candidates=10', '--significance=csn/go',
                               '--bm25=false', '--nbow=false', '--threads=1', f'--out_dir={out}', '--plot=false', cwd=d)
    assert rc == 0 and json.load(open(out / 'results.json'))['tasks']['csn']['significance']['queries'] == 7, err
    for bad, fragment in (('--significance=csn/java', 'csn languages: go, python'), ('--exit=4', 'two or more'),
                          ('--significance=ct', 'expected csn')):
        args = ['--task=csn', f'--csn_dir={d}/csn', '--significance=csn', '--nbow=false', f'--out_dir={out}', bad]
        rc, stdout, err = run_eval(*args, cwd=d)
        assert rc != 0 and 'Traceback' not in err and fragment in err, err
