"""Results keyed by what they were computed from, so that nothing is computed twice.

Two front ends share one mechanism, a table of per-row results keyed by content:

- :class:`AttackCache`, the estimator's per-image store of attack results;
- :class:`ResultStore`, one folder for everything a study computes: per-image results
  (attacks, competitors' distances, crafted examples) and whole results (trained weights,
  training histories), each keyed by the data, weights and settings it came from.

Files are written under a temporary name and renamed once complete, and read back without
pickle: ``.npz`` with ``allow_pickle=False``, JSON, and ``torch.load(weights_only=True)``.
"""

import hashlib
import json
import os
import pickle
import secrets
import time
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import fields
from numbers import Integral
from pathlib import Path

import joblib
import numpy as np
import torch
from joblib import effective_n_jobs
from sklearn.base import BaseEstimator
from torch.utils.data import Dataset

from ._attack import AttackResult, ImageReader

#: The per-sample fields stored; traces are never cached.
_CACHED_FIELDS = [f.name for f in fields(AttackResult) if not f.name.endswith("_trace")]
#: Rows converted to float32 at once to compute their keys.
_ROWS_AT_A_TIME = 1024
#: Marks a file written by :meth:`AttackCache.save`, and its layout. Version 2 keys on the
#: module's buffers and plain attributes too; files of version 1 hold other keys.
_FORMAT = "resistclf.AttackCache/2"
#: Marks a per-row table of :class:`ResultStore`.
_ROWS_FORMAT = "resistclf.ResultStore.rows/1"
#: Marks a file of whole arrays of :class:`ResultStore`.
_ARRAYS_FORMAT = "resistclf.ResultStore.arrays/1"
#: Names a table's columns may not take: they name the file's own arrays.
_RESERVED = ("keys", "format")


class _RowTable:
    """Per-row results keyed by content: each key's row number, and columns of row values."""

    def __init__(self, format_):
        self.format, self.index, self.columns = format_, {}, {}

    def __len__(self):
        return len(self.index)

    def add(self, keys, values):
        """Append the rows ``values`` (name to array, one row per key) under ``keys``.

        A key already held keeps its row: another process sharing the store may have
        computed it too, with the same result.
        """
        if self.columns and set(values) != set(self.columns):
            raise ValueError(f"rows must have the columns {sorted(self.columns)}; "
                             f"got {sorted(values)}.")
        for name, column in values.items():
            if name in _RESERVED or len(column) != len(keys):
                raise ValueError(f"a column cannot be named {name!r} and must have one value "
                                 f"per row ({len(keys)}); got {len(column)}.")
        new, seen = [], set()
        for i, key in enumerate(keys):
            if key not in self.index and key not in seen:
                new.append(i)
                seen.add(key)
        for name, column in values.items():
            self.columns.setdefault(name, []).extend(np.asarray(column)[new])
        for i in new:
            self.index[keys[i]] = len(self.index)

    def take(self, keys):
        """The rows under ``keys``, as one array per column."""
        rows = [self.index[key] for key in keys]
        return {name: np.array([column[i] for i in rows]) if rows else np.array(column[:0])
                for name, column in self.columns.items()}

    def save(self, path):
        keys = sorted(self.index, key=self.index.get)
        columns = {name: np.array(column) for name, column in self.columns.items()}
        with atomic_write(path) as file:
            np.savez(file, format=np.array(self.format), keys=np.array(keys, dtype=str),
                     **columns)

    @classmethod
    def load(cls, path, format_, names=None):
        """The table in ``path``; a ValueError naming the file if it is not one.

        ``names``, if given, are the columns the table must have.
        """
        not_a_table = f"{os.fspath(path)} is not a table of results written by resistclf"
        if format_ == _FORMAT:
            not_a_table = f"{os.fspath(path)} is not an attack cache written by AttackCache.save"
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not an .npz archive")
            with data:
                if "format" not in data or str(data["format"]) != format_:
                    raise ValueError(f"it does not say it is in the format {format_!r}")
                keys = data["keys"]
                columns = {name: data[name] for name in data.files if name not in _RESERVED}
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{not_a_table}: {exc}") from exc
        if keys.dtype.kind not in "U" or keys.ndim != 1 or (
                names is not None and sorted(columns) != sorted(names)) or any(
                len(column) != len(keys) or column.dtype.kind not in "biuf"
                for column in columns.values()):
            raise ValueError(f"{not_a_table}: its arrays do not line up.")
        table = cls(format_)
        table.index = {key: i for i, key in enumerate(keys.tolist())}
        table.columns = {name: list(column) for name, column in columns.items()}
        return table


