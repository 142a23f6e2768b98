from __future__ import annotations

import pytest

pytest_plugins = ["tests.support.api_fixtures", "tests.support.s3"]

# The two runs of the property-based API test take ~100 s each: started last, they alone
# decided when the suite ended.
LONGEST_FIRST = ("tests/integration/test_api_schemathesis.py",)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the longest tests first, then the other slow ones, so the parallel test
    processes finish together; the order within each kind is kept (random, when shuffled)."""

    def kind(item: pytest.Item) -> int:
        if item.nodeid.startswith(LONGEST_FIRST):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=kind)
