#!/usr/bin/env python3
"""Reference token ids from Hugging Face transformers for a GGUF model's tokenizer.

Prints one JSON object per line, {"source", "text", "ids"}, for each prompt:

  source "transformers-gguf": AutoTokenizer.from_pretrained(dir, gguf_file=name), i.e.
      what transformers builds from the GGUF metadata;
  source "transformers-gguf+digits" (only for tokenizer.ggml.pre = "smollm" and friends):
      the same vocabulary with SmolLM2's own pre-tokenizer (Digits(individual_digits) then
      ByteLevel), as in the model's tokenizer.json and llama.cpp. transformers' GGUF loader
      has no "smollm" entry and splits with plain GPT-2 rules; the two differ only where
      whitespace precedes a digit ("x  1").
  source "chat-template": the prompt rendered by apply_chat_template for one user message
      (add_generation_prompt=True), with its ids.

Compare with sparse_tc:  cargo run --release --example tokenize -- MODEL.gguf > rust.jsonl
                         python3 benches/reference/hf_tokenize.py MODEL.gguf > hf.jsonl
(both print the default prompts below; diff the "transformers-gguf+digits" / "sparse_tc" lines).

Needs: transformers, tokenizers, torch (transformers' GGUF reader imports it) and the `gguf`
package (pure Python; on a machine without network, carry its wheel:
`python3 -m pip download --no-deps gguf -d .whl` here, `pip install --no-index .whl/gguf-*.whl`
there). Loading reads only metadata; a GGUF with the tensors stripped works the same.
"""
import argparse
import json
import os
import sys

DEFAULT_PROMPTS = [
    "The capital of France is",
    "Hello, world!",
    "In 2024, 12 apples cost $3.50.",
    "x  1",
    "  leading spaces and trailing  ",
    "naïve café – “quotes” 😀👍🏽 中文 日本語",
    "<|im_start|>user\nHi<|im_end|>\n",
    "def f(x):\n\treturn x**2  # square\n",
    "3.14159",
    "a\r\nb\n\n\nc",
]

# tokenizer.ggml.pre values whose original tokenizers split every digit first (llama.cpp's
# LLAMA_VOCAB_PRE_TYPE_{STARCODER,REFACT,COMMAND_R,SMOLLM,CODESHELL,EXAONE,MINERVA}).
DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".cache", "models",
                           "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("gguf", nargs="?", default=os.environ.get("SPARSE_TC_SMOLLM2", default))
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable); default: built-in list")
    ap.add_argument("--chat", default="What is the capital of France?", help="user message for the chat template")
    args = ap.parse_args()

    from transformers import AutoTokenizer
    import transformers

    path = os.path.abspath(args.gguf)
    tok = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    prompts = args.prompt or DEFAULT_PROMPTS
    print(json.dumps({"source": "info", "transformers": transformers.__version__,
                      "class": type(tok).__name__, "bos": tok.bos_token_id, "eos": tok.eos_token_id,
                      "vocab": len(tok)}, ensure_ascii=False))
    for p in prompts:
        ids = tok(p, add_special_tokens=False)["input_ids"]
        print(json.dumps({"source": "transformers-gguf", "text": p, "ids": ids}, ensure_ascii=False))

    from gguf import GGUFReader
    field = GGUFReader(path).fields.get("tokenizer.ggml.pre")
    pre = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    if pre in DIGIT_SPLIT_PRE:
        from tokenizers import Tokenizer, pre_tokenizers
        orig = Tokenizer.from_str(tok.backend_tokenizer.to_str())
        orig.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
        for p in prompts:
            ids = orig.encode(p, add_special_tokens=False).ids
            print(json.dumps({"source": "transformers-gguf+digits", "text": p, "ids": ids}, ensure_ascii=False))

    if tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": args.chat}], add_generation_prompt=True,
                                       tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        print(json.dumps({"source": "chat-template", "text": text, "ids": ids}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
