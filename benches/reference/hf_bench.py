"""Dense decode speed of Hugging Face transformers, the outside anchor of `sparse-tc bench-e2e`.

Random-weight LLaMA models of the presets' shapes in f16 on the GPU, a static KV cache
(`cache_implementation="static"`, no torch.compile), greedy decoding of exactly GEN tokens
after PROMPT random prompt tokens. Decode time = time(GEN tokens) - time(1 token) (the
second includes the prefill), so the rows compare with bench-e2e's decode columns. Appends
CSV rows: device,model,batch,prompt_len,gen,prefill_ms,decode_ms_per_step,decode_tok_s.

    python3 benches/reference/hf_bench.py --models llama-2-7b,llama-2-13b --batch 1,8,16,32 --csv out.csv
"""

import argparse
import os
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

# The shapes of host/src/model/config.rs's presets.
PRESETS = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000),
}


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="llama-2-7b,llama-2-13b")
    ap.add_argument("--batch", default="1,8,16,32")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--csv", default="hf_bench.csv")
    a = ap.parse_args()
    device = torch.cuda.get_device_name(0)
    new = not os.path.exists(a.csv)
    with open(a.csv, "a") as out:
        if new:
            out.write("device,model,batch,prompt_len,gen,prefill_ms,decode_ms_per_step,decode_tok_s\n")
        for name in a.models.split(","):
            cfg = LlamaConfig(max_position_embeddings=4096, **PRESETS[name])
            torch.manual_seed(0)
            torch.set_default_dtype(torch.float16)
            with torch.device("cuda"):
                model = LlamaForCausalLM(cfg).eval()
            torch.set_default_dtype(torch.float32)
            for b in [int(x) for x in a.batch.split(",")]:
                ids = torch.randint(0, cfg.vocab_size, (b, a.prompt_len), device="cuda")
                mask = torch.ones_like(ids)

                def gen(n):
                    with torch.no_grad():
                        model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                       do_sample=False, cache_implementation="static", pad_token_id=0)

                gen(4)  # warm-up
                t1 = min(timed(lambda: gen(1)) for _ in range(2))
                tn = timed(lambda: gen(a.gen))
                step = (tn - t1) / (a.gen - 1)
                row = f"{device},{name},{b},{a.prompt_len},{a.gen},{t1 * 1e3:.2f},{step * 1e3:.3f},{b / step:.1f}"
                print(row, flush=True)
                out.write(row + "\n")
                out.flush()
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
