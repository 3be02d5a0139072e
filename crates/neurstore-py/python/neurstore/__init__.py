"""NeurStore: a storage engine for deep learning models, from numpy and PyTorch code.

A store is one directory. Models go in as dicts of numpy arrays or torch tensors, safetensors
files or Hugging Face style directories; each distinct tensor is stored once, new tensors are
kept as compressed deltas against similar stored ones (losslessly by default, or with every
weight within a tolerance), and a losslessly stored model comes back bit for bit::

    import numpy as np
    import neurstore

    with neurstore.open("models.neurstore") as store:
        store.put("tiny", {"w": np.ones((2, 3), dtype=np.float32)})
        w = store.get("tiny")["w"]      # read-only numpy array

Every error is a :class:`NeurStoreError`; the subclasses :class:`NotFound`,
:class:`InvalidInput`, :class:`Corrupt` and :class:`Locked` say which kind. The GIL is released
while the store reads, writes, compresses and decompresses, so threads run alongside.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np

from . import _dtypes, _torch
from ._neurstore import Corrupt, InvalidInput, Locked, NeurStoreError, NotFound
from ._neurstore import Store as _NativeStore
from ._neurstore import __version__

__all__ = [
    "Corrupt",
    "InvalidInput",
    "Locked",
    "NeurStoreError",
    "NotFound",
    "Store",
    "TensorDict",
    "open",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]


class TensorDict(Dict[str, Any]):
    """A dict of tensors by name (what :meth:`Store.get` returns), which also knows each
    tensor's stored element type and shape.

    ``dtypes`` maps names to safetensors dtype names ("F32", "BF16", ...); ``shapes`` maps
    names to shapes. They matter where an array is a raw view of the bytes rather than the real
    type: bfloat16 and float8 without ``ml_dtypes`` (unsigned integer views of the same shape),
    and the sub-byte floats F4, F6_E2M3 and F6_E3M2 (their packed bytes, 1-D ``uint8``).
    :meth:`Store.put` reads them back, so ``put(get(...))`` is lossless for every dtype. To put
    raw bytes of such a type yourself, build one: ``TensorDict({"w": bits}, dtypes={"w": "BF16"})``.
    """

    def __init__(
        self,
        tensors: Optional[Mapping[str, Any]] = None,
        *,
        dtypes: Optional[Mapping[str, str]] = None,
        shapes: Optional[Mapping[str, Iterable[int]]] = None,
    ) -> None:
        super().__init__(tensors or {})
        self.dtypes: Dict[str, str] = dict(dtypes or {})
        self.shapes: Dict[str, Tuple[int, ...]] = {k: tuple(v) for k, v in (shapes or {}).items()}


class Store:
    """An open store. Use :func:`open` to get one.

    Reads take no lock and may run beside other processes' reads and one writer. A store
    opened with ``writable=True`` takes the store's writer lock at its first write (``put``,
    ``delete``, ``gc``) and holds it until :meth:`close` (or the end of a ``with`` block), so
    another process cannot write meanwhile; that process gets :class:`Locked`, naming the
    holder. A store object may be shared by any number of threads.
    """

    def __init__(
        self,
        path: PathLike,
        *,
        create: bool = True,
        writable: bool = True,
        wait: Union[None, bool, float] = None,
    ) -> None:
        self._native = _NativeStore(os.fspath(path), create, writable, _wait_arg(wait))

    # -- lifetime -------------------------------------------------------------------------

    @property
    def path(self) -> Union[pathlib.Path, str]:
        """The store's directory, or for a store in PostgreSQL its URL (a ``str``, without the
        password)."""
        return self._native.path

    @property
    def writable(self) -> bool:
        """True when the store was opened for writing."""
        return self._native.writable

    @property
    def holds_lock(self) -> bool:
        """True while this store holds the writer lock (from its first write until closed)."""
        return self._native.holds_lock

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._native.closed

    def close(self) -> None:
        """Releases the store and its writer lock. Arrays already returned stay valid."""
        self._native.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("writable" if self.writable else "read-only")
        return f"<neurstore.Store {str(self.path)!r} ({state})>"

    # -- writing --------------------------------------------------------------------------

    def put(
        self,
        name: str,
        tensors: Union[Mapping[str, Any], PathLike],
        *,
        base: str = "auto",
        tolerance: Optional[float] = None,
        rel_tolerance: Optional[float] = None,
        metadata: Optional[Mapping[str, Any]] = None,
        dry_run: bool = False,
        max_chain_depth: int = 2,
        file_metadata: Optional[Mapping[str, str]] = None,
        force: bool = False,
        follow_symlinks: bool = False,
    ) -> Dict[str, Any]:
        """Stores a model as ``name`` and returns a report of how (a dict).

        ``tensors`` is a dict of numpy arrays or torch tensors by name (a ``state_dict()``
        works; tensors on a GPU are copied to the host), or the path of a safetensors file or
        of a Hugging Face style model directory. A dict is stored as one safetensors file
        ``model.safetensors``, tensors in the dict's order.

        Args:
            base: ``"auto"`` (search the store for similar tensors to store deltas against),
                ``"none"`` (store every tensor standalone), or a model name (pair tensors with
                that model's tensors of the same name first).
            tolerance: keep every float weight within this absolute error (lossy, smaller).
            rel_tolerance: keep every float weight within this fraction of its tensor's RMS.
            metadata: JSON-serialisable dict recorded with the model (see :meth:`info`).
            dry_run: plan and report, write nothing.
            max_chain_depth: how many deltas a read may have to apply.
            file_metadata: for a dict, the ``__metadata__`` (str to str) of the safetensors
                file it is stored as, which :meth:`export` writes back; e.g.
                ``{"format": "pt"}``, which transformers expects.
            force: accept a ``tolerance`` at or above a tensor's largest magnitude (that
                tensor is then stored as a constant); refused otherwise.
            follow_symlinks: for a model directory, follow symbolic links that point outside
                it. By default only links that stay inside it (or a Hugging Face cache
                snapshot's links into its ``blobs/``) are followed; others are refused.

        ``tolerance`` must be finite and positive, ``rel_tolerance`` between 0 and 1
        (exclusive); the rules are the command line's.

        The report has ``raw_bytes``, ``stored_bytes_added``, ``ratio``,
        ``deduplicated_objects``, ``delta_tensors``, ``max_error`` and per-tensor details in
        ``tensor_reports``. Arrays must not be modified by another thread during the call.
        """
        if not isinstance(name, str):
            raise InvalidInput(f"model name must be a str, not {type(name).__name__}")
        if tolerance is not None and rel_tolerance is not None:
            raise InvalidInput("give tolerance or rel_tolerance, not both")
        force = bool(force)
        options = (
            _base_arg(base),
            _float_arg("tolerance", tolerance),
            _float_arg("rel_tolerance", rel_tolerance),
            _metadata_arg(metadata),
            bool(dry_run),
            _int_arg("max_chain_depth", max_chain_depth),
        )
        if isinstance(tensors, (str, os.PathLike)):
            if file_metadata is not None:
                raise InvalidInput("file_metadata applies to a dict of tensors; a file keeps its own")
            return self._native.put_path(
                name, os.fspath(tensors), *options, force, bool(follow_symlinks)
            )
        if not isinstance(tensors, Mapping):
            raise InvalidInput(
                "tensors must be a dict of numpy arrays or torch tensors, or a path to a "
                f"safetensors file or model directory; got {type(tensors).__name__}"
            )
        if follow_symlinks:
            raise InvalidInput("follow_symlinks applies to a model directory, not a dict")
        items = _tensor_inputs(tensors)
        return self._native.put_arrays(
            name, items, _file_metadata_arg(file_metadata), *options, force
        )

    def delete(self, name: str) -> Dict[str, Any]:
        """Removes model ``name``. Tensors other models use stay; the space of the rest returns
        to the disk with :meth:`gc`. Returns ``{"name", "objects_freed"}``."""
        return self._native.delete(name)

    def gc(self) -> Dict[str, Any]:
        """Returns the space of deleted models to the file system. Arrays already returned by
        :meth:`get` stay valid. Returns the fields of the command line's ``gc --json``: pack
        byte counts before and after, ``reclaimed_bytes``, and what recovery did."""
        return self._native.gc()

    # -- reading --------------------------------------------------------------------------

    def get(self, name: str, *, file: Optional[str] = None) -> TensorDict:
        """Every tensor of model ``name`` as a :class:`TensorDict` of read-only numpy arrays.

        Tensors stored raw are zero-copy views of the store's (memory-mapped) files; the
        others are decoded into fresh memory. Arrays are read-only either way (``.copy()`` one
        to modify it) and stay valid after the store is closed or collected. bfloat16 and
        float8 use ``ml_dtypes`` when installed, else raw integer views (see
        :class:`TensorDict`). For a model directory whose files repeat a tensor name, pass
        ``file`` (a path inside the model) to choose one file.
        """
        out = TensorDict()
        for _file, key, dtype, shape, raw, _owned in self._tensors(name, file):
            out[key] = _as_numpy(dtype, shape, raw)
            out[key].flags.writeable = False
            out.dtypes[key] = dtype
            out.shapes[key] = tuple(shape)
        return out

    def get_torch(self, name: str, *, file: Optional[str] = None, device: Any = None) -> Dict[str, Any]:
        """Every tensor of model ``name`` as torch tensors (needs torch), on ``device`` if
        given. Tensors decoded for this call are wrapped without a copy; tensors stored raw are
        copied out of the store's files (torch has no read-only tensors). Sub-byte float types
        come back as their packed bytes (``torch.uint8``)."""
        _torch.require()
        out: Dict[str, Any] = {}
        for _file, key, dtype, shape, raw, owned in self._tensors(name, file):
            t = _torch.from_raw(dtype, tuple(shape), raw, owned, copy_shared=True)
            out[key] = t if device is None else t.to(device)
        return out

    def load_into(self, module: Any, name: str, *, strict: bool = True, file: Optional[str] = None) -> Any:
        """Loads model ``name`` into a ``torch.nn.Module`` with ``module.load_state_dict`` (which
        copies into the module's own parameters, on their device), reading stored bytes in
        place. Returns what ``load_state_dict`` returns (missing and unexpected keys)."""
        torch = _torch.require()
        state = {
            key: _torch.from_raw(dtype, tuple(shape), raw, owned, copy_shared=False)
            for _file, key, dtype, shape, raw, owned in self._tensors(name, file)
        }
        with torch.no_grad():
            return module.load_state_dict(state, strict=strict)

    def export(
        self, name: str, path: PathLike, *, force: bool = False, format: Optional[str] = None
    ) -> Dict[str, Any]:
        """Writes model ``name`` to ``path``: a file for a model put from a file (safetensors,
        ONNX, PyTorch checkpoint, GGUF) or a dict, a directory for a model put from a
        directory. A losslessly stored model is written back byte for byte. ``format``
        (``"safetensors"`` or ``"pt"``) converts the model's tensors to one file of that
        format; without it, a ``path`` ending in ``.safetensors``, ``.pt``, ``.pth`` or ``.bin``
        asks for that format unless the model already is one. A conversion that would lose
        information (an ONNX graph, GGUF metadata, ...) raises ``InvalidInput`` unless
        ``force``. The output appears atomically. An existing file is refused unless
        ``force``; an empty directory is filled; a non-empty one is refused."""
        return self._native.export(name, os.fspath(path), bool(force), format)

    def list(self) -> List[Dict[str, Any]]:
        """All models, by name: ``name``, ``created_unix``, ``created`` (RFC 3339, UTC),
        ``source_format``, ``raw_bytes`` (every file) = ``tensor_bytes`` + ``other_bytes``."""
        return self._native.list()

    def info(self, name: str) -> Dict[str, Any]:
        """Details of model ``name``: mode, base model, metadata, raw and stored bytes, files,
        and per tensor its dtype, shape, codec, base, bits per element and max error."""
        return self._native.info(name)

    def stats(self) -> Dict[str, Any]:
        """Store-wide figures: models, tensors, unique tensors, raw and stored bytes, ratio,
        reclaimable bytes, and objects by kind and codec."""
        return self._native.stats()

    def verify(self) -> Dict[str, Any]:
        """Reads, checksums, decodes and re-keys every stored object and checks every model's
        headers. Returns counts and ``problems``, a list that is empty when the store is
        sound."""
        return self._native.verify()

    def _tensors(self, name: str, file: Optional[str]) -> List[Tuple[str, str, str, List[int], np.ndarray, bool]]:
        loaded = self._native.load(name)
        if file is not None:
            files = sorted({t[0] for t in loaded})
            loaded = [t for t in loaded if t[0] == file]
            if not loaded:
                raise NotFound(f"model {name!r} has no tensors in file {file!r}; its files with tensors: {files}")
        seen: Dict[str, str] = {}
        for t in loaded:
            if t[1] in seen:
                raise InvalidInput(
                    f"model {name!r}: tensor {t[1]!r} is in both {seen[t[1]]!r} and {t[0]!r}; "
                    "pass file= to choose one"
                )
            seen[t[1]] = t[0]
        return loaded


def open(
    path: PathLike,
    *,
    create: bool = True,
    writable: Optional[bool] = None,
    read_only: Optional[bool] = None,
    wait: Union[None, bool, float] = None,
) -> Store:
    """Opens the store at ``path``, also usable as a context manager.

    With ``create`` (the default) a missing store is created (in a new or empty directory).
    By default the store can be changed: the writer lock is taken at the first write and held
    until :meth:`Store.close`. ``read_only=True`` (or its older spelling ``writable=False``)
    opens it for reading only: that works on a store this user can read but not write;
    nothing is created, locked or migrated, and a store whose catalog needs an upgrade says
    to run ``neurstore upgrade``.

    ``wait`` is how long the first write waits for another process's writer lock: ``None``
    (the default) fails at once with :class:`Locked` naming the holder, ``True`` waits as long
    as it takes, a number waits that many seconds.
    """
    if read_only is not None and writable is not None and bool(read_only) == bool(writable):
        raise InvalidInput("read_only and writable disagree; give one of them")
    if read_only is not None:
        writable = not read_only
    elif writable is None:
        writable = True
    return Store(path, create=create, writable=bool(writable), wait=wait)


def _wait_arg(wait: Union[None, bool, float]) -> Optional[float]:
    if wait is None or wait is False:
        return None
    if wait is True:
        return float("inf")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool):
        seconds = float(wait)
        if seconds >= 0:
            return seconds
    raise InvalidInput(f"wait must be None, True or a number of seconds >= 0, not {wait!r}")


def _as_numpy(dtype: str, shape: List[int], raw: np.ndarray) -> np.ndarray:
    np_dtype = _dtypes.numpy_dtype(dtype)
    if np_dtype is None:
        return raw  # sub-byte floats: packed bytes
    return raw.view(np_dtype).reshape(shape)


def _tensor_inputs(tensors: Mapping[str, Any]) -> List[Tuple[str, str, List[int], np.ndarray]]:
    declared = getattr(tensors, "dtypes", None) or {}
    shapes = getattr(tensors, "shapes", None) or {}
    items = []
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise InvalidInput(f"tensor names must be str, not {type(key).__name__} ({key!r})")
        if _torch.is_tensor(value):
            natural, shape, raw = _torch.tensor_bytes(key, value)
            what = f"torch dtype {value.dtype}"
        elif isinstance(value, (np.ndarray, np.generic)):
            natural, shape, raw = _array_bytes(value)
            what = f"numpy dtype {value.dtype}"
        else:
            raise InvalidInput(
                f"tensor {key!r}: expected a numpy array or torch tensor, got {type(value).__name__}"
            )
        dtype = declared.get(key, natural)
        if dtype != natural:
            shape = _raw_shape(key, dtype, shapes.get(key, shape), raw)
        elif dtype is None:
            raise InvalidInput(
                f"tensor {key!r}: {what} has no safetensors equivalent; supported: {_dtypes.supported()}"
            )
        assert dtype is not None
        items.append((key, dtype, [int(d) for d in shape], raw))
    return items


def _array_bytes(value: Any) -> Tuple[Optional[str], Tuple[int, ...], np.ndarray]:
    array = np.asarray(value)
    natural = _dtypes.safetensors_name(array.dtype)
    if natural is not None:
        little = _dtypes.little_endian(array.dtype)
        if little != array.dtype:
            array = array.astype(little)
    shape = array.shape
    raw = np.ascontiguousarray(array).reshape(-1)
    if natural is None and raw.dtype.hasobject:
        return None, shape, raw
    return natural, shape, raw.view(np.uint8)


def _raw_shape(key: str, dtype: Any, shape: Iterable[int], raw: np.ndarray) -> Tuple[int, ...]:
    """Checks raw bytes given for a declared dtype (a raw view) and returns the tensor's shape."""
    if dtype not in _dtypes.BITS:
        raise InvalidInput(f"tensor {key!r}: unknown dtype {dtype!r}; use a safetensors name such as 'BF16'")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"tensor {key!r}: shape {list(shape)} has a negative dimension")
    if raw.dtype.hasobject:
        raise InvalidInput(f"tensor {key!r}: object arrays cannot hold {dtype} bytes")
    need = _dtypes.byte_len(dtype, shape)
    if need is None or need != raw.nbytes:
        raise InvalidInput(
            f"tensor {key!r}: {raw.nbytes} bytes given, {dtype} of shape {list(shape)} needs "
            f"{'a whole number of bytes' if need is None else need}"
        )
    return shape


def _base_arg(base: Any) -> str:
    if not isinstance(base, str) or not base:
        raise InvalidInput(f"base must be 'auto', 'none' or a model name, not {base!r}")
    return base


def _float_arg(what: str, value: Any) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{what} must be a number, not {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what} must be a number, not {value!r}") from None


def _int_arg(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value < 2**32:
        raise InvalidInput(f"{what} must be a positive integer, not {value!r}")
    return int(value)


def _metadata_arg(metadata: Optional[Mapping[str, Any]]) -> Optional[str]:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidInput("metadata must be a dict with str keys")
    try:
        return json.dumps(dict(metadata), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"metadata must be JSON-serialisable: {e}") from None


def _file_metadata_arg(metadata: Optional[Mapping[str, str]]) -> Optional[Dict[str, str]]:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise InvalidInput("file_metadata must be a dict of str to str")
    return dict(metadata)
