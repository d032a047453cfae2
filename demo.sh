#!/usr/bin/env bash
# The whole pipeline on a laptop CPU: install, prepare a corpus with a code BPE trained on it,
# pre-train mose_tiny, fine-tune it for retrieval, evaluate every exit on the held-out repositories
# next to chance, BM25 and the NBoW floor. A second run reuses what the first one made. Everything
# goes to data/ and out/.
#   CORPUS=debian (the default where apt-get exists): ~1,000 upstream repositories in 7 languages
#     from Debian's source packages (~380 MB fetched once into data/debian/);
#   CORPUS=python (the fallback, offline, any OS): this Python installation's own sources.
# CT_DIR=<dir> adds CodeXGLUE code-to-code-trans (Java -> C#) to the evaluation.
set -euo pipefail
cd "$(dirname "$0")"
CORPUS=${CORPUS:-debian}
if [ "$CORPUS" = debian ] && ! command -v apt-get >/dev/null; then
    echo "no apt-get on this machine: CORPUS=python (this Python's own sources) instead of debian"
    CORPUS=python
fi
case "$CORPUS" in
    # ICC sequences from a share of each repository's files: on the Debian corpus a tenth (~45k training
    # sequences, of which 1,000 steps of 16 read 16k; tokenising the rest would cost ~1.5 minutes)
    debian) INPUT=debian; DEFAULT_FT=400; ICC_SHARE=0.1 ;;  # 53k text-code pairs: 400 steps are one epoch of them
    python) INPUT=''; DEFAULT_FT=500; ICC_SHARE=1 ;;        # 32k text-code pairs: 500 steps are two epochs
    *) echo "error: CORPUS=$CORPUS: expected debian or python" >&2; exit 2 ;;
esac
PRETRAIN_STEPS=${PRETRAIN_STEPS:-1000}
FINETUNE_STEPS=${FINETUNE_STEPS:-$DEFAULT_FT}
t0=$(date +%s)
stage() { printf '\n=== %s (%ds so far)\n' "$1" $(( $(date +%s) - t0 )); }

stage "install (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -r requirements.txt
PY=.venv/bin/python

# a model trained on another corpus is not reused (its tokenizer is another BPE); out/ of a demo run
# before CORPUS existed holds models of the python corpus
mkdir -p out
OLD=$(cat out/demo-corpus 2>/dev/null || { [ -d out/pretrain ] && echo python; } || echo "$CORPUS")
if [ "$OLD" != "$CORPUS" ]; then
    echo "out/ holds models of CORPUS=$OLD: moved to out-$OLD/"
    rm -rf "out-$OLD" && mkdir "out-$OLD"
    for d in pretrain finetune-retrieval eval; do if [ -e "out/$d" ]; then mv "out/$d" "out-$OLD/"; fi; done
fi
echo "$CORPUS" > out/demo-corpus

stage "prepare ($CORPUS): an 8k code BPE, ICC shards, retrieval pairs and clone pairs"
$PY prepare.py --input="$INPUT" --max_len=256 --bpe_vocab=8192 --icc_file_fraction=$ICC_SHARE

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
    # the lr x0.3 from 3/4 of the steps, x0.1 from 7/8 (config/finetune_tiny.py)
    $PY finetune.py config/finetune_tiny.py --task=retrieval --max_steps="$FINETUNE_STEPS" \
        --lr_milestones="[($(( FINETUNE_STEPS * 3 / 4 )), 0.3), ($(( FINETUNE_STEPS * 7 / 8 )), 0.1)]"
fi

stage "evaluate every exit on the held-out repositories (one forward for all exits), next to chance, BM25 and NBoW"
$PY evaluate.py --exit=all --max_len=64

# CT_DIR=<CodeXGLUE Code-Code/code-to-code-trans/data>: the real Java -> C# pairs of its CT_SPLIT (valid), zero-shot
if [ -n "${CT_DIR:-}" ]; then
    stage "evaluate every exit on CodeXGLUE code-to-code-trans ($CT_DIR, ${CT_SPLIT:-valid}), next to chance, BM25 and NBoW"
    $PY evaluate.py --exit=all --task=ct --ct_dir="$CT_DIR" --split="${CT_SPLIT:-valid}" --max_len=256 --out_dir=out/eval-ct
fi

stage "done"
