"""Unit tests for zhtrain/data/packing.py: documents encoded with eos, cut into exact blocks, the same with worker
processes and when streamed."""

import numpy as np
import pytest

from zhtrain.data import packing


def test_packer_cuts_exact_blocks_and_carries_the_tail():
    packer = packing.BlockPacker(4)
    assert packer.add(np.arange(8)).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert packer.tail == 0
    # fewer tokens than a block: no block and no crash, they wait for the next call
    assert packer.add(np.array([8, 9, 10])).shape == (0, 4)
    assert packer.add(np.array([11, 12])).tolist() == [[8, 9, 10, 11]]
    assert packer.tail == 1  # token 12: the final partial block, dropped at the end


def test_encoder_ends_every_document_with_eos(char_tokenizer):
    eos = char_tokenizer.eos_token_id
    encoder = packing.DocumentEncoder(char_tokenizer, None, eos)
    first = char_tokenizer("今天天气", add_special_tokens=False)["input_ids"]
    second = char_tokenizer("很好。", add_special_tokens=False)["input_ids"]
    assert encoder(["今天天气", "很好。"]).tolist() == [*first, eos, *second, eos]
    assert encoder([]).tolist() == []


@pytest.mark.slow
def test_workers_and_streaming_give_the_same_blocks_as_one_process(demo_dir, char_tokenizer, tmp_path):
    """Packing is deterministic: 2 worker processes, and the streaming packer, reproduce the 1-process blocks."""
    files = [str(demo_dir / "data" / "clm" / "train.txt")]
    encoder = packing.DocumentEncoder(char_tokenizer, None, char_tokenizer.eos_token_id)
    recipe = packing.BlockRecipe(files, "train_file", "text", "utf-8", encoder, 64)
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        stats = packing.build_blocks(recipe, out, workers=workers)
        results[workers] = _read_blocks(out / "main.arrow")
        assert stats["main_blocks"] == len(results[workers]) > 100
        assert stats["main_dropped_tail_tokens"] < 64
        assert stats["main_tokens"] == stats["main_blocks"] * 64 + stats["main_dropped_tail_tokens"]
    np.testing.assert_array_equal(results[1], results[2])
    streamed = packing.StreamedBlocks(recipe)
    np.testing.assert_array_equal(np.array([row["input_ids"] for row in streamed]), results[1])
    # shuffled, and with the first 100 documents held out: the same tokens in another order
    shuffled = packing.StreamedBlocks(recipe, 100, 500, seed=1)
    shuffled = np.array([row["input_ids"] for row in shuffled])
    assert 0 < len(results[1]) - len(shuffled) < 100 * 60 / 64
    assert not np.array_equal(shuffled[:10], results[1][:10])
    assert (shuffled == char_tokenizer.eos_token_id).sum() >= (results[1] == char_tokenizer.eos_token_id).sum() - 101
    # the blocks are the whole corpus, encoded in one go, cut every 64 tokens: no document boundary is lost
    documents = (demo_dir / "data" / "clm" / "train.txt").read_text(encoding="utf-8").splitlines()
    everything = encoder(documents)
    np.testing.assert_array_equal(results[1].ravel(), everything[: results[1].size])


def _read_blocks(path) -> np.ndarray:
    import datasets

    return np.array(datasets.Dataset.from_file(str(path))["input_ids"])
