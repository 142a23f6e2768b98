"""A store call that fails is counted in `kelpie_store_errors_total` by operation; a refusal
the store makes on purpose (a taken name, a missing record) is an answer, not an error."""

from __future__ import annotations

import pytest

from kelpie.api.metrics import STORE_ERRORS, count_store_errors
from kelpie.store.protocol import AlreadyExists, NotFound, Store


class FailingStore:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def get_job(self, job_id: str, user_id: str | None) -> None:
        raise self.error


def errors_of(operation: str) -> float:
    for family in STORE_ERRORS.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels == {"operation": operation}:
                return sample.value
    return 0.0


@pytest.mark.parametrize("error", [OSError("connection refused"), TimeoutError()])
async def test_a_failing_store_call_is_counted(error: Exception) -> None:
    before = errors_of("get_job")
    store: Store = count_store_errors(FailingStore(error))  # type: ignore[arg-type]

    with pytest.raises(type(error)):
        await store.get_job("job", None)

    assert errors_of("get_job") == before + 1


@pytest.mark.parametrize("refusal", [AlreadyExists("taken"), NotFound("gone")])
async def test_a_refusal_is_not_an_error(refusal: Exception) -> None:
    before = errors_of("get_job")
    store: Store = count_store_errors(FailingStore(refusal))  # type: ignore[arg-type]

    with pytest.raises(type(refusal)):
        await store.get_job("job", None)

    assert errors_of("get_job") == before
