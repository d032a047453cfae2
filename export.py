"""
Export one exit of a trained MoSE in the layout of the released checkpoints (the authors publish one
hub repository per exit, ModularStarEncoder-finetuned-4/9/18/27), for MoSE.from_pretrained,
transformers and encode.py.

    python export.py --init_from=out/finetune-retrieval --exit=9 --out_dir=mose-exit9
    python export.py --init_from=out/finetune-retrieval --exit=4 --dtype=bfloat16   # the released precision

out_dir gets config.json, model.safetensors and the tokenizer (vocab.json, merges.txt, tokenizer.json
with <sep> <cls> <mask> added, tokenizer_config.json: left padding). The weights are model.truncated:
the embedding, the blocks up to the exit, the final norm only when the exit is the last layer, and
the heads of every exit up to it. Tensor names (the released fine-tuned heads' names are not known,
so these are this repository's; config.json's mose_layout repeats them):
    model.embed_tokens, model.layers.{i}.*, model.norm   transformers' Starcoder2Model under 'model.'
    proj.{j}.fc1, proj.{j}.fc2       retrieval head of the j-th exit of matryoshka_layers: Linear, LeakyReLU, Linear
    classifier.{j}.dense, .out_proj  clone classifier of the j-th exit: Linear, tanh, Linear
    exit_embedding, mlm_head.*, icc_head   pre-training heads (--pretrain_heads=true)
config.json adds to the Starcoder2 fields is_causal=false (bidirectional in transformers >= 5),
pooling, final_norm, projection_heads, n_classes, sep/cls/mask ids and the tokenizer's fingerprint.
The export is then read back (MoSE.from_pretrained; transformers' Starcoder2Model when installed)
and the largest difference of its embeddings and hidden states is printed.

In transformers (an exit below the last layer is the raw block output, so the norm goes):
    m = transformers.AutoModel.from_pretrained('mose-exit9')
    if not m.config.final_norm: m.norm = torch.nn.Identity()
    h = m(input_ids=ids, attention_mask=mask).last_hidden_state   # ids left-padded, <cls> last
"""
import os
import shutil
import sys

import numpy as np
import torch

from data import atomic_open, write_json
from encode import encode_texts, resolve_tokenizer
from model import MoSE
from stage import fail, make_out_dir, print0
from training import UserError, left_pad, load_model

BACKBONE = ('embed_tokens', 'layers', 'norm')
PRETRAIN_HEADS = ('exit_embedding', 'mlm_head', 'icc_head')
VOCAB_KEYS = ('embed_tokens.weight', 'mlm_head.decoder.weight', 'mlm_head.decoder.bias')
LAYOUT = {
    'model.*': "transformers' Starcoder2Model (embed_tokens, layers.{i}, norm); bidirectional (is_causal=false)",
    'exit representation': "the output of block k for an exit k below num_hidden_layers (no final norm: "
                           "final_norm=false), the final norm of the last block's output otherwise; with "
                           "exit_norm=true the final norm of block k's output at every exit k",
    'pooling': "'cls': the state of the last position (<cls>; inputs are left-padded); 'mean': the mean over "
               "real tokens; 'text': the mean over the tokens after the last <sep> (sep_token_id)",
    'pool_mean': "with center=true: row j is subtracted from exit matryoshka_layers[j]'s pooled state "
                 "before its head (the running mean of fine-tuning)",
    'proj.{j}.fc1, proj.{j}.fc2': "retrieval head of exit matryoshka_layers[j]: fc2(leaky_relu(fc1(pooled))), "
                                  "then L2-normalised",
    'classifier.{j}.dense, classifier.{j}.out_proj': "clone classifier of exit matryoshka_layers[j] on <cls>: "
                                                     "out_proj(tanh(dense(h)))",
    'exit_embedding, mlm_head.*, icc_head': "pre-training heads shared by the exits (present with "
                                            "--pretrain_heads=true)",
    'inputs': "code: <sep>Represent this {language} code snippet for retrieval:<sep>{code}<cls>; "
              "query: <sep>Represent this code description for retrieving supporting snippets of code:<sep>{text}<cls>",
}
DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16}


def released_state(model, pretrain_heads=False):
    """{name: tensor} of `model` in the export's names; the vocabulary tables keep only the
    tokenizer's rows (config.vocab_size, as transformers expects; load_state pads them back)."""
    out = {}
    for k, v in model.state_dict().items():
        head = k.split('.')[0]
        if head in PRETRAIN_HEADS and not pretrain_heads:
            continue
        if k in VOCAB_KEYS:
            v = v[:model.config.vocab_size]
        out[('model.' if head in BACKBONE else '') + k] = v.contiguous()
    return out


