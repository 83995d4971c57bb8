"""Padding-free training batches: each batch is one row of real tokens, and no example attends to another.

transformers provides the batch: `DataCollatorWithFlattening` concatenates the examples, restarts the position ids
at each and puts -100 on the first label of each, so no token learns to predict the next example. transformers
also keeps the examples apart from those position ids: without a cache (the Trainer trains with use_cache=False)
`masking_utils` turns restarting position ids into a mask for sdpa, eager and flex attention, and flash-attention
runs its varlen kernel on the example boundaries the collator passes (`cu_seq_lens_q` / `cu_seq_lens_k`). This
module adds only what the library lacks:

- `packed_sdpa_attention` (attention implementation `packed_sdpa`): torch's sdpa run once per example. The
  library's packed mask for sdpa is one dense mask over the whole flattened batch, so every token pays attention
  over all the batch's tokens (the two are compared in BENCHMARKS.md, run_seq2seq_ptuning.py section). And
  P-Tuning's prefix is a past_key_values cache, which turns the library's packing detection off: here every
  example sees it.
- `TokenBudgetBatchSampler`: batches filled up to `--max_tokens_per_batch` tokens instead of a fixed row count.
- `padding_free_problems`: the models and settings padding-free batches are proven for (tests/test_padding_free.py).
"""

import torch
from transformers import AttentionInterface, DataCollatorWithFlattening
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from zhtrain.errors import UserError

PACKED_SDPA = "packed_sdpa"
# model types whose decoder builds its mask from the position ids and hands every keyword argument down to the
# attention function (read in the transformers 5.23 source; each is checked by tests/test_padding_free.py)
PADDING_FREE_MODELS = ("llama", "mistral", "qwen2", "qwen3", "glm", "glm4", "gpt2")
OPEN_BATCHES = 8  # batches being filled at once: enough to fill them to ~99% from rows in random order


