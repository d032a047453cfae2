"""
evaluate.py tests (CPU, hermetic, tiny models and files in tmp_path):  python -m pytest tests/test_evaluate.py -q

The scorers are checked against independent implementations (pytrec_eval when installed, loops
written from the benchmark definitions, scikit-learn, the CodeXGLUE evaluators' rules) and hand
cases; the stage itself runs as a subprocess, as a user runs it.
"""
import gzip
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import benchmarks
import evaluate as ev
import metrics
from configurator import apply_config
from model import MoSE, MoSEConfig, config_to_dict
from stage import format_table
from tokenizer import get_tokenizer
from training import save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- references

def rank_by_sorting(row, target):
    """1-based position of `target` when candidates are sorted by score descending and, among
    equal scores, the target is placed after every other candidate (ties against the model)."""
    order = sorted(range(len(row)), key=lambda j: (-row[j], j == target))
    return order.index(target) + 1


def official_mrr(answers, predictions):
    """CodeXGLUE NL-code-search-Adv evaluator's rule: 1/(position+1) of the answer, 0 if absent."""
    scores = []
    for key, gold in answers.items():
        rr = 0.0
        for pos, cand in enumerate(predictions[key]):
            if cand == gold:
                rr = 1 / (pos + 1)
                break
        scores.append(rr)
    return float(np.mean(scores))


def official_map_at_r(answers, predictions):
    """CodeXGLUE POJ-104 evaluator's rule (MAP@R), on answer / prediction lists by id."""
    scores = []
    for key, gold in answers.items():
        assert len(gold) == len(predictions[key]), "the official scorer rejects a wrong number of answers"
        gold, hits, ap = set(gold), 0, 0.0
        for k, p in enumerate(predictions[key], 1):
            if p in gold:
                hits += 1
                ap += hits / k
        scores.append(ap / len(gold))
    return float(np.mean(scores))


# ----------------------------------------------------------------------------- metrics

def test_tie_rule_hand_case():
    # query 0: target 0.5, candidate 1 ties it, candidate 2 is lower -> rank 2 (tie counts against)
    # query 1: target 0.9, candidate 2 ties at 0.9 -> rank 2; query 2: target 0.3 ties candidate 0 -> 2
    # query 3: target 0.7 is strictly best -> rank 1
    S = np.array([[0.5, 0.5, 0.1, 0.0],
                  [0.2, 0.9, 0.9, 0.0],
                  [0.3, 0.1, 0.3, 0.0],
                  [0.1, 0.1, 0.1, 0.7]])
    assert metrics.target_ranks(S).tolist() == [2, 2, 2, 1]
    assert metrics.mrr([2, 2, 2, 1]) == pytest.approx((0.5 * 3 + 1) / 4)
    # NDCG@10 with one relevant item: 1/log2(rank+1); rank 11 is outside the cut
    assert metrics.ndcg_at([1, 2, 11], 10) == pytest.approx((1 + 1 / np.log2(3) + 0) / 3)
    assert metrics.mrr_at([1, 2, 101], 100) == pytest.approx((1 + 0.5 + 0) / 3)
    # every candidate tied: the target is last of all
    assert metrics.target_ranks(np.ones((3, 3))).tolist() == [3, 3, 3]


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_mrr_ndcg_equal_independent_loops_with_ties(seed):
    rng = np.random.default_rng(seed)
    S = rng.integers(0, 4, size=(60, 60)).astype(np.float32)  # 4 distinct values: ties everywhere
    targets = rng.integers(0, 60, size=60)
    ranks = metrics.target_ranks(S, targets)
    ref = [rank_by_sorting(S[i].tolist(), int(targets[i])) for i in range(60)]
    assert ranks.tolist() == ref
    assert metrics.mrr(ranks) == pytest.approx(sum(1 / r for r in ref) / 60)
    dcg = [1 / np.log2(r + 1) if r <= 10 else 0 for r in ref]
    assert metrics.ndcg_at(ranks, 10) == pytest.approx(sum(dcg) / 60)
    # the prediction order puts the target exactly at its rank
    order = metrics.ranked_candidates(S, targets)
    assert [int(np.where(order[i] == targets[i])[0][0]) + 1 for i in range(60)] == ref
    assert all(np.all(np.diff(S[i, order[i]]) <= 0) for i in range(60))  # best first


