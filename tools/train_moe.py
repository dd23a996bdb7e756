#!/usr/bin/env python3
"""Train the small Mixtral-architecture MoE committed as models/default/.

Data: the World English Bible (public domain, modern English), as the Debian
package sword-text-web ships it, read out with diatheke (Debian diatheke):

    apt-get install -y --no-install-recommends sword-text-web diatheke

The text is split into chapters; every HELDOUT_EVERY-th chapter (a fixed
rule, no randomness) is held out and never trained on. Each chapter is one
document: tokenized with the repository's Mistral tokenizer (models/tokenizer.json,
BOS first), and the training documents are concatenated into one stream from
which fixed-length windows are drawn with a generator seeded by (seed, step),
so a resumed run draws the same batches as an uninterrupted one.

The model is transformers' MixtralForCausalLM trained in float32 with AdamW
and the load-balancing auxiliary loss (output_router_logits,
router_aux_loss_coef), then written in BF16 with its tokenizer files. The run
is recorded in train_log.json (data source and hash, hyperparameters, the loss
curve, held-out perplexity, per-layer expert load on the held-out text) and
TRAINING.md beside the model.

    nice -n 5 python3 tools/train_moe.py --measure 3                         # tokens/s only
    nice -n 5 python3 tools/train_moe.py --steps 70 --out models/default     # what was committed
    nice -n 5 python3 tools/train_moe.py --steps 70 --resume --out ...       # after a crash

The output layer is tied to the embedding and computed only over the tokens the
training text uses (see active_head_loss: exact, not an approximation).

Needs torch, transformers, tokenizers, safetensors (PyPI).
"""

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import time

import torch
import transformers
from tokenizers import Tokenizer
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SWORD_MODULE = "engWEB2015eb"
HELDOUT_EVERY = 20  # chapter i is held out when i % 20 == 7
HELDOUT_PHASE = 7
VERSE = re.compile(r"^(.+?) (\d+):(\d+): (.*)$")
GLOSSARY = "The following words used in the World English Bible"

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def read_chapters():
    """[(name, text)] in canonical order, from the Debian SWORD module."""
    try:
        raw = subprocess.run(["diatheke", "-b", SWORD_MODULE, "-f", "plain", "-k", "Gen-Rev"],
                             check=True, capture_output=True).stdout.decode("utf-8")
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"train_moe.py: cannot read the World English Bible ({e}); "
                 "apt-get install -y --no-install-recommends sword-text-web diatheke")
    chapters, cur, verses = [], None, []
    for line in raw.splitlines():
        m = VERSE.match(line)
        if m:
            name = f"{m.group(1)} {m.group(2)}"
            if name != cur:
                if verses:
                    chapters.append((cur, verses))
                cur, verses = name, []
            verses.append(m.group(4))
        elif line.startswith(f"({SWORD_MODULE})"):
            continue
        elif verses:  # a verse continued on the next line (poetry)
            verses[-1] += " " + line
    if verses:
        chapters.append((cur, verses))
    out = []
    for name, vs in chapters:
        text = " ".join(vs)
        g = text.find(GLOSSARY)  # the module's glossary follows the last verse
        if g >= 0:
            text = text[:g]
        text = re.sub(r"\s+", " ", text).strip()
        if text:
            out.append((name, text))
    return raw, out


def load_data(tok):
    raw, chapters = read_chapters()
    train_docs, held_docs, held_names = [], [], []
    for i, (name, text) in enumerate(chapters):
        if i % HELDOUT_EVERY == HELDOUT_PHASE:
            held_docs.append(text)
            held_names.append(name)
        else:
            train_docs.append(text)
    enc = lambda docs: [tok.encode(d).ids for d in docs]  # BOS + tokens per document
    train = torch.tensor([t for ids in enc(train_docs) for t in ids], dtype=torch.long)
    held = torch.tensor([t for ids in enc(held_docs) for t in ids], dtype=torch.long)
    info = {
        "source": f"World English Bible, SWORD module {SWORD_MODULE} (Debian package sword-text-web), "
                  "read with `diatheke -b engWEB2015eb -f plain -k Gen-Rev`",
        "licence": "public domain",
        "raw_sha256": hashlib.sha256(raw.encode("utf-8")).hexdigest(),
        "chapters": len(chapters),
        "heldout_rule": f"chapter index i (0-based, canonical order) with i % {HELDOUT_EVERY} == {HELDOUT_PHASE}",
        "heldout_chapters": len(held_docs),
        "train_tokens": int(train.numel()),
        "heldout_tokens": int(held.numel()),
        "train_chars": sum(len(d) for d in train_docs),
    }
    return train, held, held_docs, held_names, info