def as_rows(X):
    """``X`` as rows to read by index: an ndarray, or an array-like left as it is.

    An array-like has ``shape``, ``dtype``, ``len()`` and numpy indexing (an integer, a
    slice or an integer array); a memory map or a lazy reader of image files is one, and is
    read a few rows at a time, never whole. Tensors and sequences become ndarrays.
    """
    if isinstance(X, torch.Tensor):
        return X.detach().cpu().numpy()
    if isinstance(X, np.ndarray) or all(hasattr(X, name) for name in (
            "shape", "dtype", "__len__", "__getitem__")):
        return X
    return np.asarray(X)


def _row_bytes(X):
    """Each row's float32 bytes, read a block of rows at a time."""
    for start in range(0, len(X), _ROWS_AT_A_TIME):
        for row in np.asarray(X[start : start + _ROWS_AT_A_TIME], dtype=np.float32):
            yield row.tobytes()


def _cached_rows(table, prefix, X, compute, *, chunk_size, save=None, contents=None):
    """Each row's result from ``table``, computing the missing ones ``chunk_size`` at a time.

    A row's key is the hash of ``prefix`` followed by the row's content: its float32
    bytes, or its entry of ``contents`` where given (digests of the rows, computed once
    for several tables). ``compute(rows)`` takes a Dataset of float32 rows and returns one
    array per column; ``save()``, if given, runs after every chunk, so that an interrupted
    run keeps what it finished. A row that appears twice is computed once.
    """
    keys = [_key(prefix, content)
            for content in (_row_bytes(X) if contents is None else contents)]
    first = {}
    for i, key in enumerate(keys):
        if key not in table.index:
            first.setdefault(key, i)
    missing = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    for start in range(0, len(missing), chunk_size):
        rows = missing[start : start + chunk_size]
        table.add([keys[i] for i in rows], compute(_Rows(X, rows)))
        if save is not None:
            save()
    return table.take(keys)