def packed_sdpa_mask(*args, attention_mask=None, **kwargs):
    """The mask for `packed_sdpa`: sdpa's when the batch has padding; none otherwise (the attention is causal
    within each example, and finds the examples itself)."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


_BOUNDS = {"tensor": None, "list": []}


def example_bounds(cu_seq_lens: torch.Tensor) -> list[int]:
    """`cu_seq_lens` as a list, read once per forward: every layer gets the same tensor, and reading a GPU
    tensor waits for the GPU."""
    if _BOUNDS["tensor"] is not cu_seq_lens:
        _BOUNDS["tensor"], _BOUNDS["list"] = cu_seq_lens, cu_seq_lens.tolist()
    return _BOUNDS["list"]


def packed_sdpa_attention(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """sdpa within each example of a flattened batch (`cu_seq_lens_q`: where the examples start), causal.

    Keys before the batch's own tokens (P-Tuning's prefix) are seen by every example. A padded batch (a mask is
    given) goes to transformers' sdpa unchanged.
    """
    offset = key.shape[2] - query.shape[2]
    if attention_mask is not None or (cu_seq_lens_q is None and offset == 0):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    settings = {name: kwargs[name] for name in ("dropout", "scaling") if name in kwargs}
    bounds = example_bounds(cu_seq_lens_q) if cu_seq_lens_q is not None else [0, query.shape[2]]
    lengths = [end - start for start, end in zip(bounds, bounds[1:])]
    # split, not sliced: the backward of a split is one concatenation, a slice's is a zero-filled full-size tensor
    own_keys, own_values = (key[:, :, offset:], value[:, :, offset:]) if offset else (key, value)
    pieces = zip(query.split(lengths, dim=2), own_keys.split(lengths, dim=2), own_values.split(lengths, dim=2))
    outputs = []
    for length, (queries, keys, values) in zip(lengths, pieces):
        mask, causal = None, True
        if offset:  # the prefix, then the example's own keys up to each query
            keys = torch.cat([key[:, :, :offset], keys], dim=2)
            values = torch.cat([value[:, :, :offset], values], dim=2)
            mask = torch.ones(length, offset + length, dtype=torch.bool, device=query.device)
            mask, causal = mask.tril(offset)[None, None], None
        out, _ = sdpa_attention_forward(module, queries, keys, values, mask, is_causal=causal, **settings)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


class PaddingFreeCollator:
    """Training rows -> one flattened row (transformers' DataCollatorWithFlattening, with the example boundaries
    the attention uses); evaluation rows (they carry a `row` number) -> `padded(rows)`, since generation needs
    left-padded prompts, and the eval loss is then the same as without --padding_free.

    >>> from zhtrain.data.collators import PromptResponseCollator
    >>> collate = PaddingFreeCollator(PromptResponseCollator(pad_token_id=0))
    >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "length": 3},
    ...                  {"input_ids": [8, 9], "labels": [-100, 9], "length": 2}])
    >>> batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["labels"].tolist()
    ([[5, 6, 7, 8, 9]], [[0, 1, 2, 0, 1]], [[-100, 6, 7, -100, 9]])
    >>> batch["cu_seq_lens_q"].tolist(), "attention_mask" in batch
    ([0, 3, 5], False)
    """

    def __init__(self, padded):
        self.padded = padded
        self.flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True)

    def __call__(self, features: list[dict]) -> dict:
        if "row" in features[0]:
            return self.padded(features)
        return self.flatten([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])


class TokenBudgetBatchSampler:
    """Batches of row indices of at most `max_tokens` tokens each (`lengths`: each row's tokens).

    The batches are made once: rows in an order shuffled with `seed`, each into the first of a few open batches
    with room for it. Their number is therefore known before training (the Trainer's steps per epoch and the LR
    schedule need it), and every epoch yields the same batches in a new order (`set_epoch`), as LLaMA-Factory's
    packed sequences do. It is not rank-aware: under DDP, accelerate gives each rank every N-th batch.

    >>> sampler = TokenBudgetBatchSampler([3, 5, 2, 4, 6, 1], max_tokens=8, seed=0)
    >>> sorted(sorted(b) for b in sampler), len(sampler)
    ([[0, 1], [2, 3, 5], [4]], 3)
    """

    def __init__(self, lengths: list[int], max_tokens: int, seed: int = 0):
        lengths = list(lengths)  # a datasets column reads the table at every index
        if max(lengths, default=0) > max_tokens:
            raise UserError(
                f"--max_tokens_per_batch {max_tokens} is smaller than the longest training example "
                f"({max(lengths)} tokens): raise it to at least {max(lengths)}."
            )
        self.seed, self.epoch, self.batches = seed, 0, []
        order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist()
        shortest, open_batches = min(lengths, default=0), []  # [tokens, indices] pairs
        for index in order:
            target = next((b for b in open_batches if b[0] + lengths[index] <= max_tokens), None)
            if target is None:
                if len(open_batches) == OPEN_BATCHES:
                    fullest = max(open_batches, key=lambda b: b[0])
                    open_batches.remove(fullest)
                    self.batches.append(fullest[1])
                target = [0, []]
                open_batches.append(target)
            target[0] += lengths[index]
            target[1].append(index)
            if target[0] + shortest > max_tokens:  # no row fits any more
                open_batches.remove(target)
                self.batches.append(target[1])
        self.batches += [b[1] for b in open_batches]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for i in torch.randperm(len(self.batches), generator=generator).tolist():
            yield self.batches[i]

    def __len__(self) -> int:
        return len(self.batches)


def padding_free_problems(config, longest_example: int) -> list[str]:
    """Why --padding_free cannot train this model (its config), or []: examples up to `longest_example` tokens."""
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False):
        return [
            f"--padding_free is for decoder-only models; {model_type} is an encoder-decoder: its source and answer "
            "are two sequences that cannot be concatenated into one row, and its encoder has no position ids to "
            "tell where an example starts. Drop --padding_free (batches are then padded to their longest row)."
        ]
    if model_type not in PADDING_FREE_MODELS:
        return [
            f"--padding_free is proven for the model types {', '.join(PADDING_FREE_MODELS)}, not {model_type}: its "
            "attention may not keep the examples of a flattened batch apart (Bloom's ALiBi, for instance, takes "
            "positions from the attention mask, not from position ids). Drop --padding_free."
        ]
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or ["sliding_attention"]
    if window and "sliding_attention" in layer_types and window < longest_example:
        return [
            f"--padding_free attends to the whole example, but this model's sliding window is {window} tokens and "
            f"examples may be {longest_example} (--max_source_length + --max_target_length): lower them to "
            f"{window} in total, or drop --padding_free."
        ]
    return []