@pytest.mark.parametrize('seed', [0, 1])
def test_mrr_ndcg_equal_pytrec_eval(seed):
    pytrec_eval = pytest.importorskip('pytrec_eval')
    rng = np.random.default_rng(seed)
    S = rng.integers(0, 5, size=(40, 40)).astype(np.float64)
    ranks = metrics.target_ranks(S)
    # trec_eval breaks ties by document id, descending; naming the target 'a' and every other
    # candidate 'c...' puts the target after its ties: the pessimistic rule of benchmarks.md
    qrel, run = {}, {}
    for i in range(40):
        name = lambda j: 'a' if j == i else f'c{j:03d}'
        qrel[f'q{i}'] = {'a': 1}
        run[f'q{i}'] = {name(j): float(S[i, j]) for j in range(40)}
    res = pytrec_eval.RelevanceEvaluator(qrel, {'recip_rank', 'ndcg_cut_10'}).evaluate(run)
    assert metrics.mrr(ranks) == pytest.approx(np.mean([r['recip_rank'] for r in res.values()]))
    assert metrics.ndcg_at(ranks, 10) == pytest.approx(np.mean([r['ndcg_cut_10'] for r in res.values()]))


def test_map_at_r_hand_case():
    # labels A A A B B C; scores of query 0 (an A, R = 2 other A's: items 1, 2):
    #   item:   1    2    3    4    5
    #   score: .9   .1   .5   .2   .3   -> top R=2: [1 (hit), 3 (miss)]: AP = (1/1) / 2 = 0.5
    # query 3 (a B, R = 1: item 4): item 4 ties with item 0 at .8 -> the miss first: top 1 = [0],
    #   AP = 0. Query 5 (C) has no other C: R = 0, not a query. The rest are worked out below.
    labels = ['A', 'A', 'A', 'B', 'B', 'C']
    S = np.array([
        [0, .9, .1, .5, .2, .3],   # q0: AP 0.5
        [.9, 0, .8, .1, .1, .1],   # q1 (A; R=2 items 0, 2): top2 = [0 hit, 2 hit] -> (1/1 + 2/2)/2 = 1
        [.1, .2, 0, .9, .3, .4],   # q2 (A; R=2 items 0, 1): order 3,5,4,1,0 -> top2 [3, 5] -> 0
        [.8, .1, .1, 0, .8, .1],   # q3 (B; R=1 item 4): tie .8 with item 0 -> [0] -> 0
        [.1, .1, .2, .7, 0, .3],   # q4 (B; R=1 item 3): [3] -> 1
        [.5, .5, .5, .5, .5, 0],   # q5: R=0
    ])
    score, answers = metrics.map_at_r(S, labels)
    assert score == pytest.approx((0.5 + 1 + 0 + 0 + 1) / 5)
    assert [a.tolist() if a is not None else None for a in answers] == [[1, 3], [0, 2], [3, 5], [0], [3], None]
    # and the official evaluator's rule on these answer lists gives the same number
    gold = {i: [j for j in range(6) if labels[j] == labels[i] and j != i] for i in range(5)}
    assert official_map_at_r(gold, {i: answers[i].tolist() for i in range(5)}) == pytest.approx(score)