class AttackCache:
    """Per-image store of attack results, shared by everything it is given to.

    An entry is keyed by the network (its architecture, weights, buffers and
    plain attributes), the attack's settings (all but ``verbose`` and
    ``n_jobs``), the attacked rank and the image's bytes. An image's result
    does not depend on the images attacked with it (see
    :class:`ResistanceAttack`'s Notes): a cached result is the one a fresh
    attack would give.

    Give the same cache to :class:`ResistanceClassifier` (``cache=``) and the
    clones that ``cross_val_score`` or ``GridSearchCV`` make of it share it, so
    ``transform``, ``predict``, ``predict_topk`` and cross-validation over the
    same images attack each image once. (Copies share the store: scikit-learn
    deep-copies parameters when it clones.) With ``n_jobs > 1`` each worker
    process has its own copy.

    Images are keyed, and attacked, as float32: through a cache, a float64
    module given float64 images is attacked on those images rounded to
    float32, so that every image behind one key gets the same result. Attack
    without a cache where float64 inputs matter.

    Files written by :meth:`save` hold plain arrays (``.npz``) and are read
    back without pickle, so a cache shared between people and machines cannot
    run code.

    Parameters
    ----------
    path : str, path-like or None, default=None
        A file that keeps the cache across runs. The cache starts from the file
        if it exists, and :meth:`attack` writes it after every batch of images
        it attacks, so that an interrupted run resumes from the last batch.
        None keeps the cache in memory (see :meth:`save` and :meth:`load`).

    Notes
    -----
    What the key does not see: forward hooks and code, such as a ``forward``
    method edited after the module was built. Change them, and build a new
    cache.

    Examples
    --------
    >>> from resistclf import AttackCache
    >>> cache = AttackCache()
    >>> len(cache)
    0
    """

    def __init__(self, path=None):
        self.path = path
        self._table = (_RowTable.load(path, _FORMAT, _CACHED_FIELDS)
                       if path is not None and Path(path).exists() else _RowTable(_FORMAT))

    def __deepcopy__(self, memo):
        return self

    def __len__(self):
        return len(self._table)

    def attack(self, attack, module, X, *, rank=0):
        """``attack(module, X, rank=rank)``, attacking only the images not cached yet.

        Parameters
        ----------
        attack : ResistanceAttack
        module : torch.nn.Module
        X : ndarray of shape (n_samples, ...)
            Converted to float32, as the attack sees it, a few rows at a time:
            a memory-mapped array is not loaded whole.
        rank : int, default=0

        Returns
        -------
        result : AttackResult
            Without traces.
        """
        if not isinstance(X, np.ndarray):
            X = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X)
        if X.dtype.kind != "f":
            ImageReader(X)  # the attack's own error, before the float32 keys hide the dtype
        prefix = repr((_fingerprint(module), settings_key(attack), rank)).encode()

        def compute(rows):
            fresh = attack(module, rows, rank=rank)
            return {name: getattr(fresh, name) for name in _CACHED_FIELDS}

        if self.path is None:  # one attack for every missing image
            chunk_size, save = max(len(X), 1), None
        else:  # a batch per worker between two saves
            batch_size = attack.batch_size if isinstance(attack.batch_size, Integral) else 256
            chunk_size = batch_size * effective_n_jobs(attack.n_jobs)
            save = self._save_to_path
        columns = _cached_rows(self._table, prefix, X, compute, chunk_size=chunk_size,
                               save=save)
        return AttackResult(**{name: columns[name] for name in _CACHED_FIELDS})

    def _save_to_path(self):
        self.save(self.path)

    def save(self, path):
        """Write the cache to ``path`` as a ``.npz`` file of plain arrays.

        The file is written under a temporary name and then renamed, so a crash
        or a second process never leaves a half-written cache.

        Parameters
        ----------
        path : str or path-like
        """
        if not self._table.columns:  # an empty cache still has its columns
            self._table.columns = {name: [] for name in _CACHED_FIELDS}
        self._table.save(path)

    @classmethod
    def load(cls, path):
        """A cache read from a file written by :meth:`save`, without pickle.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        cache : AttackCache
            Kept in memory: it does not write to ``path``.

        Raises
        ------
        ValueError
            If the file is not a cache written by :meth:`save` (corrupt, of an
            older version, or of another kind, such as a pickle); the message
            names the file.
        FileNotFoundError
            If there is no such file.
        """
        cache = cls()
        cache._table = _RowTable.load(path, _FORMAT, _CACHED_FIELDS)
        return cache


