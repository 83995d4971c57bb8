"""Collators shared by the scripts. Each pads only to the longest sequence of its batch."""

import torch

LABEL_PAD = -100  # ignored by the loss


class PromptResponseCollator:
    """Pads prompt -> response features; knows each key's pad value and side.

    - `input_ids` / `labels` (teacher-forced, aligned): right-padded with pad id / -100, plus `attention_mask`.
    - `prompt_ids` (prompt only, for generation with a decoder-only model): LEFT-padded, so every prompt ends
      where generation starts, plus `prompt_attention_mask`.
    - `reference_ids` (the response alone, to score generations): right-padded with -100.
    `max_length` / `max_label_length` pad `input_ids` / `labels` of every batch to a fixed length instead
    (ChatGLM's static padding, --pad_to_max_length); the prompt-only keys are always padded dynamically.

    >>> collate = PromptResponseCollator(pad_token_id=0)
    >>> batch = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "prompt_ids": [5]},
    ...                  {"input_ids": [8, 9], "labels": [-100, 9], "prompt_ids": [8, 8]}])
    >>> batch["input_ids"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7], [8, 9, 0]], [[1, 1, 1], [1, 1, 0]])
    >>> batch["labels"].tolist()
    [[-100, 6, 7], [-100, 9, -100]]
    >>> batch["prompt_ids"].tolist(), batch["prompt_attention_mask"].tolist()
    ([[0, 5], [8, 8]], [[0, 1], [1, 1]])
    """

    def __init__(
        self,
        pad_token_id: int,
        pad_to_multiple_of: int | None = None,
        max_length: int | None = None,
        max_label_length: int | None = None,
    ):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of
        self.max_length, self.max_label_length = max_length, max_label_length

    def _pad(
        self, sequences: list[list[int]], value: int, left: bool = False, fixed: int | None = None
    ) -> torch.Tensor:
        length = max(max(len(s) for s in sequences), fixed or 0)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        padded = [
            [value] * (length - len(s)) + list(s) if left else list(s) + [value] * (length - len(s)) for s in sequences
        ]
        return torch.tensor(padded, dtype=torch.long)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = {}
        keys = features[0].keys()
        if "input_ids" in keys:
            ids = [f["input_ids"] for f in features]
            batch["input_ids"] = self._pad(ids, self.pad_token_id, fixed=self.max_length)
            batch["attention_mask"] = self._pad([[1] * len(i) for i in ids], 0, fixed=self.max_length)
        if "labels" in keys:
            batch["labels"] = self._pad([f["labels"] for f in features], LABEL_PAD, fixed=self.max_label_length)
        if "prompt_ids" in keys:
            batch["prompt_ids"] = self._pad([f["prompt_ids"] for f in features], self.pad_token_id, left=True)
            batch["prompt_attention_mask"] = self._pad([[1] * len(f["prompt_ids"]) for f in features], 0, left=True)
        if "reference_ids" in keys:
            batch["reference_ids"] = self._pad([f["reference_ids"] for f in features], LABEL_PAD)
        return batch
