from __future__ import annotations

import os

import pytest

pytest_plugins = ["tests.support.api_fixtures", "tests.support.s3"]

# The two runs of the property-based API test take ~100 s each: started last, they alone
# decided when the suite ended.
LONGEST_FIRST = ("tests/integration/test_api_schemathesis.py",)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the tests so that the parallel test processes finish together.

    xdist's work-stealing scheduler (`--dist worksteal` in pyproject) hands each process one
    contiguous share of this list, then moves queued tests from a busy process to an idle one.
    Sorted longest first as they are, one share would take every slow test (that process ran
    them one after another for minutes while the others idled, however many processes there
    were). So the sorted list is dealt out like cards, one hand per process: each share
    starts with its part of the longest tests. The order within each kind is kept (random,
    when shuffled)."""

    def kind(item: pytest.Item) -> int:
        if item.nodeid.startswith(LONGEST_FIRST):
            return 0
        return 1 if item.get_closest_marker("slow") else 2

    items.sort(key=kind)
    hands = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if hands > 1:
        items[:] = [item for hand in range(hands) for item in items[hand::hands]]
