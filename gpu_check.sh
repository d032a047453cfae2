#!/usr/bin/env bash
# The CUDA check, in one run of a few minutes and without the network:
#   1. the CUDA tests (python -m pytest -q -m cuda tests/test_cuda.py), then the parity tests against
#      transformers' Starcoder2Model (tests/test_model.py, on the CPU: they are cheap);
#   2. bench.py at the 1B shape (config/mose_1b.py, the released 49,156-token vocabulary) eager, with
#      a profile of where its step goes, and with torch.compile, and at config/mose_tiny.py next to
#      transformers;
#   3. one results folder: summary.md (the table, also printed at the end), summary.json (the same,
#      with every test case and every bench record) and log.txt (everything the steps printed).
#
#   bash gpu_check.sh                           # results in $OUT/gpu_check when OUT is set, else out/gpu_check
#   PYTHON=.venv/bin/python RESULTS_DIR=/tmp/check bash gpu_check.sh
#
# It needs torch (a CUDA build for the GPU parts), numpy, pytest, tiktoken and tokenizers, and uses
# flash-attn when it is importable. Without a CUDA device it says so, the CUDA tests skip (each
# with its reason), the 1B benches are not run, the tiny bench runs a few steps on the CPU, and the
# summary is written all the same.
#
# Time: every step has its own timeout, and no step starts past a budget for the whole run
# (GPU_CHECK_BUDGET seconds, default 360): the whole check is a few minutes of GPU time, and a
# second run costs no more. Each step's timeout is its own bound or what is left of the budget,
# whichever is less. The steps run in order of what the check is for: tests, 1B eager (with a
# profile of its step), tiny, 1B compiled (compilation is the slowest step), parity.
set -uo pipefail
cd "$(dirname "$0")"

if [ -z "${PYTHON:-}" ]; then
    for p in python3 python .venv/bin/python; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' 2>/dev/null; then PYTHON=$p; break; fi
    done
fi
if [ -z "${PYTHON:-}" ]; then
    echo "error: no python with torch found (set PYTHON=/path/to/python)"; exit 2
fi
export PYTHONUNBUFFERED=1

RESULTS=${RESULTS_DIR:-${OUT:+$OUT/gpu_check}}
RESULTS=${RESULTS:-out/gpu_check}
mkdir -p "$RESULTS" || exit 2
WORK=$(mktemp -d)                     # junit files and bench records, read into summary.json at the end
trap 'rm -rf "$WORK"' EXIT
LOG=$RESULTS/log.txt
: >"$LOG"
BUDGET=${GPU_CHECK_BUDGET:-360}
: >"$WORK/steps.tsv"
SECONDS=0

# step NAME TIMEOUT COMMAND...: runs COMMAND under `timeout`, its output to the terminal and log.txt;
# records name, exit status (124: timed out, 'budget': not started), seconds and the timeout given
step() {
    local name=$1 limit=$2 left rc t0
    shift 2
    left=$((BUDGET - SECONDS))
    if [ "$left" -lt 15 ]; then
        echo "== $name: not run, the run's budget of ${BUDGET}s is spent" | tee -a "$LOG"
        printf '%s\tbudget\t0\t0\n' "$name" >>"$WORK/steps.tsv"
        return 125
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (timeout ${limit}s): $(printf '%q ' "$@")" | tee -a "$LOG"
    t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >>"$WORK/steps.tsv"
    return "$rc"
}

timeout 60 "$PYTHON" - >"$WORK/env.json" 2>>"$LOG" <<'EOF'
import json, platform, torch
env = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.cuda.is_available(),
       'cuda_version': torch.version.cuda, 'gpus': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}
try:
    import flash_attn
    env['flash_attn'] = flash_attn.__version__
except Exception as e:  # an import error, or a build for another torch
    env['flash_attn'] = None
    env['flash_attn_why'] = f"{type(e).__name__}: {e}".splitlines()[0]
print(json.dumps(env))
EOF
tee -a "$LOG" <"$WORK/env.json"
HAS_CUDA=$("$PYTHON" -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["cuda"]))' "$WORK/env.json" 2>/dev/null || echo 0)
if [ "$HAS_CUDA" = 1 ]; then
    echo "CUDA device: $("$PYTHON" -c 'import json,sys; print(", ".join(json.load(open(sys.argv[1]))["gpus"]))' "$WORK/env.json")" | tee -a "$LOG"
else
    echo "no CUDA device (torch.cuda.is_available() is False): the CUDA tests skip, the 1B benches are not run, the tiny bench runs on the CPU" | tee -a "$LOG"
fi

# 1. tests
step cuda_tests "${T_TESTS:-150}" "$PYTHON" -m pytest -q -rsx -m cuda tests/test_cuda.py --junitxml="$WORK/cuda_tests.xml"

