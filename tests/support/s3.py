"""The `seaweed` session fixture: one real, credential-checking S3 server for the test run.

Import it into a conftest.py to use it: `from tests.support.s3 import seaweed`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from kelpie.storage.local_server import LocalS3Server


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3Server]:
    """A started `weed mini` on free ports; stopped (process group killed) after the session."""
    with LocalS3Server(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


def new_bucket(server: LocalS3Server) -> str:
    """Create a bucket with a unique name on `server` and return the name."""
    name = f"t-{uuid.uuid4().hex[:16]}"
    server.create_bucket(name)
    return name