@pytest.mark.parametrize('seed', [0, 1])
def test_map_at_r_random_with_ties_equals_official_rule(seed):
    rng = np.random.default_rng(seed)
    n = 45
    labels = rng.integers(0, 5, size=n).astype(str)
    X = rng.integers(0, 3, size=(n, 4)).astype(np.float64)
    S = X @ X.T  # integer scores: many ties
    score, answers = metrics.map_at_r(S, labels, chunk=7)  # chunking must not matter
    assert score == pytest.approx(metrics.map_at_r(S, labels)[0])
    gold = {i: [j for j in range(n) if labels[j] == labels[i] and j != i] for i in range(n)}
    gold = {i: g for i, g in gold.items() if g}
    preds = {i: answers[i].tolist() for i in gold}
    assert all(len(preds[i]) == len(gold[i]) for i in gold)           # exactly R answers
    assert all(i not in preds[i] for i in gold)                       # never itself
    assert official_map_at_r(gold, preds) == pytest.approx(score)
    # pessimistic ties: the answers of a query, by score, are best first
    assert all(np.all(np.diff(S[i, preds[i]]) <= 0) for i in gold)
    # a callable giving rows on demand (how evaluate.py avoids the N x N matrix) agrees
    assert metrics.map_at_r(lambda a, b: S[a:b], labels, chunk=10)[0] == pytest.approx(score)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_precision_recall_f1_equal_sklearn(seed):
    from sklearn.metrics import f1_score, precision_score, recall_score
    rng = np.random.default_rng(seed)
    gold, pred = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert metrics.precision_recall_f1(pred, gold) == pytest.approx(
        (precision_score(gold, pred), recall_score(gold, pred), f1_score(gold, pred)))
    # degenerate: no predicted positives -> 0, as scikit-learn's zero_division default
    z = np.zeros(10, dtype=int)
    assert metrics.precision_recall_f1(z, np.ones(10, dtype=int)) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize('n', [2500, 3000, 999, 1000, 1, 0])
def test_csn_batches_reproduce_the_seed0_protocol(n):
    state = np.random.get_state()
    try:  # the reference protocol as CodeBERT's preprocessing writes it, on the global generator
        idx = np.arange(n)
        np.random.seed(0)
        np.random.shuffle(idx)
    finally:
        np.random.set_state(state)
    batches = benchmarks.csn_batches(n, 1000, seed=0)
    if n == 0:
        assert batches == []
        return
    if n < 1000:
        assert len(batches) == 1 and batches[0].tolist() == idx.tolist()
        return
    assert len(batches) == n // 1000 and all(len(b) == 1000 for b in batches)  # last partial batch dropped
    assert np.concatenate(batches).tolist() == idx[:n // 1000 * 1000].tolist()
    before = np.random.get_state()[1].copy()
    benchmarks.csn_batches(n)
    assert np.array_equal(np.random.get_state()[1], before)  # the global generator is untouched


# ----------------------------------------------------------------------------- command line helpers

def test_exit_flag_stays_a_string_and_parse_exits():
    defaults = {'exit': 'all', 'task': 'default', 'batch_size': 64}
    assert apply_config(['--exit', '18', '--task', 'csn'], defaults) == {**defaults, 'exit': '18', 'task': 'csn'}
    assert apply_config(['--exit=all', '--batch_size=8'], defaults) == {**defaults, 'exit': 'all', 'batch_size': 8}
    assert apply_config(['--exit=4,36'], defaults)['exit'] == '4,36'
    valid = (4, 9, 18, 27, 36)
    assert ev.parse_exits('all', valid) == list(valid)
    assert ev.parse_exits('18', valid) == [18]
    assert ev.parse_exits('36,4', valid) == [4, 36]
    assert ev.parse_exits('[4, 9]', valid) == [4, 9]
    with pytest.raises(ev.UserError, match=r"exit 5 is not configured; valid exits: \[4, 9, 18, 27, 36\]"):
        ev.parse_exits('5', valid)
    with pytest.raises(ev.UserError, match='valid exits'):
        ev.parse_exits('deep', valid)
    assert ev.parse_tasks('default') == (['csn', 'code-code'], True)
    assert ev.parse_tasks('poj104,csn') == (['poj104', 'csn'], False)
    with pytest.raises(ev.UserError, match='unknown task'):
        ev.parse_tasks('csn,mbpp')


def test_format_table_aligns():
    out = format_table(['exit', 'MRR'], [['4', '1.5'], ['36', '10.25']]).splitlines()
    assert len({len(l) for l in out}) == 1 and out[2].startswith('36 ')


# ----------------------------------------------------------------------------- encoding

TOK = get_tokenizer('cl100k_base')


def tiny_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=TOK.n_vocab, pad_id=TOK.pad_id, n_layer=4, n_embd=32, n_head=4, n_kv_head=1,
               intermediate_size=96, exit_layers=(2, 4), proj_heads=True, max_seq_len=128, attn_dropout=0,
               resid_dropout=0, embd_dropout=0)
    cfg.update(kw)
    m = MoSE(MoSEConfig(**cfg))
    with torch.no_grad():  # non-trivial heads and norms
        for p in m.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return m.eval()


