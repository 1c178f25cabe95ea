#!/usr/bin/env python3
"""Independent reference check of sparse-tc's model path against Hugging Face transformers.

Run on the GPU machine (PyTorch + transformers + the pure-Python `gguf` package) after
`sparse-tc logits --model M.gguf --prompt ... --generate 32 --out DIR/ours` (and, for the
export check, `sparse-tc export --model M.gguf --out DIR/export`):

    python3 benches/reference/hf_check.py --gguf M.gguf --ours DIR/ours [--export DIR/export] \
        [--sparse DIR/sparse] --report DIR/hf_check.json

It checks, for every prompt in ours.json:
  1. tokenization: transformers' ids for the prompt equal ours;
  2. logits of every prompt position: max |ours - hf| / max |hf| (transformers in float32 on
     the dequantized GGUF weights, and in float16);
  3. the first N greedy tokens (N from ours.json) are identical, or part at a near-tie: a
     step whose top-2 logit gap (ours or transformers') is below twice the largest logit
     difference between the two (the most two logits can move relative to each other).
     transformers' greedy tokens come from a plain argmax loop: `generate` with
     `min_new_tokens` would forbid the end-of-turn token, which ours may pick;
  4. with --export: transformers loading our safetensors export gives the same logits as
     transformers loading the GGUF (the export holds the f16-rounded weights);
  5. with --sparse (ours for the same pruned weights stored sparse): logits against the dense
     run of the same pruned weights, and identical greedy tokens.
Prints a table and writes the numbers as JSON.
"""
import argparse, json, os, sys
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def load_ours(prefix):
    meta = json.load(open(prefix + ".json"))
    logits = np.fromfile(prefix + ".f32", dtype="<f4").reshape(-1, meta["vocab"])
    return meta, logits


def rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def hf_logits(model, ids, device):
    with torch.no_grad():
        out = model(torch.tensor([ids], device=device))
    return out.logits[0].float().cpu().numpy()


def hf_greedy(model, ids, n, device):
    """n greedy tokens by plain argmax (no logits processors) and each step's top-2 gap."""
    seq, toks, gaps = list(ids), [], []
    with torch.no_grad():
        for _ in range(n):
            top = torch.topk(model(torch.tensor([seq], device=device)).logits[0, -1].float(), 2)
            toks.append(int(top.indices[0]))
            gaps.append(float(top.values[0] - top.values[1]))
            seq.append(toks[-1])
    return toks, gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ours", required=True, help="prefix of sparse-tc logits output")
    ap.add_argument("--export")
    ap.add_argument("--sparse", help="prefix of sparse-tc logits output for the sparse model")
    ap.add_argument("--dense-pruned", help="prefix of sparse-tc logits for the pruned model stored dense")
    ap.add_argument("--report", required=True)
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    d, f = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    meta, ours = load_ours(a.ours)
    report = {"device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", "prompts": []}
    models = {}
    for dtype in (torch.float32, torch.float16):
        models[str(dtype)] = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=dtype).to(dev).eval()
    exp = None
    if a.export:
        exp = AutoModelForCausalLM.from_pretrained(a.export, torch_dtype=torch.float32).to(dev).eval()
    row = 0
    ok = True
    gen = meta.get("generated", [])
    for i, (prompt, ids) in enumerate(zip(meta["prompts"], meta["tokens"])):
        hf_ids = tok(prompt, add_special_tokens=True)["input_ids"]
        r = {"prompt": prompt, "tokens_equal": hf_ids == ids, "ours_ids": ids, "hf_ids": hf_ids}
        ok &= r["tokens_equal"]
        mine = ours[row:row + len(ids)]
        row += len(ids)
        h32 = hf_logits(models["torch.float32"], ids, dev)
        h16 = hf_logits(models["torch.float16"], ids, dev)
        r["rel_err_vs_hf_fp32"] = rel_err(mine, h32)
        r["rel_err_vs_hf_fp16"] = rel_err(mine, h16)
        r["rel_err_hf_fp16_vs_fp32"] = rel_err(h16, h32)
        if gen:
            hf_gen, hf_gaps = hf_greedy(models["torch.float32"], ids, len(gen[i]), dev)
            ours_gaps = meta.get("greedy_margins", [[]] * len(gen))[i]
            bound = 2 * float(np.max(np.abs(mine - h32)))
            r["greedy_equal"] = hf_gen == gen[i]
            r["ours_greedy"], r["hf_greedy"] = gen[i], hf_gen
            r["hf_text"] = tok.decode(hf_gen)
            r["tie_bound"] = bound
            if not r["greedy_equal"]:
                k = next(j for j, (x, y) in enumerate(zip(hf_gen, gen[i])) if x != y)
                ours_gap = ours_gaps[k] if k < len(ours_gaps) else float("nan")
                r["first_difference"] = {"step": k, "ours_gap": ours_gap, "hf_gap": hf_gaps[k]}
                r["near_tie"] = min(ours_gap, hf_gaps[k]) <= bound
            ok &= r["greedy_equal"] or r.get("near_tie", False)
        if exp is not None:
            he = hf_logits(exp, ids, dev)
            r["rel_err_export_vs_hf_gguf_fp32"] = rel_err(he, h32)
            r["rel_err_ours_vs_export"] = rel_err(mine, he)
        report["prompts"].append(r)
    if a.sparse and a.dense_pruned:
        ms, ls = load_ours(a.sparse)
        md, ld = load_ours(a.dense_pruned)
        report["sparse_vs_dense_rel_err"] = rel_err(ls, ld)
        report["sparse_vs_dense_greedy_equal"] = ms.get("generated") == md.get("generated")
        ok &= report["sparse_vs_dense_greedy_equal"]
    report["all_ok"] = bool(ok)
    json.dump(report, open(a.report, "w"), indent=1)
    for r in report["prompts"]:
        tie = r.get("first_difference")
        tie = f" (parts at step {tie['step']}: gap ours {tie['ours_gap']:.3f}, hf {tie['hf_gap']:.3f}, bound {r['tie_bound']:.3f})" if tie else ""
        print(f"{r['prompt'][:40]!r:44} tok={r['tokens_equal']} greedy={r.get('greedy_equal')}{tie} "
              f"err32={r['rel_err_vs_hf_fp32']:.2e} err16={r['rel_err_vs_hf_fp16']:.2e} "
              f"hf16vs32={r['rel_err_hf_fp16_vs_fp32']:.2e} export={r.get('rel_err_export_vs_hf_gguf_fp32', float('nan')):.2e}")
    if "sparse_vs_dense_rel_err" in report:
        print(f"sparse vs dense (pruned): err={report['sparse_vs_dense_rel_err']:.2e} greedy equal={report['sparse_vs_dense_greedy_equal']}")
    print("ALL OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