class ResultStore:
    """One folder for everything a study computes, each result keyed by its inputs.

    A result is stored under a key computed from the *content* it came from:
    the bytes of the data, the network's architecture, weights, buffers and
    plain attributes, and the settings. Change any of them and the result is
    computed again; keep them and it is read back, whichever command, folder
    or machine computed it. Files are written whole or not at all, and never
    unpickled. A file that cannot be read back is reported with a warning that
    names it, and what it held is computed again.

    Per-row results (:meth:`rows`) are computed a chunk at a time and written
    after each chunk, so a run that is interrupted (Ctrl-C, or killed) and
    started again resumes from the last chunk it finished, and gives the same
    results.

    Parameters
    ----------
    folder : str, path-like or None
        Where the files go; created when the first one is written. None keeps
        every result in memory only, for the life of the store.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from resistclf import ResultStore
    >>> store = ResultStore(tempfile.mkdtemp())
    >>> X = np.arange(6, dtype=np.float32).reshape(3, 2)
    >>> store.rows("sums", {"version": 1}, X, lambda rows: {"sum": rows[:].sum(1)})["sum"]
    array([1., 5., 9.], dtype=float32)
    """

    def __init__(self, folder):
        self.folder = None if folder is None else Path(folder)
        self._tables, self._values = {}, {}

    def rows(self, name, settings, X, compute, *, chunk_size=256, digests=None):
        """Per-row results, each keyed by ``settings`` and the row's bytes.

        Parameters
        ----------
        name : str
            What is computed; the table's file is ``<folder>/<name>.npz``.
        settings : object
            Everything besides the row that the result depends on: numbers,
            strings, arrays, torch modules, estimators, and dicts, lists and
            tuples of them (see :meth:`key`).
        X : array-like of shape (n_samples, ...)
            The rows; read a chunk at a time, as float32, so it may be a
            memory map or any array-like with ``shape``, ``dtype`` and numpy
            indexing.
        compute : callable
            ``compute(rows)`` takes a Dataset of float32 rows (``rows[:]``
            gives them as one array) and returns a dict of arrays with one
            value per row.
        chunk_size : int, default=256
            Rows computed between two writes of the table.
        digests : list of bytes or None, default=None
            :meth:`digests` of ``X``, to read ``X`` once for several tables
            (decoding a folder of images is slow); None computes them.

        Returns
        -------
        columns : dict of str to ndarray
            ``compute``'s columns for every row of ``X``, in order, and
            ``"seconds"``: each row's share of the wall time of the chunk that
            computed it, as first computed.
        """
        if not isinstance(chunk_size, Integral) or isinstance(chunk_size, bool) \
                or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
        path = None if self.folder is None else self.folder / f"{name}.npz"
        table = self._table(path, name)

        def timed(rows):
            start = time.perf_counter()
            values = dict(compute(rows))
            values["seconds"] = np.full(len(rows), (time.perf_counter() - start) / len(rows))
            return values

        X = as_rows(X)
        if digests is None:
            digests = self.digests(X)
        elif len(digests) != len(X):
            raise ValueError(f"digests must have one entry per row of X ({len(X)}); got "
                             f"{len(digests)}.")
        return _cached_rows(table, self.key(name, settings).encode(), X, timed,
                            chunk_size=chunk_size, contents=digests,
                            save=None if path is None else lambda: _save_merged(table, path))

    @staticmethod
    def digests(X):
        """Each row's digest, as :meth:`rows` keys it: blake2b of its float32 bytes.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)

        Returns
        -------
        digests : list of bytes
            16 bytes per row.
        """
        return [hashlib.blake2b(row, digest_size=16).digest() for row in _row_bytes(as_rows(X))]

    def arrays(self, name, settings, compute):
        """A dict of arrays computed once for ``settings``: ``<name>-<key>.npz``.

        Parameters
        ----------
        name : str
        settings : object
            Everything the result depends on (see :meth:`key`).
        compute : callable
            ``compute()`` returns a dict of str to ndarray (numbers or strings);
            no key may be ``"format"``.

        Returns
        -------
        arrays : dict of str to ndarray
        """
        def read(path):
            with np.load(path, allow_pickle=False) as data:
                if not isinstance(data, np.lib.npyio.NpzFile) or "format" not in data.files \
                        or str(data["format"]) != _ARRAYS_FORMAT:
                    raise ValueError(f"it does not say it is in the format {_ARRAYS_FORMAT!r}")
                return {key: data[key] for key in data.files if key != "format"}

        def write(file, value):
            if "format" in value:
                raise ValueError("arrays cannot be named 'format': it names the file's own.")
            np.savez(file, format=np.array(_ARRAYS_FORMAT), **value)

        return self._value(name, settings, compute, ".npz", read, write)

    def json(self, name, settings, compute):
        """A JSON value computed once for ``settings``: ``<name>-<key>.json``.

        Parameters and returns as :meth:`arrays`, with ``compute()`` returning
        what JSON holds (dicts, lists, strings, numbers, booleans, None).
        """
        def read(path):
            return json.loads(Path(path).read_bytes())

        def write(file, value):
            file.write(json.dumps(value, default=jsonable).encode())

        return self._value(name, settings, compute, ".json", read, write)

    def tensors(self, name, settings, compute, *, check=None):
        """A dict of tensors, such as a state dict, computed once: ``<name>-<key>.pt``.

        Read back with ``torch.load(weights_only=True)``, on the CPU.

        Parameters
        ----------
        name, settings
            As for :meth:`arrays`.
        compute : callable
            ``compute()`` returns a dict of str to torch.Tensor.
        check : callable or None, default=None
            ``check(value)`` raises a ValueError if a value read back cannot be
            used (weights that do not fit the module, say); it is then reported
            and computed again, as an unreadable file is.

        Returns
        -------
        tensors : dict of str to torch.Tensor
        """
        def read(path):
            value = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(value, dict) or not all(
                    isinstance(tensor, torch.Tensor) for tensor in value.values()):
                raise ValueError("it does not hold a dict of tensors")
            if check is not None:
                check(value)
            return value

        def write(file, value):
            torch.save(value, file)

        return self._value(name, settings, compute, ".pt", read, write)

    def path(self, name, settings, suffix):
        """The file that holds the result ``name`` for ``settings``.

        Parameters
        ----------
        name : str
        settings : object
        suffix : str
            ``".npz"``, ``".json"`` or ``".pt"``.

        Returns
        -------
        path : pathlib.Path or None
            None for a store kept in memory.
        """
        if self.folder is None:
            return None
        return self.folder / f"{name}-{self.key(settings)}{suffix}"

    @staticmethod
    def key(*parts):
        """A hex digest of the content of ``parts``.

        Arrays and tensors count by dtype, shape and bytes (read a block at a
        time, so a memory map is not loaded whole); torch modules by their
        architecture, weights, buffers and plain attributes; scikit-learn
        estimators by their class and parameters; dicts, lists and tuples by
        their items; strings, numbers, booleans and None by their ``repr``.

        Parameters
        ----------
        *parts : object

        Returns
        -------
        key : str
            32 hexadecimal digits.
        """
        digest = hashlib.blake2b(digest_size=16)
        _feed(digest, parts)
        return digest.hexdigest()

    def _table(self, path, name):
        if name not in self._tables:
            table = _RowTable(_ROWS_FORMAT)
            if path is not None and path.exists():
                try:
                    table = _RowTable.load(path, _ROWS_FORMAT)
                except ValueError as exc:
                    _warn_unreadable(path, str(exc))
            self._tables[name] = table
        return self._tables[name]

    def _value(self, name, settings, compute, suffix, read, write):
        path = self.path(name, settings, suffix)
        if path is None:
            key = (name, self.key(settings), suffix)
            if key not in self._values:
                self._values[key] = compute()
            return self._values[key]
        if path.exists():
            try:
                return read(path)
            except (pickle.UnpicklingError, RuntimeError, ValueError, KeyError, OSError,
                    EOFError, zipfile.BadZipFile, AttributeError, TypeError) as exc:
                _warn_unreadable(path, f"it could not be read without pickle ({exc})")
        value = compute()
        with atomic_write(path) as file:
            write(file, value)
        return value