def snippets(n, seed=0):
    rng = np.random.default_rng(seed)
    return [TOK.code_input(f"def f{i}(x):\n" + "    x = x + 1\n" * int(rng.integers(1, 12)) + "    return x\n",
                           'python', 128) for i in range(n)]


def test_exit_all_equals_per_exit_runs():
    m, seqs = tiny_model(), snippets(13)
    nullctx = torch.autocast('cpu', enabled=False)
    both = ev.batched_forward(ev.encoder(m, [2, 4], nullctx), seqs, 5, TOK.pad_id)
    for e in (2, 4):
        one = ev.batched_forward(ev.encoder(m, [e], nullctx), seqs, 5, TOK.pad_id)
        assert list(one) == [e]
        torch.testing.assert_close(both[e], one[e], rtol=0, atol=0)
    assert not torch.allclose(both[2], both[4])
    torch.testing.assert_close(both[4].norm(dim=1), torch.ones(13))


def test_sorted_batching_keeps_order_and_equals_unbatched():
    m, seqs = tiny_model(), snippets(17, seed=3)
    lens = [len(s) for s in seqs]
    assert len(set(lens)) > 3  # lengths differ, so sorting reorders
    nullctx = torch.autocast('cpu', enabled=False)
    out = ev.batched_forward(ev.encoder(m, [2, 4], nullctx), seqs, 4, TOK.pad_id)
    for i, s in enumerate(seqs):
        with torch.no_grad():
            ref = m.encode(torch.tensor([s]), [2, 4])
        for e in (2, 4):
            torch.testing.assert_close(out[e][i], ref[e][0], rtol=1e-5, atol=1e-5)


def test_clone_scorer_and_pair_inputs():
    m = tiny_model(n_classes=2, proj_heads=False)
    funcs = {'1': 'int a() { return 1; }', '2': 'int b() {\n  int x = 2;\n  return x;\n}',
             '3': 'void c() {}' * 40}
    pairs = [('1', '2', 1), ('2', '3', 0), ('3', '3', 1), ('1', '3', 0)]
    inputs = benchmarks.PairInputs(TOK, funcs, pairs, 64)
    assert inputs.lengths == [len(inputs[i]) for i in range(len(pairs))]  # exact lengths
    assert max(inputs.lengths) == 64
    p = ev.batched_forward(ev.clone_scorer(m, [2, 4], torch.autocast('cpu', enabled=False)), inputs, 3,
                           TOK.pad_id, lengths=inputs.lengths)
    with torch.no_grad():
        ref = m.classify(torch.tensor([inputs[1]]), [2, 4])
    for e in (2, 4):
        assert p[e].shape == (4, 1)
        assert p[e][1, 0].item() == pytest.approx(torch.softmax(ref[e], -1)[0, 1].item(), abs=1e-5)


def test_retrieval_metrics_predictions_rescore_to_the_same_mrr():
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    c = torch.nn.functional.normalize(q + 0.8 * torch.randn(30, 8), dim=1)
    c[5] = c[4]  # a duplicate candidate: a tie
    ids = [f"u{i}" for i in range(30)]
    batches = benchmarks.csn_batches(30, 10)
    ranks, preds = benchmarks.retrieval_metrics(q, c, batches, ids, top=4)
    assert len(preds) == 30 and all(len(a) == 4 for _, a in preds)
    got = {qid: a for qid, a in preds}
    assert official_mrr({u: u for u in ids}, got) == pytest.approx(metrics.mrr_at(ranks, 4))
    _, full = benchmarks.retrieval_metrics(q, c, batches, ids, top=None)
    assert official_mrr({u: u for u in ids}, dict(full)) == pytest.approx(metrics.mrr(ranks))


