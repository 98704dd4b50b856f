"""Token matrices in and out: numpy arrays or torch tensors to the REST wire form, and back.

Wire forms (the server's REST contract):

* ``"json"``: an array of arrays of numbers, one per token (every server version).
* ``"packed"``: ``{"dtype": "f16"|"f32", "shape": [n_tokens, dim], "data": base64(little-endian, row-major)}``.

torch is never imported: a tensor is recognised by its type's module and turned into a numpy view
(``detach().cpu().numpy()`` shares memory for CPU tensors). A C-contiguous array already in the wire dtype is
base64-encoded from its own buffer, without a copy.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .errors import client_error

VectorsMode = Literal["packed", "json"]
Dtype = Literal["f16", "f32"]

#: Largest finite float16 value; larger magnitudes cannot be sent as f16.
F16_MAX = 65504.0

_WIRE: dict[str, np.dtype[Any]] = {"f16": np.dtype("<f2"), "f32": np.dtype("<f4")}


def _is_torch(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def as_matrix(x: Any, what: str = "tokens") -> np.ndarray:
    """``x`` (numpy array, torch tensor, or nested lists) as a 2-D numeric numpy array, without copying when
    ``x`` already is one."""
    if _is_torch(x):
        t = x.detach()
        if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            t = t.float()
        x = t.cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise client_error(f"{what} must be a 2-D [n_tokens, dim] array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise client_error(f"{what} must hold numbers, got dtype {arr.dtype}")
    return arr


def pack(arr: np.ndarray, dtype: Dtype) -> dict[str, Any]:
    """The packed wire object of a 2-D array. f16 is sent only when every value fits in float16; otherwise the
    matrix goes as f32, so that the server reports the bad value (``out_of_range`` or ``non_finite``) exactly as
    it would for any client."""
    if dtype == "f16" and arr.dtype != _WIRE["f16"] and arr.size:
        peak = np.max(np.abs(arr))
        if not peak <= F16_MAX:  # also true for NaN
            dtype = "f32"
    wire = np.ascontiguousarray(arr, dtype=_WIRE[dtype])
    return {
        "dtype": dtype,
        "shape": [int(wire.shape[0]), int(wire.shape[1])],
        "data": base64.b64encode(wire.data).decode("ascii"),
    }


def unpack(value: Any) -> np.ndarray:
    """A wire token matrix (either form) as a float32 ``[n_tokens, dim]`` array."""
    if isinstance(value, dict):
        dtype = str(value.get("dtype"))
        if dtype not in _WIRE:
            raise client_error(f"server sent tokens of unknown dtype {dtype!r}", code="client_bad_response")
        rows, dim = (int(s) for s in value["shape"])
        raw = base64.b64decode(value["data"])
        return np.frombuffer(raw, dtype=_WIRE[dtype]).reshape(rows, dim).astype(np.float32)
    arr = np.asarray(value, dtype=np.float32)
    return arr.reshape(len(value), -1) if arr.ndim != 2 else arr


@dataclass(frozen=True)
class TokenCodec:
    """How one client sends token matrices: ``vectors`` picks the wire form, ``dtype`` the packed precision."""

    vectors: VectorsMode = "packed"
    dtype: Dtype = "f16"

    def __post_init__(self) -> None:
        if self.vectors not in ("packed", "json"):
            raise client_error(f"vectors must be 'packed' or 'json', got {self.vectors!r}")
        if self.dtype not in _WIRE:
            raise client_error(f"dtype must be 'f16' or 'f32', got {self.dtype!r}")

    @property
    def packed(self) -> bool:
        return self.vectors == "packed"

    def encode(self, x: Any, what: str = "tokens") -> Any:
        """The wire value of one token matrix."""
        arr = as_matrix(x, what)
        if self.packed:
            return pack(arr, self.dtype)
        return arr.tolist()