def _save_merged(table, path):
    """Write ``table`` to ``path`` with every row another process wrote there meanwhile.

    Two studies may share one store: each keeps its table in memory, so a plain write would
    drop the rows the other wrote since this one read the file. Under an exclusive lock on
    ``.<name>.lock`` beside it (where the platform has ``fcntl``), the rows on disk that ``table``
    lacks are added to it first, so the file only ever grows.
    """
    with _exclusive(path.with_name(f".{path.name}.lock")):
        if path.exists():
            try:
                on_disk = _RowTable.load(path, _ROWS_FORMAT)
            except ValueError:  # unreadable: it was warned about on loading; overwrite it
                on_disk = _RowTable(_ROWS_FORMAT)
            missing = [key for key in on_disk.index if key not in table.index]
            if missing and (not table.columns or set(on_disk.columns) == set(table.columns)):
                table.add(missing, on_disk.take(missing))
        table.save(path)


@contextmanager
def _exclusive(lock_path):
    """An exclusive lock on ``lock_path`` between processes, where ``fcntl`` exists."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; concurrent writers may still drop rows there
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _warn_unreadable(path, reason):
    warnings.warn(f"Ignoring {path}: {reason}. What it held is computed again and the file "
                  "replaced.", UserWarning, stacklevel=4)


def jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


class _Rows(Dataset):
    """The rows ``index`` of ``X`` as float32 tensors, read one at a time when asked.

    ``rows[:]`` reads them all at once, as one float32 array.
    """

    def __init__(self, X, index):
        self.X, self.index = X, index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return np.asarray(self.X[self.index[i]], dtype=np.float32)
        return torch.from_numpy(np.array(self.X[self.index[i]], dtype=np.float32))


@contextmanager
def atomic_write(path):
    """A binary file that replaces ``path`` once it is complete, and only then.

    The file is written under a temporary name in the same folder, flushed to
    disk and renamed over ``path``, so that a crash or a second process never
    leaves a half-written file. It gets the usual permissions (those the umask
    leaves), as a file opened for writing would, so that a shared cache stays
    readable to the others.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _key(prefix, content):
    digest = hashlib.blake2b(prefix, digest_size=16)
    digest.update(content)
    return digest.hexdigest()


