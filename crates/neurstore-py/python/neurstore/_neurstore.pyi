"""Type stubs of the native module ``neurstore._neurstore`` (use the ``neurstore`` package)."""

import pathlib
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

__version__: str

class NeurStoreError(Exception):
    """Base class of every error raised by neurstore."""

class NotFound(NeurStoreError):
    """A model, file or store that does not exist."""

class InvalidInput(NeurStoreError):
    """Bad input: a malformed file or tensor, a bad name, a name already taken, a closed store."""

class Corrupt(NeurStoreError):
    """Stored data failed a check."""

class Locked(NeurStoreError):
    """Another writer holds the store."""

# (file, name, safetensors dtype, shape, bytes as a 1-D uint8 array, owned). ``owned`` arrays are
# fresh writable memory; the others are read-only views of stored bytes.
_Loaded = Tuple[str, str, str, List[int], npt.NDArray[np.uint8], bool]
# (name, safetensors dtype, shape, little-endian bytes as a contiguous 1-D uint8 array)
_Input = Tuple[str, str, List[int], npt.NDArray[np.uint8]]

class Store:
    def __init__(
        self, path: str, create: bool = True, writable: bool = True, wait: Optional[float] = None
    ) -> None: ...
    @property
    def path(self) -> pathlib.Path: ...
    @property
    def writable(self) -> bool: ...
    @property
    def holds_lock(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def close(self) -> None: ...
    def put_path(
        self,
        name: str,
        path: str,
        base: str,
        tolerance: Optional[float],
        rel_tolerance: Optional[float],
        metadata_json: Optional[str],
        dry_run: bool,
        max_chain_depth: int,
        force: bool = False,
        follow_symlinks: bool = False,
    ) -> Dict[str, Any]: ...
    def put_arrays(
        self,
        name: str,
        tensors: List[_Input],
        file_metadata: Optional[Dict[str, str]],
        base: str,
        tolerance: Optional[float],
        rel_tolerance: Optional[float],
        metadata_json: Optional[str],
        dry_run: bool,
        max_chain_depth: int,
        force: bool = False,
    ) -> Dict[str, Any]: ...
    def load(self, name: str) -> List[_Loaded]: ...
    def export(self, name: str, path: str, force: bool = False, format: Optional[str] = None) -> Dict[str, Any]: ...
    def list(self) -> List[Dict[str, Any]]: ...
    def info(self, name: str) -> Dict[str, Any]: ...
    def stats(self) -> Dict[str, Any]: ...
    def verify(self) -> Dict[str, Any]: ...
    def delete(self, name: str) -> Dict[str, Any]: ...
    def gc(self) -> Dict[str, Any]: ...
