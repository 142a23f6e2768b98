"""S3 transfers for the worker: list, download, upload, delete, with gzip on the fly.

`ObjectStorage` is the interface; `LocalS3Server` (in `local_server`) runs a throwaway S3
endpoint for tests, benchmarks and `kelpie demo`.
"""

from kelpie.storage.errors import FileChangedError, ObjectDamaged, StorageError
from kelpie.storage.files import FileStamp, Uploaded, VerifiedDownload
from kelpie.storage.s3 import ObjectStorage, RemoteObject, TransferStats
from kelpie.storage.settings import S3Settings

__all__ = [
    "FileChangedError",
    "FileStamp",
    "ObjectDamaged",
    "ObjectStorage",
    "RemoteObject",
    "S3Settings",
    "StorageError",
    "TransferStats",
    "Uploaded",
    "VerifiedDownload",
]
