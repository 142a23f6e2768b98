"""S3 transfers for the worker: list, download, upload, delete, with gzip on the fly.

`ObjectStorage` is the interface; `LocalS3Server` (in `local_server`) runs a throwaway S3
endpoint for tests, benchmarks and `kelpie demo`.
"""

from kelpie.storage.errors import StorageError
from kelpie.storage.s3 import ObjectStorage, RemoteObject, TransferStats
from kelpie.storage.settings import S3Settings

__all__ = ["ObjectStorage", "RemoteObject", "S3Settings", "StorageError", "TransferStats"]