def _tensor_content(tensor):
    """A tensor's dtype, shape and bytes, whatever its dtype (bfloat16 included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return str(tensor.dtype), tuple(tensor.shape), flat.view(torch.uint8).numpy()


def _attribute_content(value):
    if isinstance(value, torch.Tensor):
        return _tensor_content(value)
    try:
        return joblib.hash(value)
    except Exception:  # noqa: BLE001 - what cannot be pickled is keyed by its repr
        return repr(value)


def _fingerprint(module):
    """Hash of the module's architecture, parameters, buffers and plain attributes.

    Buffers count whether or not they are persistent (a temperature kept in a
    non-persistent buffer changes the logits as much as a weight does), and so
    do the public attributes of every submodule but ``training``.
    """
    tensors = {name: _tensor_content(tensor) for name, tensor in
               [*module.named_parameters(), *module.named_buffers()]}
    attributes = {name: {key: _attribute_content(value) for key, value in vars(sub).items()
                         if not key.startswith("_") and key != "training"}
                  for name, sub in module.named_modules()}
    return joblib.hash((repr(module), tensors, attributes))


def _feed(digest, value):
    """Add ``value``'s content to ``digest`` (see :meth:`ResultStore.key`)."""
    if isinstance(value, torch.nn.Module):
        digest.update(b"module" + _fingerprint(value).encode())
    elif isinstance(value, torch.Tensor):
        dtype, shape, data = _tensor_content(value)
        digest.update(f"tensor{dtype}{shape}".encode())
        digest.update(data.tobytes())
    elif isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufUSM":
            raise TypeError(f"cannot key on an array of dtype {value.dtype}.")
        digest.update(f"array{value.dtype.str}{value.shape}".encode())
        rows = max(1, _ROWS_AT_A_TIME * 1024 // max(1, value[:1].nbytes)) if value.ndim else 1
        for start in range(0, len(value) if value.ndim else 1, rows):
            digest.update(np.ascontiguousarray(value[start : start + rows] if value.ndim
                                               else value).tobytes())
    elif isinstance(value, BaseEstimator):
        _feed(digest, (type(value).__qualname__, value.get_params(deep=False)))
    elif isinstance(value, dict):
        digest.update(f"dict{len(value)}".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (str, bytes, bool, int, float, np.generic)):
        digest.update(f"{type(value).__name__}:{value!r}".encode())
    else:
        raise TypeError(f"cannot key on a {type(value).__name__}: give numbers, strings, "
                        "arrays, tensors, modules, estimators, or dicts, lists and tuples of "
                        "them.")


def settings_key(attack):
    # verbose and n_jobs do not change the results (the attack's tests check n_jobs).
    return tuple(sorted((k, repr(v)) for k, v in attack.get_params().items()
                        if k not in ("verbose", "n_jobs")))