def make_model(a):
    cfg = transformers.MixtralConfig(
        vocab_size=32000, hidden_size=a.hidden, intermediate_size=a.ff, num_hidden_layers=a.layers,
        num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, num_local_experts=a.experts,
        num_experts_per_tok=a.top_k, max_position_embeddings=2048, rope_theta=a.rope_theta,
        rms_norm_eps=1e-5, tie_word_embeddings=True, output_router_logits=True,
        router_aux_loss_coef=a.aux_coef, router_jitter_noise=0.0, bos_token_id=1, eos_token_id=2,
        initializer_range=0.02, attention_dropout=0.0, use_cache=False)
    return transformers.MixtralForCausalLM(cfg)


def batch_at(stream, step, a):
    g = torch.Generator().manual_seed(a.seed * 1_000_003 + step)
    starts = torch.randint(0, stream.numel() - a.seq - 1, (a.batch,), generator=g)
    x = torch.stack([stream[s:s + a.seq + 1] for s in starts.tolist()])
    return x[:, :-1], x[:, 1:]


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = (step - a.warmup) / max(1, a.steps - a.warmup)
    return a.lr * (a.min_lr_frac + (1 - a.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))


def active_head_loss(model, h, y, active, remap):
    """Exact cross-entropy of the full 32000-way softmax when the embedding
    rows of the tokens outside `active` are zero (they are initialised to zero
    and, never being an input nor in this head, never move): those logits are
    exactly 0, so they enter the normaliser as log(n_inactive) and need no
    product. This cuts the tied head (the largest product) to the vocabulary
    the text uses. h: [B, T, H]; y: [B, T] token ids (all active)."""
    w = model.model.embed_tokens.weight[active]                    # [A, H]
    lg = h.reshape(-1, h.shape[-1]) @ w.t()                        # [B*T, A]
    n_off = model.config.vocab_size - active.numel()
    if n_off:
        lg = torch.cat([lg, torch.full_like(lg[:, :1], math.log(n_off))], dim=1)
    return torch.nn.functional.cross_entropy(lg, remap[y.reshape(-1)])


def step_loss(model, x, y, active, remap):
    out = model.model(input_ids=x, output_router_logits=True)
    lm = active_head_loss(model, out.last_hidden_state, y, active, remap)
    aux = load_balancing_loss_func(out.router_logits, model.config.num_local_experts,
                                   model.config.num_experts_per_tok)
    return lm, aux


@torch.no_grad()
def evaluate(model, held, seq, limit=None):
    """Mean NLL over non-overlapping windows of the held-out stream, and the
    per-layer count of tokens routed to each expert (top-k choices)."""
    model.eval()
    n = (held.numel() - 1) // seq
    if limit:
        n = min(n, limit)
    nll, cnt = 0.0, 0
    cfg = model.config
    load = torch.zeros(cfg.num_hidden_layers, cfg.num_local_experts, dtype=torch.long)
    for i in range(0, n, 8):
        idx = range(i, min(n, i + 8))
        x = torch.stack([held[j * seq:j * seq + seq] for j in idx])
        y = torch.stack([held[j * seq + 1:j * seq + seq + 1] for j in idx])
        out = model(input_ids=x, output_router_logits=True)
        nll += torch.nn.functional.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]),
                                                 y.reshape(-1), reduction="sum").item()
        cnt += y.numel()
        for il, rl in enumerate(out.router_logits):
            top = rl.topk(cfg.num_experts_per_tok, dim=-1).indices.reshape(-1)
            load[il] += torch.bincount(top, minlength=cfg.num_local_experts)
    model.train()
    return nll / cnt, cnt, load


def load_stats(load):
    rows = []
    for il in range(load.shape[0]):
        c = load[il].double()
        p = c / c.sum()
        ent = -(p[p > 0] * p[p > 0].log()).sum().item() / math.log(len(p))
        rows.append({"layer": il, "fraction": [round(v, 4) for v in p.tolist()],
                     "max_over_mean": round((p.max() * len(p)).item(), 3), "normalised_entropy": round(ent, 4)})
    return rows


def save_checkpoint(path, model, opt, step, curve, evals, elapsed):
    tmp = path + ".partial"
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "curve": curve,
                "evals": evals, "elapsed": elapsed}, tmp)
    os.replace(tmp, path)