def test_plot_tradeoff_with_a_stub_matplotlib(tmp_path, monkeypatch):
    """matplotlib is optional: the plot code runs against a recording stub (the real one if present)."""
    import types
    calls = []

    class Ax:
        def __getattr__(self, name):
            return lambda *a, **k: calls.append((name, a))

    class Fig:
        def tight_layout(self):
            pass

        def savefig(self, path, **k):
            open(path, 'wb').write(b'png')

    plt = types.SimpleNamespace(subplots=lambda **k: (Fig(), Ax()), close=lambda f: None)
    mpl = types.SimpleNamespace(use=lambda b: None, pyplot=plt)
    monkeypatch.setitem(sys.modules, 'matplotlib', mpl)
    monkeypatch.setitem(sys.modules, 'matplotlib.pyplot', plt)
    out = tmp_path / 'p.png'
    assert ev.plot_tradeoff(str(out), {'csn MRR': [(36, 9.0, 0.8), (4, 1.0, 0.7)]}, 't') is None
    assert out.exists()
    plotted = [a for name, a in calls if name == 'plot']
    assert plotted == [([1.0, 9.0], [pytest.approx(70.0), pytest.approx(80.0)])]
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import fails -> a note, no exception
    assert 'matplotlib' in ev.plot_tradeoff(str(out), {'x': [(4, 1.0, 0.5)]}, 't')


# ----------------------------------------------------------------------------- the stage, end to end

def run_eval(*args, cwd):
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'evaluate.py'), *args], cwd=cwd,
                       capture_output=True, text=True, timeout=180)
    return r.returncode, r.stdout, r.stderr


def assert_one_line_error(rc, out, err, *fragments):
    assert rc != 0, out + err
    assert 'Traceback' not in err + out, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    for f in fragments:
        assert f in lines[0], lines[0]


def save_model(out_dir, **kw):
    m = tiny_model(**kw)
    save_checkpoint(str(out_dir), 1, {'model': m.state_dict(), 'model_config': config_to_dict(m.config),
                                      'config': {'task': 'test'}, 'tokenizer': TOK.meta(), 'step': 1}, keep_last=1)
    return m


def write_csn(path, lang, n):
    rows = []
    for i in range(n):
        doc = f"Add {i} to the value and return it ({lang})."
        code = f"def add_{lang}_{i}(x):\n    \"\"\"{doc}\"\"\"\n" + "    x = x + 1\n" * (i % 5) + f"    return x + {i}\n"
        rows.append({'repo': 'r', 'path': 'p.py', 'func_name': f'add_{i}', 'original_string': code,
                     'language': lang, 'code': code, 'code_tokens': code.split(), 'docstring': doc,
                     'docstring_tokens': doc.split(), 'sha': '0', 'partition': 'test',
                     'url': f'https://x/{lang}/{i}'})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with gzip.open(path, 'wt', encoding='utf-8') as f:
        for r in rows:
            f.write(json.dumps(r) + '\n')