def hf_config(cfg, tok, exit, dtype):
    """config.json: transformers' Starcoder2 fields, then what MoSE adds (model.config_from_hf reads it back)."""
    return {
        'architectures': ['Starcoder2Model'], 'model_type': 'starcoder2',
        'vocab_size': cfg.vocab_size, 'hidden_size': cfg.n_embd, 'intermediate_size': cfg.intermediate_size,
        'num_hidden_layers': cfg.n_layer, 'num_attention_heads': cfg.n_head, 'num_key_value_heads': cfg.n_kv_head,
        'max_position_embeddings': cfg.max_seq_len, 'rope_theta': cfg.rope_theta,
        'rope_parameters': {'rope_type': 'default', 'rope_theta': cfg.rope_theta},
        'use_bias': cfg.bias, 'norm_type': 'layer_norm', 'norm_epsilon': cfg.norm_eps, 'hidden_act': 'gelu_pytorch_tanh',
        'sliding_window': None, 'attention_dropout': cfg.attn_dropout, 'residual_dropout': cfg.resid_dropout,
        'embedding_dropout': cfg.embd_dropout, 'initializer_range': cfg.init_std, 'use_cache': False,
        'tie_word_embeddings': False, 'is_causal': False, 'torch_dtype': dtype,
        'pad_token_id': cfg.pad_id, 'bos_token_id': None, 'eos_token_id': None,
        'sep_token_id': cfg.sep_id, 'cls_token_id': tok.cls_id, 'mask_token_id': tok.mask_id,
        'matryoshka_layers': list(cfg.exit_layers), 'conditional_size': cfg.conditional_size,
        'pooling': cfg.pooling, 'center': cfg.center, 'final_norm': cfg.final_norm or cfg.exit_norm,
        'exit_norm': cfg.exit_norm, 'projection_heads': cfg.proj_heads,
        'n_classes': cfg.n_classes, 'mose_exit': exit, 'mose_tokenizer': tok.meta(), 'mose_layout': LAYOUT,
    }


def write_tokenizer(tok, out_dir):
    """The tokenizer's files with MoSE's tokens added to tokenizer.json at their ids, and a
    tokenizer_config.json for transformers' AutoTokenizer. Returns the names written ([] for cl100k_base)."""
    src = tok.source
    if not src:
        return []
    written = []
    for name in ('vocab.json', 'merges.txt'):
        with open(os.path.join(src, name), 'rb') as f, atomic_open(os.path.join(out_dir, name), 'wb') as g:
            shutil.copyfileobj(f, g)
        written.append(name)
    if os.path.isfile(os.path.join(src, 'tokenizer.json')):
        from tokenizers import AddedToken, Tokenizer as HFTokenizer
        hf = HFTokenizer.from_file(os.path.join(src, 'tokenizer.json'))
        ids = {'<sep>': tok.sep_id, '<cls>': tok.cls_id, '<mask>': tok.mask_id}
        if tok.decode([tok.pad_id]) != '<|endoftext|>':
            ids['<pad>'] = tok.pad_id
        for t, i in sorted(ids.items(), key=lambda kv: kv[1]):
            if hf.token_to_id(t) is None:
                hf.add_special_tokens([AddedToken(t, special=True, normalized=False)])
            if hf.token_to_id(t) != i:
                raise UserError(f"{src}/tokenizer.json: {t} gets id {hf.token_to_id(t)} there but {i} here")
        with atomic_open(os.path.join(out_dir, 'tokenizer.json'), 'w', encoding='utf-8') as f:
            f.write(hf.to_str())
        write_json(os.path.join(out_dir, 'tokenizer_config.json'), {
            'tokenizer_class': 'PreTrainedTokenizerFast', 'padding_side': 'left', 'truncation_side': 'right',
            'pad_token': '<pad>' if '<pad>' in ids else '<|endoftext|>', 'sep_token': '<sep>', 'cls_token': '<cls>',
            'mask_token': '<mask>', 'clean_up_tokenization_spaces': False})
        written += ['tokenizer.json', 'tokenizer_config.json']
    return written


def probe_texts():
    """Real inputs of several lengths for the round-trip check: chunks of this file and two queries."""
    with open(os.path.abspath(__file__), encoding='utf-8') as f:
        src = f.read()
    return [src[i:i + n] for i, n in ((0, 900), (1500, 300), (3000, 2500), (6000, 60))], \
        ['export a model at one exit', 'the tensor names of the projection heads']


@torch.no_grad()
def round_trip(small, out_dir, tok, max_len=256):
    """Largest |difference| of the export read back against `small`: {'from_pretrained': embeddings at
    every exit, 'transformers': hidden states at every exit (None when transformers is absent)}."""
    loaded = MoSE.from_pretrained(out_dir, dtype=next(small.parameters()).dtype, verbose=False).eval()
    small, max_len = small.eval(), min(max_len, small.config.max_seq_len)
    codes, queries = probe_texts()
    err = {'from_pretrained': 0.0, 'transformers': None}
    for e in small.config.exit_layers:
        for texts, kind in ((codes, 'code'), (queries, 'query')):
            a, b = (encode_texts(m, tok, texts, e, kind, 'python', max_len=max_len) for m in (small, loaded))
            err['from_pretrained'] = max(err['from_pretrained'], float(abs(a - b).max()))
    try:
        import transformers
    except ImportError:
        return err
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.AutoModel.from_pretrained(out_dir, dtype=next(small.parameters()).dtype).eval()
    if not hf.config.final_norm:
        hf.norm = torch.nn.Identity()  # the exit is the raw output of its block
    seqs = [tok.code_input(t, 'python', max_len) for t in codes]
    idx = left_pad([np.asarray(s) for s in seqs], tok.pad_id)           # (B, T)
    mask = idx != tok.pad_id                                              # (B, T)
    ref = hf(input_ids=idx, attention_mask=mask.long(), output_hidden_states=True).hidden_states
    ours, n = small(idx), small.config.n_layer
    ref = {e: hf.norm(ref[e]) if small.config.exit_norm and e < n else ref[e] for e in small.config.exit_layers}
    err['transformers'] = max(float((ours[e] - ref[e])[mask].abs().max()) for e in small.config.exit_layers)
    return err


