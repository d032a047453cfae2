#!/usr/bin/env bash
# The whole pipeline on a laptop CPU: install, prepare the default corpus (this Python's own source
# code) with a code BPE trained on it, pre-train mose_tiny, fine-tune it for retrieval, evaluate
# every exit on the held-out repositories next to chance, BM25 and the NBoW floor. A second run
# reuses what the first one made. Everything goes to data/ and out/.
set -euo pipefail
cd "$(dirname "$0")"
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1000}
FINETUNE_STEPS=${FINETUNE_STEPS:-500}
t0=$(date +%s)
stage() { printf '\n=== %s (%ds so far)\n' "$1" $(( $(date +%s) - t0 )); }

stage "install (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -r requirements.txt
PY=.venv/bin/python

stage "prepare: an 8k code BPE, ICC shards, retrieval pairs and clone pairs from the local Python sources"
$PY prepare.py --max_len=256 --bpe_vocab=8192

stage "pre-train mose_tiny for $PRETRAIN_STEPS steps (self-distilled MLM + ICC at exits 1, 2, 4, 6, 8 of 8 layers)"
if [ -f "out/pretrain/ckpt_$(printf %07d "$PRETRAIN_STEPS").pt" ]; then
    echo "out/pretrain already holds step $PRETRAIN_STEPS: reused"
else
    init=scratch; ls out/pretrain/ckpt_*.pt >/dev/null 2>&1 && init=resume
    $PY pretrain.py config/mose_tiny.py --init_from=$init --max_steps="$PRETRAIN_STEPS"
fi

stage "fine-tune for text-to-code and code-to-code retrieval, a CLIP loss at every exit"
if [ -f "out/finetune-retrieval/ckpt_$(printf %07d "$FINETUNE_STEPS").pt" ]; then
    echo "out/finetune-retrieval already holds step $FINETUNE_STEPS: reused"
else
    rm -rf out/finetune-retrieval
    $PY finetune.py config/finetune_tiny.py --task=retrieval --max_steps="$FINETUNE_STEPS"
fi

stage "evaluate every exit on the held-out repositories (one forward for all exits), next to chance, BM25 and NBoW"
$PY evaluate.py --exit=all --max_len=64

stage "done"