# 2. benches. The 1B shape at batch 8 x 2048 in bf16 autocast holds ~17 GB of float32 weights,
# gradients and AdamW moments (16 bytes x 1.1B parameters) and ~45 GB of saved activations (36
# blocks x 16,384 tokens x ~75 KB: float32 LayerNorm inputs, bf16 copies of every matmul input, the
# two 12,288-wide MLP activations): ~65 GB, inside an H200's 141 GB (and an 80 GB H100's). Out of
# memory (bench.py's exit status 3) retries at half the batch.
bench_1b() {  # bench_1b LABEL TIMEOUT EXTRA...: the first batch of 8, 4, 2 that fits
    local label=$1 limit=$2 bs rc
    shift 2
    for bs in ${BATCHES_1B:-8 4 2}; do
        step "bench_${label}_b$bs" "$limit" "$PYTHON" bench.py config/mose_1b.py --vocab_size=49156 --batch_size="$bs" \
            --block_size=2048 --steps=5 --warmup=2 --compare_transformers=false --label="$label" \
            --json_out="$WORK/bench.jsonl" "$@"
        rc=$?
        [ "$rc" != 3 ] && { FIT_1B=$bs; return "$rc"; }
    done
    return 3
}
if [ "$HAS_CUDA" = 1 ]; then
    bench_1b 1b "${T_BENCH_1B:-100}" --profile=true
    step bench_tiny "${T_BENCH_TINY:-60}" "$PYTHON" bench.py config/mose_tiny.py --vocab_size=8196 --steps=10 --warmup=3 \
        --label=tiny --json_out="$WORK/bench.jsonl"
    BATCHES_1B=${FIT_1B:-8} bench_1b 1b_compile "${T_BENCH_1B_COMPILE:-240}" --compile=true
else
    step bench_tiny_cpu "${T_BENCH_TINY:-120}" "$PYTHON" bench.py config/mose_tiny.py --vocab_size=8196 --batch_size=4 \
        --steps=2 --warmup=1 --device=cpu --label=tiny_cpu --json_out="$WORK/bench.jsonl"
fi

# 1 (continued). parity with transformers (CPU float32, cheap), after the GPU steps
step parity_tests "${T_PARITY:-60}" "$PYTHON" -m pytest -q tests/test_model.py -k "parity or training_matches" \
    --junitxml="$WORK/parity_tests.xml"

# summary
"$PYTHON" - "$WORK" "$RESULTS" "$BUDGET" "$SECONDS" <<'EOF' | tee -a "$LOG"
import json, os, sys, time
import xml.etree.ElementTree as ET

work, results, budget, elapsed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
env = {}
if os.path.isfile(os.path.join(work, 'env.json')):
    try:
        env = json.load(open(os.path.join(work, 'env.json')))
    except ValueError:
        pass
steps = []
for line in open(os.path.join(work, 'steps.tsv')):
    name, rc, secs, limit = line.rstrip('\n').split('\t')
    steps.append({'step': name, 'exit': rc, 'seconds': int(secs), 'timeout': int(limit)})
status_of = {s['step']: s for s in steps}


def junit(name):
    path = os.path.join(work, f'{name}.xml')
    out = {'passed': 0, 'failed': 0, 'errors': 0, 'skipped': 0, 'xfailed': 0, 'seconds': None, 'cases': [],
           'ran': os.path.isfile(path)}
    if not out['ran']:
        return out
    root = ET.parse(path).getroot()
    suite = root if root.tag == 'testsuite' else root.find('testsuite')
    out['seconds'] = float(suite.get('time', 0))
    for case in suite.iter('testcase'):
        kind, why = 'passed', ''
        for child in case:
            if child.tag == 'failure':
                kind, why = 'failed', child.get('message', '')
            elif child.tag == 'error':
                kind, why = 'errors', child.get('message', '')
            elif child.tag == 'skipped':
                kind = 'xfailed' if child.get('type') == 'pytest.xfail' else 'skipped'
                why = child.get('message', '')
        out[kind] += 1
        out['cases'].append({'name': f"{case.get('classname', '')}::{case.get('name')}", 'outcome': kind,
                             'message': why.splitlines()[0] if why else ''})
    return out


tests = {'cuda_tests': junit('cuda_tests'), 'parity_tests': junit('parity_tests')}
bench = []
if os.path.isfile(os.path.join(work, 'bench.jsonl')):
    bench = [json.loads(l) for l in open(os.path.join(work, 'bench.jsonl')) if l.strip()]