def size_table(model):
    """Parameters and weight-file sizes of an export at each exit (pre-training heads left out)."""
    cfg, lines = model.config, ["exit  blocks  backbone params  head params   float32  bfloat16"]
    per_head = sum(p.numel() for p in model.proj[0].parameters()) if model.proj is not None else 0
    per_head += sum(p.numel() for p in model.classifier[0].parameters()) if model.classifier is not None else 0
    for j, e in enumerate(cfg.exit_layers):
        n = model.num_params(e) - (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd  # the rows written
        h = per_head * (j + 1)
        lines.append(f"{e:4d}  {e:6d}  {n:15,d}  {h:11,d}  {4 * (n + h) / 1e6:6.1f}MB  {2 * (n + h) / 1e6:6.1f}MB")
    return '\n'.join(lines)


if __name__ == '__main__':
    init_from = 'out/finetune-retrieval'  # checkpoint file, a training out_dir (its newest checkpoint) or a
                                          # released / exported directory (config.json)
    exit = 0                              # the exit to export; 0 = the deepest
    out_dir = ''                          # '' = mose-exit{exit}
    tokenizer = ''                        # '' = the one the checkpoint records
    dtype = 'float32'                     # float32 or bfloat16 (the released checkpoints' torch_dtype)
    pretrain_heads = False                # also write the MLM / ICC heads and the exit embedding (unused by
                                          # encode; a further pre-training needs them)
    check = True                          # read the export back and print the round-trip errors
    # -------------------------------------------------------------------------
    exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configurator.py')).read())  # -> config
    # -------------------------------------------------------------------------

    # load: the model, its tokenizer, the exit
    if dtype not in DTYPES:
        fail(f"dtype {dtype!r}: expected float32 or bfloat16")
    try:
        model, ckpt, where = load_model(init_from, 'python finetune.py')
        tok = resolve_tokenizer(init_from if os.path.isdir(init_from) else os.path.dirname(init_from), ckpt, tokenizer)
        exits = list(model.config.exit_layers)
        exit = exit or exits[-1]
        if exit not in exits:
            raise UserError(f"exit {exit} is not configured in {where}; valid exits: {exits}")
    except (OSError, ValueError, UserError) as e:
        fail(e)
    print0(f"model {where}: exits {exits}, pooling {model.config.pooling!r}, "
           f"projection heads {model.config.proj_heads}, tokenizer {tok.name}")
    print0(size_table(model))

    # truncate, then write: config.json goes first and comes back last, so that a stopped export
    # leaves a directory that no loader mistakes for a complete one
    out_dir = out_dir or f"mose-exit{exit}"
    make_out_dir(out_dir)
    small = model.truncated(exit).to(DTYPES[dtype]).eval()
    state = released_state(small, pretrain_heads)
    cfg_path = os.path.join(out_dir, 'config.json')
    if os.path.exists(cfg_path):
        os.remove(cfg_path)
    from safetensors.torch import save as safetensors_bytes
    with atomic_open(os.path.join(out_dir, 'model.safetensors'), 'wb') as f:
        f.write(safetensors_bytes(state, metadata={'format': 'pt'}))
    try:
        files = write_tokenizer(tok, out_dir)
    except (OSError, UserError) as e:
        fail(e)
    write_json(cfg_path, hf_config(small.config, tok, exit, dtype))
    n = sum(v.numel() for v in state.values())
    size = os.path.getsize(os.path.join(out_dir, 'model.safetensors'))
    print0(f"wrote {out_dir}: model.safetensors {size / 1e6:.1f} MB ({len(state)} tensors, {n:,} parameters, "
           f"{dtype}), config.json" + (f", {', '.join(files)}" if files else
                                       f" (tokenizer {tok.name}: no files, pass --tokenizer={tok.name} to load)"))

    # read it back
    if check:
        err = round_trip(small, out_dir, tok)
        print0(f"round trip at exits {list(small.config.exit_layers)}: MoSE.from_pretrained embeddings max |diff| "
               f"{err['from_pretrained']:.2e}; transformers Starcoder2Model hidden states max |diff| " +
               ("not checked (transformers is not installed)" if err['transformers'] is None
                else f"{err['transformers']:.2e}"))
        if dtype == 'float32' and (err['from_pretrained'] > 1e-5 or (err['transformers'] or 0) > 1e-4):
            sys.exit(f"error: {out_dir}: the export does not reproduce the model (see the round-trip line above)")