def write_model(model, out, tok_path):
    os.makedirs(out, exist_ok=True)
    m = model.to(torch.bfloat16)
    m.config.output_router_logits = False
    m.config.use_cache = True
    m.save_pretrained(out, safe_serialization=True)
    with open(tok_path, "rb") as f, open(os.path.join(out, "tokenizer.json"), "wb") as g:
        g.write(f.read())
    tc = {"tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
          "add_bos_token": True, "add_eos_token": False, "model_max_length": 2048, "legacy": False,
          "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE}
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(tc, f, indent=2)
        f.write("\n")


def write_report(out, rec):
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump(rec, f, indent=1)
        f.write("\n")
    r = rec
    lines = [
        "# Training record of this model (written by tools/train_moe.py)", "",
        f"- Data: {r['data']['source']}; {r['data']['licence']}. sha256 of the diatheke output: "
        f"`{r['data']['raw_sha256']}`.",
        f"- Split: {r['data']['chapters']} chapters; held out: {r['data']['heldout_rule']} "
        f"({r['data']['heldout_chapters']} chapters, {r['data']['heldout_tokens']} tokens); "
        f"trained on the other {r['data']['train_tokens']} tokens.",
        f"- Model: {json.dumps(r['model'])}; {r['params']} parameters (embeddings tied).",
        f"- Training: {json.dumps(r['train'])}.",
        f"- {r['steps_done']} steps, {r['tokens_seen']} tokens seen ({r['tokens_seen'] / r['data']['train_tokens']:.2f} "
        f"epochs), {r['wall_s'] / 60:.1f} min wall clock on {r['threads']} CPU threads ({r['tokens_per_s']:.0f} tokens/s), "
        f"torch {r['torch']}, transformers {r['transformers']}.",
        f"- Held-out perplexity (float32 weights, windows of {r['train']['seq']} tokens, "
        f"{r['final']['heldout_scored_tokens']} tokens): **{r['final']['heldout_ppl_f32']:.3f}**; "
        f"with the BF16 weights as saved: **{r['final']['heldout_ppl_bf16']:.3f}**.",
        "", "## Loss curve (training loss: mean over the logged interval; held-out: mean NLL)", "",
        "| step | train loss | aux loss | lr | held-out NLL | held-out PPL |", "|---:|---:|---:|---:|---:|---:|"]
    ev = {e["step"]: e for e in r["evals"]}
    for c in r["curve"]:
        e = ev.get(c["step"])
        lines.append(f"| {c['step']} | {c['loss']:.4f} | {c['aux']:.4f} | {c['lr']:.2e} | "
                     + (f"{e['nll']:.4f} | {math.exp(e['nll']):.2f} |" if e else " | |"))
    lines += ["", "## Expert load on the held-out text (fraction of top-2 choices per expert)", "",
              "| layer | " + " | ".join(f"e{i}" for i in range(r["model"]["experts"])) + " | max/mean | entropy |",
              "|---:|" + "---:|" * (r["model"]["experts"] + 2)]
    for row in r["final"]["expert_load"]:
        lines.append(f"| {row['layer']} | " + " | ".join(f"{v:.3f}" for v in row["fraction"])
                     + f" | {row['max_over_mean']:.2f} | {row['normalised_entropy']:.3f} |")
    with open(os.path.join(out, "TRAINING.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(ROOT, "models", "default"))
    ap.add_argument("--work", default=os.path.join(ROOT, "build", "train"), help="checkpoints, held-out text")
    ap.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "tokenizer.json"))
    ap.add_argument("--steps", type=int, default=70)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--min-lr-frac", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--aux-coef", type=float, default=0.02)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--ff", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--ckpt-minutes", type=float, default=4.0)
    ap.add_argument("--measure", type=int, default=0, help="time this many steps, print tokens/s, write nothing")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--final-windows", type=int, default=32, help="held-out windows scored at the end")
    ap.add_argument("--deadline", default="", help="HH:MM UTC: stop early (and record it) if still training then")
    a = ap.parse_args()
    if a.deadline:
        hh, mm = map(int, a.deadline.split(":"))
        now = time.gmtime()
        a.deadline_ts = time.mktime(time.struct_time((now.tm_year, now.tm_mon, now.tm_mday, hh, mm, 0, 0, 0, 0))) \
            - time.timezone

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    os.makedirs(a.work, exist_ok=True)
    tok = Tokenizer.from_file(a.tokenizer)
    cache = os.path.join(a.work, "data.pt")
    if os.path.exists(cache):
        train, held, held_docs, held_names, data_info = torch.load(cache, weights_only=False)
    else:
        train, held, held_docs, held_names, data_info = load_data(tok)
        torch.save((train, held, held_docs, held_names, data_info), cache)
    log(f"data: {data_info}")
    with open(os.path.join(a.work, "heldout.txt"), "w") as f:
        f.write("\n".join(held_docs) + "\n")
    # The vocabulary the training text uses (plus the special tokens); every
    # other embedding row stays exactly zero (see active_head_loss).
    active = torch.unique(torch.cat([train, torch.tensor([0, 1, 2])]))
    remap = torch.full((32000,), -1, dtype=torch.long)
    remap[active] = torch.arange(active.numel())
    data_info["active_vocab"] = int(active.numel())
    model = make_model(a)
    with torch.no_grad():
        keep = torch.zeros(32000, dtype=torch.bool)
        keep[active] = True
        model.model.embed_tokens.weight[~keep] = 0.0
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params} parameters")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    ckpt = os.path.join(a.work, "checkpoint.pt")
    step, curve, evals, elapsed = 0, [], [], 0.0
    if a.resume and os.path.exists(ckpt):
        c = torch.load(ckpt, weights_only=False)
        model.load_state_dict(c["model"])
        opt.load_state_dict(c["opt"])
        step, curve, evals, elapsed = c["step"], c["curve"], c["evals"], c["elapsed"]
        log(f"resumed at step {step}")

    total = a.measure if a.measure else a.steps
    t0, last_ckpt = time.time() - elapsed, time.time()
    acc_l, acc_a, acc_n = 0.0, 0.0, 0
    stopped_by_deadline = False
    while step < total:
        if a.deadline and time.time() > a.deadline_ts:
            log(f"deadline reached at step {step}: stopping early (recorded)")
            stopped_by_deadline = True
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a)
        x, y = batch_at(train, step, a)
        ts = time.time()
        lm, aux = step_loss(model, x, y, active, remap)
        loss = lm + a.aux_coef * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        acc_l, acc_a, acc_n = acc_l + lm.item(), acc_a + aux.item(), acc_n + 1
        if a.measure:
            log(f"step {step}: loss {lm.item():.4f}, {a.batch * a.seq / (time.time() - ts):.0f} tokens/s")
            continue
        if step % a.log_every == 0 or step == total:
            curve.append({"step": step, "loss": acc_l / acc_n, "aux": acc_a / acc_n, "lr": lr_at(step - 1, a),
                          "elapsed_s": round(time.time() - t0, 1)})
            log(f"step {step}/{total}: loss {acc_l / acc_n:.4f} aux {acc_a / acc_n:.4f} "
                f"lr {lr_at(step - 1, a):.2e} {step * a.batch * a.seq / (time.time() - t0):.0f} tokens/s")
            acc_l, acc_a, acc_n = 0.0, 0.0, 0
        if step % a.eval_every == 0 or step == total:
            nll, _, load = evaluate(model, held, a.seq, limit=4)
            evals.append({"step": step, "nll": nll})
            log(f"step {step}: held-out (first 4 windows) NLL {nll:.4f} PPL {math.exp(nll):.2f}; "
                f"max/mean load per layer {[r['max_over_mean'] for r in load_stats(load)]}")
        if time.time() - last_ckpt > a.ckpt_minutes * 60 or step == total:
            save_checkpoint(ckpt, model, opt, step, curve, evals, time.time() - t0)
            last_ckpt = time.time()
    if a.measure:
        return
    wall = time.time() - t0
    nll, scored, load = evaluate(model, held, a.seq, limit=a.final_windows)
    log(f"final held-out NLL {nll:.4f} PPL {math.exp(nll):.3f} over {scored} tokens")
    write_model(model, a.out, a.tokenizer)
    bf = transformers.MixtralForCausalLM.from_pretrained(a.out, dtype=torch.float32)
    nll_bf, _, load_bf = evaluate(bf, held, a.seq, limit=a.final_windows)
    log(f"BF16 weights: held-out NLL {nll_bf:.4f} PPL {math.exp(nll_bf):.3f}")
    rec = {
        "script": "tools/train_moe.py", "argv": sys.argv[1:], "data": data_info,
        "model": {"arch": "MixtralForCausalLM", "vocab": 32000, "hidden": a.hidden, "ff": a.ff, "layers": a.layers,
                  "heads": a.heads, "kv_heads": a.kv_heads, "experts": a.experts, "top_k": a.top_k,
                  "rope_theta": a.rope_theta, "tied_embeddings": True},
        "params": n_params,
        "train": {"steps": a.steps, "batch": a.batch, "seq": a.seq, "lr": a.lr, "min_lr_frac": a.min_lr_frac,
                  "warmup": a.warmup, "weight_decay": a.weight_decay, "aux_coef": a.aux_coef, "seed": a.seed,
                  "optimizer": "AdamW(0.9, 0.95), grad clip 1.0, cosine schedule", "dtype": "float32"},
        "steps_done": step, "stopped_by_deadline": stopped_by_deadline, "tokens_seen": step * a.batch * a.seq, "wall_s": round(wall, 1),
        "tokens_per_s": step * a.batch * a.seq / wall, "threads": a.threads,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "curve": curve, "evals": evals,
        "final": {"heldout_nll_f32": nll, "heldout_ppl_f32": math.exp(nll), "heldout_scored_tokens": scored,
                  "heldout_nll_bf16": nll_bf, "heldout_ppl_bf16": math.exp(nll_bf),
                  "expert_load": load_stats(load_bf), "expert_load_counts": load_bf.tolist()},
        "heldout_chapters": held_names,
    }
    write_report(a.out, rec)
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
