"""Unit tests for trainer_seq2seq.py: decoding generations, and the ZeRO-3 fetch-step hook around generate."""

import torch

import trainer_seq2seq
from trainer_seq2seq import decode_generations
from zhtrain.metrics import strip_tokenizer_spaces


def test_decoding_handles_minus_100_and_tokenizer_spaces(demo_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "tokenizer")
    row = tokenizer("红色连衣裙 new york", add_special_tokens=False)["input_ids"]
    texts = decode_generations(tokenizer, torch.tensor([row + [-100, -100], [-100] * (len(row) + 2)]))
    assert texts == ["红色连衣裙new york", ""]
    assert strip_tokenizer_spaces("这 款 ， 好 看 。") == "这款，好看。"


def test_zero3_generation_resets_deepspeed_fetch_steps_for_peft_models(monkeypatch):
    """peft's generate calls the base model directly, past DeepSpeed's reset hook on the wrapped peft model."""

    class Coordinator:
        resets = 0

        def reset_step(self):
            Coordinator.resets += 1

    class Offload:  # what engine.optimizer.parameter_offload offers
        def get_param_coordinator(self):
            return Coordinator()

    class Engine:
        optimizer = type("Stage3", (), {"parameter_offload": Offload()})()

    base = torch.nn.Linear(2, 2)
    peft_like = type("Peft", (), {"get_base_model": lambda self: base})()
    monkeypatch.setattr(trainer_seq2seq, "is_deepspeed_zero3_enabled", lambda: True)
    with trainer_seq2seq.zero3_step_per_forward(Engine(), peft_like):
        base(torch.ones(1, 2))
        base(torch.ones(1, 2))
    assert Coordinator.resets == 2  # one fetch step per forward (per generated token)
    base(torch.ones(1, 2))
    assert Coordinator.resets == 2  # the hook is gone afterwards
    with trainer_seq2seq.zero3_step_per_forward(Engine(), base):  # DeepSpeed's own hook covers a plain model
        base(torch.ones(1, 2))
    assert Coordinator.resets == 2
