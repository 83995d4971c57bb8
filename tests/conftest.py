"""Shared fixtures. Everything runs offline: tiny models and data are generated into temp dirs."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

# Never touch the network or the user's caches.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(autouse=True, scope="session")
def isolated_caches(tmp_path_factory):
    """Keep datasets' Arrow cache and the HF home inside the test's temp dir."""
    cache = tmp_path_factory.mktemp("hf_cache")
    old = {k: os.environ.get(k) for k in ("HF_HOME", "HF_DATASETS_CACHE")}
    os.environ["HF_HOME"] = str(cache)
    os.environ["HF_DATASETS_CACHE"] = str(cache / "datasets")
    import datasets

    datasets.config.HF_DATASETS_CACHE = Path(cache / "datasets")
    datasets.disable_progress_bars()
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def one_torch_thread():
    """Tiny models train faster on one torch thread, and far faster when other jobs share the cores.

    A test file takes it for all its tests with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """Full-size demo data and the tiny models, as `make demo` builds them (about a second)."""
    import make_demo_data

    out = tmp_path_factory.mktemp("demo")
    make_demo_data.main(["--output_dir", str(out)])
    return out


@pytest.fixture(scope="module")
def char_tokenizer(demo_dir):
    """The demo's BERT-style character tokenizer with the special tokens run_clm adds from scratch."""
    from transformers import AutoTokenizer

    import run_clm

    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "tokenizer-clm")
    run_clm.add_missing_special_tokens(tokenizer, from_scratch=True)
    return tokenizer


@pytest.fixture
def one_process_world(monkeypatch):
    """Parse a --deepspeed config in this process as a world of one (dry run: no DeepSpeed process group).

    accelerate still starts a one-process gloo group for it: close it and forget the DeepSpeed config after,
    or every later in-process test would run inside that distributed state.
    """
    import torch.distributed as dist
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    from zhtrain.launch import free_port

    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("DRY_RUN", "1")
    yield
    unset_hf_deepspeed_config()
    if dist.is_initialized():
        dist.destroy_process_group()
    AcceleratorState._reset_state(reset_partial_state=True)