@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    """A tiny retrieval model, a tiny clone model and every benchmark in its distributed format."""
    d = tmp_path_factory.mktemp('bench')
    save_model(d / 'out' / 'finetune-retrieval')
    save_model(d / 'out' / 'finetune-clone', n_classes=2, proj_heads=False)
    write_csn(str(d / 'csn' / 'python' / 'final' / 'jsonl' / 'test' / 'python_test_0.jsonl.gz'), 'python', 25)
    write_csn(str(d / 'csn' / 'go' / 'final' / 'jsonl' / 'test' / 'go_test_0.jsonl.gz'), 'go', 7)
    os.makedirs(d / 'data' / 'retrieval')
    with open(d / 'data' / 'retrieval' / 'test.jsonl', 'w') as f:
        for i in range(12):
            for kind in ('text-code', 'code-code'):
                f.write(json.dumps({'kind': kind, 'query': f"def g{i}(a):\n    return a * {i}\n" if kind == 'code-code'
                                    else f"multiply by {i}", 'query_lang': 'python' if kind == 'code-code' else None,
                                    'code': f"def h{i}(b):\n    return {i} * b\n", 'code_lang': 'python',
                                    'repo': 'r', 'id': f"{kind}-{i}"}) + '\n')
    os.makedirs(d / 'ct')
    java = [f"public int f{i}(int x) {{ return x + {i}; }}" for i in range(9)]
    cs = [f"public int F{i}(int x) {{ return x + {i}; }}" for i in range(9)]
    (d / 'ct' / 'test.java-cs.txt.java').write_text('\n'.join(java) + '\n')
    (d / 'ct' / 'test.java-cs.txt.cs').write_text('\n'.join(cs) + '\n')
    with open(d / 'poj.jsonl', 'w') as f:
        for i in range(14):
            label = str(1 + i % 4) if i < 13 else '99'  # label 99 occurs once: R = 0, not a query
            f.write(json.dumps({'label': label, 'index': str(100 + i),
                                'code': f"int main() {{ int a = {i}; printf(\"%d\", a * {label}); }}"}) + '\n')
    os.makedirs(d / 'bcb')
    with open(d / 'bcb' / 'data.jsonl', 'w') as f:
        for i in range(6):
            f.write(json.dumps({'func': f"public void m{i}() {{ int y = {i}; }}", 'idx': str(i)}) + '\n')
    pairs = [('0', '1', 1), ('1', '2', 0), ('2', '3', 1), ('3', '4', 0), ('4', '5', 1), ('0', '5', 0),
             ('0', '77', 1)]  # id 77 is not in data.jsonl: skipped
    (d / 'bcb' / 'test.txt').write_text(''.join(f"{a}\t{b}\t{y}\n" for a, b, y in pairs))
    return d


def test_end_to_end_all_tasks(bench):
    d = bench
    rc, out, err = run_eval('--task', 'all', '--exit', 'all', f'--csn_dir={d}/csn', '--ct_dir', f'{d}/ct',
                            f'--poj104_path={d}/poj.jsonl', f'--bcb_dir={d}/bcb', '--candidates=10', '--pred_top=5',
                            '--speed_batch=4', '--batch_size=8', '--threads=1', cwd=d)
    assert rc == 0, out + err
    res = json.load(open(d / 'out' / 'eval' / 'results.json'))
    assert set(res['tasks']) == {'csn', 'code-code', 'ct', 'poj104', 'bcb'}
    for kind in ('retrieval', 'clone'):
        for e in ('2', '4'):
            c = res['models'][kind]['exits'][e]
            assert c['params'] > 0 and c['gflops_512'] > 0 and c['snippets_per_s'] > 0
    assert res['models']['retrieval']['exits']['2']['gflops_512'] < res['models']['retrieval']['exits']['4']['gflops_512']
    # CodeSearchNet: python 25 rows -> 2 batches of 10 (5 dropped); go 7 rows -> one batch of 7
    assert res['tasks']['csn']['languages']['python'] == {'rows': 25, 'queries': 20, 'batches': 2, 'candidates': 10}
    assert res['tasks']['csn']['languages']['go'] == {'rows': 7, 'queries': 7, 'batches': 1, 'candidates': 7}
    for e in ('2', '4'):
        m = res['tasks']['csn']['exits'][e]
        assert m['mrr'] == pytest.approx((m['mrr/python'] + m['mrr/go']) / 2)
        assert 1 / 10 <= m['mrr/python'] <= 1 and 0 <= m['ndcg@10'] <= 1
        # the prediction file rescored by the CodeXGLUE rule gives the reported mrr@pred_top
        preds = [json.loads(l) for l in open(d / res['tasks']['csn']['predictions'][e])]
        assert len(preds) == 27 and all(len(p['answers']) == 5 for p in preds)
        by_lang = {lang: {p['url']: p['answers'] for p in preds if f'/{lang}/' in p['url']} for lang in ('python', 'go')}
        rescored = np.mean([official_mrr({u: u for u in v}, v) for v in by_lang.values()])
        assert rescored == pytest.approx(m['mrr@5'])
    # code-code: 12 pairs -> one batch of 10 (the last 2 dropped)
    assert {k: res['tasks']['code-code'][k] for k in ('rows', 'queries', 'batches')} == \
        {'rows': 12, 'queries': 10, 'batches': 1}
    # CT: 9 Java queries against the 9 C# functions
    assert res['tasks']['ct']['queries'] == 9
    ct = [json.loads(l) for l in open(d / res['tasks']['ct']['predictions']['4'])]
    assert [p['url'] for p in ct] == list(range(9)) and all(len(p['answers']) == 5 for p in ct)
    # POJ-104: exactly R answers per query; the label seen once is not a query
    labels = {json.loads(l)['index']: json.loads(l)['label'] for l in open(d / 'poj.jsonl')}
    for e in ('2', '4'):
        preds = [json.loads(l) for l in open(d / res['tasks']['poj104']['predictions'][e])]
        assert len(preds) == 13 and res['tasks']['poj104']['no_match'] == 1
        gold = {p['index']: [j for j in labels if labels[j] == labels[p['index']] and j != p['index']] for p in preds}
        assert all(len(p['answers']) == len(gold[p['index']]) for p in preds)
        assert official_map_at_r(gold, {p['index']: p['answers'] for p in preds}) == \
            pytest.approx(res['tasks']['poj104']['exits'][e]['map@r'])
    # BigCloneBench: idx1 TAB idx2 TAB 0|1, the pair with a missing id skipped; scores = sklearn's on the file
    from sklearn.metrics import f1_score, precision_score, recall_score
    assert res['tasks']['bcb']['pairs'] == 6 and res['tasks']['bcb']['skipped'] == 1
    gold = [int(l.split('\t')[2]) for l in open(d / 'bcb' / 'test.txt')][:6]
    for e in ('2', '4'):
        lines = open(d / res['tasks']['bcb']['predictions'][e]).read().splitlines()
        assert len(lines) == 6 and all(len(l.split('\t')) == 3 and l.split('\t')[2] in ('0', '1') for l in lines)
        pred = [int(l.split('\t')[2]) for l in lines]
        m = res['tasks']['bcb']['exits'][e]
        assert (m['precision'], m['recall'], m['f1']) == pytest.approx(
            (precision_score(gold, pred, zero_division=0), recall_score(gold, pred), f1_score(gold, pred)))
    # the printed table: one row per exit with params, GFLOPs, snippets/s and the metrics
    assert 'GFLOPs/512' in out and 'snippets/s' in out and 'poj104 MAP@R' in out and 'bcb F1' in out
    assert 'csn MRR by language' in out


