"""pytest set-up for the whole repository: the test tiers, and what the docstring examples need.

Every test without the `slow` or `multiprocess` marker is a `unit` test: a plain `pytest` and `make test-fast` run
that tier, `make test` all three. The docstring examples of the top-level modules and scripts/*.py are collected as
doctests (pyproject.toml) and are unit tests too. The test fixtures are in tests/conftest.py.
"""

import os

import pytest

# Under pytest-xdist (`make test` runs 2 workers) the workers share the cores: each gets its share of threads,
# set here, before the doctest modules import torch. Two tiny-model trainings on one thread each beat one on
# two threads, and oversubscribed threads (2 workers x all cores each) made the suite slower than one process.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    THREADS = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

TIERS = ("slow", "multiprocess")
# --doctest-modules would import this file as a module named `conftest`, the name tests/conftest.py already has
collect_ignore = ["conftest.py"]


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(items):
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def doctest_models(tmp_path_factory) -> dict:
    """A character tokenizer and a 32 x 32 image processor, as the example of
    `zhtrain.data.collators.ImageTextCollator` uses."""
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    import demo_models  # imported here: collecting the tests must not need torch

    tokenizer = demo_models.char_tokenizer(tmp_path_factory.mktemp("doctest_tokenizer"), list("红色的圆形蓝背景"))
    return {"tokenizer": tokenizer, "image_processor": ViTImageProcessorPil(size={"height": 32, "width": 32})}


@pytest.fixture(autouse=True)
def doctest_files(request, doctest_namespace):
    """For doctests only: run in a temp dir holding the images the examples read, with their tokenizer and processor."""
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    from PIL import Image

    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.chdir(request.getfixturevalue("tmp_path"))
    Image.new("RGB", (300, 200), "red").save("red.jpg")
    Image.new("RGBA", (40, 60), (0, 0, 255, 128)).save("blue.png")
    for name, value in request.getfixturevalue("doctest_models").items():
        monkeypatch.setitem(doctest_namespace, name, value)
    yield
