"""Merge a LoRA adapter into its base model and save a plain model that needs no peft to load.

    python scripts/merge_lora.py --adapter outputs/adgen-lora --output_dir outputs/adgen-lora-merged
    python scripts/merge_lora.py --adapter outputs/adgen-lora --base_model Qwen/Qwen2.5-1.5B-Instruct --output_dir ...

The base model is read from the adapter's adapter_config.json unless --base_model is given. The result
loads with AutoModelForCausalLM / AutoModelForSeq2SeqLM.from_pretrained(output_dir), tokenizer (and its chat
template) included, with the adapter's generation config and its stop ids: `python serve.py`, `vllm serve` and
`transformers serve` answer from it as `python serve.py` answers from the adapter.
"""

import argparse
import json
import sys
from pathlib import Path


def merge_lora(adapter: str, output_dir: str, base_model: str | None = None, dtype: str = "auto") -> str:
    """Load base + adapter, fold the LoRA update into the weights, save model and tokenizer; returns output_dir."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GenerationConfig

    config_file = Path(adapter) / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"--adapter '{adapter}' has no adapter_config.json: give the output_dir of a LoRA run.")
    saved = json.loads(config_file.read_text(encoding="utf-8"))
    if saved.get("peft_type") != "LORA":
        raise ValueError(
            f"--adapter '{adapter}' holds {saved.get('peft_type')} weights; only LoRA folds into the base weights "
            "(P-Tuning prefixes stay a separate input: load them with --adapter_name_or_path)."
        )
    base = base_model or saved.get("base_model_name_or_path")
    if not base:
        raise ValueError("The adapter does not name its base model: pass --base_model.")
    config = AutoConfig.from_pretrained(base)
    model_class = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = PeftModel.from_pretrained(model_class.from_pretrained(base, dtype=dtype), adapter)
    merged = model.merge_and_unload()
    # run_seq2seq_ptuning.py writes the stop ids (eos and the template's end-of-turn tokens) next to the adapter:
    # the merged model keeps them, so it stops at the end of a turn in any server (vLLM, `transformers serve`)
    if (Path(adapter) / "generation_config.json").is_file():
        merged.generation_config = GenerationConfig.from_pretrained(adapter)
        merged.config.eos_token_id = merged.generation_config.eos_token_id
    merged.save_pretrained(output_dir)
    # the adapter dir holds the tokenizer as fine-tuned (special tokens and the chat template included)
    tokenizer_source = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(output_dir)
    return output_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="Directory of a LoRA run (its output_dir or a checkpoint).")
    parser.add_argument("--output_dir", required=True, help="Where to write the merged model.")
    parser.add_argument("--base_model", default=None, help="Base model; default: the one the adapter names.")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    try:
        print("Merged model written to", merge_lora(args.adapter, args.output_dir, args.base_model, args.dtype))
    except ValueError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