def test_default_run_single_exit_space_form(bench, tmp_path):
    d = bench
    # the default task on prepare.py's layout: CSN-format python test set + code-code pairs
    os.makedirs(d / 'data' / 'codesearchnet' / 'python' / 'final' / 'jsonl' / 'test', exist_ok=True)
    write_csn(str(d / 'data' / 'codesearchnet' / 'python' / 'final' / 'jsonl' / 'test' / 'python_test_0.jsonl.gz'),
              'python', 6)
    rc, out, err = run_eval('--exit', '4', '--out_dir', str(tmp_path / 'ev'), '--plot=false', '--threads=1', cwd=d)
    assert rc == 0, out + err
    res = json.load(open(tmp_path / 'ev' / 'results.json'))
    assert set(res['tasks']) == {'csn', 'code-code'}
    assert list(res['tasks']['csn']['exits']) == ['4'] and list(res['models']['retrieval']['exits']) == ['4']
    assert sorted(os.listdir(tmp_path / 'ev' / 'predictions')) == ['code-code_exit4.jsonl', 'csn_exit4.jsonl']


def test_unconfigured_exit_lists_valid_exits(bench):
    rc, out, err = run_eval('--exit', '3', cwd=bench)
    assert_one_line_error(rc, out, err, 'exit 3 is not configured', 'valid exits: [2, 4]')


def test_missing_checkpoint_and_data_say_what_to_run(tmp_path):
    rc, out, err = run_eval('--exit', '4', cwd=tmp_path)
    assert_one_line_error(rc, out, err, 'python prepare.py')
    os.makedirs(tmp_path / 'data' / 'retrieval')
    with open(tmp_path / 'data' / 'retrieval' / 'test.jsonl', 'w') as f:
        f.write(json.dumps({'kind': 'code-code', 'query': 'def f(): pass', 'query_lang': 'python',
                            'code': 'def g(): pass', 'code_lang': 'python', 'repo': 'r', 'id': '1'}) + '\n')
    rc, out, err = run_eval('--exit', '4', cwd=tmp_path)
    assert_one_line_error(rc, out, err, 'no checkpoint in out/finetune-retrieval', 'python finetune.py --task retrieval')