device = ', '.join(env.get('gpus') or []) or 'no CUDA device (CPU)'
md = [f"# gpu_check {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", '',
      f"{device}; torch {env.get('torch')} (CUDA {env.get('cuda_version')}), python {env.get('python')}; "
      f"flash_attn {env.get('flash_attn') or 'not importable (' + env.get('flash_attn_why', '?') + ')'}; "
      f"{elapsed} s of {budget} s budget", '',
      '| tests | passed | failed | errors | skipped | xfailed | seconds |', '|---|---|---|---|---|---|---|']
titles = {'cuda_tests': 'CUDA (`pytest -m cuda tests/test_cuda.py`)',
          'parity_tests': 'parity with transformers (`tests/test_model.py`, CPU)'}
for key, t in tests.items():
    if t['ran']:
        md.append(f"| {titles[key]} | {t['passed']} | {t['failed']} | {t['errors']} | {t['skipped']} | {t['xfailed']} "
                  f"| {t['seconds']:.0f} |")
    else:
        s = status_of.get(key, {})
        md.append(f"| {titles[key]} | not run or no report (exit {s.get('exit', '-')}) | | | | | |")
notes = []
for key, t in tests.items():
    for c in t['cases']:
        if c['outcome'] in ('failed', 'errors'):
            notes.append(f"- {c['outcome'].upper()} {c['name']}: {c['message'][:300]}")
    skips = sorted({c['message'] for c in t['cases'] if c['outcome'] in ('skipped', 'xfailed')})
    notes += [f"- {key} skipped/xfailed: {m}" for m in skips]
md += [''] + notes + ['', '| bench | batch x length | compile | implementation | tok/s | MFU | peak memory | ms/step '
                      '| first step (s) |', '|---|---|---|---|---|---|---|---|---|']
gib = lambda b: f"{b / 2 ** 30:.1f} GiB" if b else 'n/a'
for r in bench:
    shape = f"{r['batch_size']} x {r['block_size']}"
    if r.get('error'):
        md.append(f"| {r['label']} | {shape} | {r['compile']} | - | {r['error']} | | | | |")
        continue
    for impl, x in r['runs'].items():
        mem = x['peak_mem_bytes'] if x['peak_mem_bytes'] is not None else r.get('max_rss_bytes')
        mem_s = gib(mem) + ('' if x['peak_mem_bytes'] is not None else ' (max RSS)')
        mfu = f"{100 * x['mfu']:.1f}%" if x['mfu'] is not None else 'n/a'
        md.append(f"| {r['label']} | {shape} | {r['compile']} | {impl} | {x['tok_s']:,.0f} | {mfu} | {mem_s} "
                  f"| {x['ms_per_step']:.1f} | {x['first_step_s']:.1f} |")
if not bench:
    md.append('| (no bench ran) | | | | | | | | |')
for r in bench:
    pr = r.get('profile')
    if not pr:
        continue
    md += ['', f"Where model.py's step goes ({r['label']}, {r['batch_size']} x {r['block_size']}, {r['dtype']}):", '',
           '- phases: ' + ', '.join(f"{k} {v:.1f} ms" for k, v in pr['phases_ms'].items()),
           '- timed alone, forward + backward: ' + ', '.join(f"{k} {v:.1f} ms" for k, v in pr['alone_ms'].items()),
           f"- one profiled step, {pr['profiled_ms']:.1f} ms: " + ', '.join(f"{k} {v:.0f}%" for k, v in pr['by_kind_pct'].items()),
           '- top kernels: ' + '; '.join(f"{t['pct']:.1f}% {t['name'][:60]}" for t in pr['top'][:5])]
md += ['', '| step | exit status | seconds | timeout |', '|---|---|---|---|']
md += [f"| {s['step']} | {s['exit']} | {s['seconds']} | {s['timeout']} |" for s in steps]
text = '\n'.join(md) + '\n'
with open(os.path.join(results, 'summary.md'), 'w') as f:
    f.write(text)
with open(os.path.join(results, 'summary.json'), 'w') as f:
    json.dump({'env': env, 'elapsed_s': elapsed, 'budget_s': budget, 'steps': steps, 'tests': tests, 'bench': bench},
              f, indent=1)
print(text)
# a bench that ran out of memory (exit status 3) counts when the same configuration then ran at a smaller batch
fitted = {r['label'] for r in bench if not r.get('error')}
ok = all(t['ran'] and not t['failed'] and not t['errors'] for t in tests.values()) and \
    all(s['exit'] == '0' or (s['exit'] == '3' and any(s['step'].startswith(f'bench_{l}_b') for l in fitted))
        for s in steps)
print(f"gpu_check: {'all steps passed' if ok else 'FAILURES above'}; results in {results}/ (summary.md, summary.json, log.txt)")
sys.exit(0 if ok else 1)
EOF
exit "${PIPESTATUS[0]}"
