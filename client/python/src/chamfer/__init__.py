"""chamfer: the Python client of the chamfer multi-vector retrieval server.

>>> from chamfer import Client
>>> c = Client("http://127.0.0.1:8080")
>>> c.create_collection("notes", dimension=128)
>>> c.upsert("notes", ["a", "b"], [tokens_a, tokens_b], [{"lang": "en"}, None])
>>> c.search("notes", query_tokens, k=5, with_metadata=True)

Token matrices are ``[n_tokens, dim]`` numpy arrays or torch tensors. :class:`Client` blocks,
:class:`AsyncClient` is awaited; both share every operation. ``chamfer.pylate.Index`` is a PyLate index backend.
"""

from .async_client import AsyncClient
from .client import Client
from .errors import (
    AlreadyExists,
    ChamferError,
    CollectionNotFound,
    DeadlineExceeded,
    DimensionMismatch,
    InvalidArgument,
    NotFound,
    Overloaded,
    ServerError,
    StorageFull,
    TooLarge,
    TransportError,
    Unauthenticated,
    Unavailable,
)
from ._knobs import CollectionParams, SearchKnobs
from .types import (
    CollectionInfo,
    CollectionStats,
    DeleteResult,
    Document,
    GetResult,
    Hit,
    ReadyStatus,
    RerankResult,
    SearchHits,
    UploadResult,
    UpsertResult,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "AsyncClient",
    "ChamferError",
    "Client",
    "CollectionInfo",
    "CollectionNotFound",
    "CollectionParams",
    "CollectionStats",
    "DeadlineExceeded",
    "DeleteResult",
    "DimensionMismatch",
    "Document",
    "GetResult",
    "Hit",
    "InvalidArgument",
    "NotFound",
    "Overloaded",
    "ReadyStatus",
    "RerankResult",
    "SearchHits",
    "SearchKnobs",
    "ServerError",
    "StorageFull",
    "TooLarge",
    "TransportError",
    "Unauthenticated",
    "Unavailable",
    "UploadResult",
    "UpsertResult",
]