@pytest.mark.parametrize('case', ['missing_field', 'empty', 'dup_index', 'no_path', 'bcb_ids', 'malformed',
                                  'released_no_tokenizer', 'clone_for_retrieval'])
def test_bad_benchmark_files(bench, tmp_path, case):
    if case == 'missing_field':  # a CodeSearchNet row without its url
        p = tmp_path / 'csn.jsonl'
        p.write_text(json.dumps({'code': 'def f(): pass', 'language': 'python', 'docstring': 'f'}) + '\n')
        args, frag = ['--task', 'csn', f'--csn_dir={p}'], "missing field 'url'"
    elif case == 'empty':
        p = tmp_path / 'poj.jsonl'
        p.write_text('')
        args, frag = ['--task', 'poj104', f'--poj104_path={p}'], 'empty'
    elif case == 'dup_index':
        p = tmp_path / 'poj.jsonl'
        p.write_text(''.join(json.dumps({'label': '1', 'index': '7', 'code': 'int main(){}'}) + '\n' for _ in range(2)))
        args, frag = ['--task', 'poj104', f'--poj104_path={p}'], "index '7' occurs twice"
    elif case == 'no_path':
        args, frag = ['--task', 'ct'], '--ct_dir'
    elif case == 'bcb_ids':  # every pair names an id missing from data.jsonl
        os.makedirs(tmp_path / 'b')
        (tmp_path / 'b' / 'data.jsonl').write_text(json.dumps({'func': 'void f(){}', 'idx': '1'}) + '\n')
        (tmp_path / 'b' / 'test.txt').write_text('1\t2\t1\n')
        args, frag = ['--task', 'bcb', f'--bcb_dir={tmp_path / "b"}'], 'no usable pairs'
    elif case == 'released_no_tokenizer':
        (tmp_path / 'config.json').write_text('{}')
        args, frag = ['--task', 'code-code', f'--init_from={tmp_path}'], '--tokenizer='
    elif case == 'clone_for_retrieval':
        args, frag = ['--task', 'code-code', '--init_from=out/finetune-clone'], 'is a clone classifier'
    else:
        p = tmp_path / 'poj.jsonl'
        p.write_text('{"label": "1", "index": \n')
        args, frag = ['--task', 'poj104', f'--poj104_path={p}'], 'malformed JSON'
    rc, out, err = run_eval(*args, cwd=bench)
    assert_one_line_error(rc, out, err, frag)
    if case == 'malformed':  # 'all' skips absent data, never a broken file
        rc, out, err = run_eval('--task=all', f'--poj104_path={p}', cwd=bench)
        assert_one_line_error(rc, out, err, frag)


def test_bm25_equals_the_formula_written_out():
    from baselines import bm25_scores, bm25_terms
    assert bm25_terms('getHTTPResponse(url_path, 42)') == ['get', 'http', 'response', 'url', 'path', '42']
    docs = ['def read_file(path): return open(path).read()', 'def add(a, b): return a + b',
            'class FileReader: def read(self): pass']
    queries = ['read file', 'add numbers', 'nothing matches here']
    got = bm25_scores(queries, docs, k1=1.2, b=0.75)
    toks = [bm25_terms(d) for d in docs]
    avg = sum(map(len, toks)) / len(toks)
    for i, q in enumerate(queries):
        for j, d in enumerate(toks):
            ref = 0.0
            for t in bm25_terms(q):
                df = sum(t in x for x in toks)
                if df == 0:
                    continue
                idf = math.log(1 + (len(toks) - df + 0.5) / (df + 0.5))
                f = d.count(t)
                ref += idf * f * 2.2 / (f + 1.2 * (0.25 + 0.75 * len(d) / avg))
            assert got[i, j] == pytest.approx(ref, rel=1e-5)
    assert got[0].argmax() == 0 and got[1].argmax() == 1 and not got[2].any()
