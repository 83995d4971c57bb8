"""pytest set-up for the whole repository: the test tiers.

Every test without the `slow` or `multiprocess` marker is a `unit` test (`make test-fast` runs that tier).
"""

import pytest

TIERS = ("slow", "multiprocess")


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on the markers
def pytest_collection_modifyitems(items):
    for item in items:
        if not any(item.get_closest_marker(tier) for tier in TIERS):
            item.add_marker(pytest.mark.unit)
