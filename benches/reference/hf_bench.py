"""Dense decode speed of Hugging Face transformers, the outside anchor of `sparse-tc bench-e2e`.

Random-weight LLaMA models of the presets' shapes in f16 on the GPU, a static KV cache
(`cache_implementation="static"`; transformers then compiles the decode step with
torch.compile unless --no-compile), greedy decoding of exactly GEN tokens after PROMPT random
prompt tokens. Each token's arrival is timestamped by a streamer (after a device
synchronisation), so one generate call gives the prefill (prompt to first token) and the
decode steps (first to last token) apart; the same call runs twice first as warm-up, so
compilation for its shapes is done before timing. Appends CSV rows:
device,model,batch,prompt_len,gen,compiled,prefill_ms,decode_ms_per_step,decode_tok_s.

    python3 benches/reference/hf_bench.py --models llama-2-7b,llama-2-13b --batch 1,8,16,32 --csv out.csv
"""

import argparse
import os
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

# The shapes of host/src/model/config.rs's presets.
PRESETS = {
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, vocab_size=32000),
    "llama-2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                        num_attention_heads=40, num_key_value_heads=40, vocab_size=32000),
}


class Stamps(BaseStreamer):
    """Time of each `put` (the prompt, then every new token), after the device finished."""

    def __init__(self):
        self.times = []

    def put(self, value):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def end(self):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="llama-2-7b,llama-2-13b")
    ap.add_argument("--batch", default="1,8,16,32")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--csv", default="hf_bench.csv")
    ap.add_argument("--no-compile", action="store_true", help="eager static-cache decode (no torch.compile)")
    a = ap.parse_args()
    device = torch.cuda.get_device_name(0)
    new = not os.path.exists(a.csv)
    with open(a.csv, "a") as out:
        if new:
            out.write("device,model,batch,prompt_len,gen,compiled,prefill_ms,decode_ms_per_step,decode_tok_s\n")
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

                def gen():
                    stamps = Stamps()
                    with torch.no_grad():
                        model.generate(ids, attention_mask=mask, max_new_tokens=a.gen, min_new_tokens=a.gen,
                                       do_sample=False, cache_implementation="static", pad_token_id=0,
                                       disable_compile=a.no_compile, streamer=stamps)
                    return stamps.times

                gen()  # warm-up: compiles for these shapes
                gen()
                t = gen()
                # t[0]: prompt put; t[1]: first token (prefill done); t[-1]: last token.
                prefill = t[1] - t[0]
                step = (t[-1] - t[1]) / (len(t) - 2)
                row = (f"{device},{name},{b},{a.prompt_len},{a.gen},{int(not a.no_compile)},"
                       f"{prefill * 1e3:.2f},{step * 1e3:.3f},{b / step:.1f}")
                print(row, flush=True)
                out.write(row + "\n")
                out.flush()
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
