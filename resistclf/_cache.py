"""A per-image cache of attack results, so that each image is attacked once."""

import hashlib
import os
import secrets
import zipfile
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import joblib
import numpy as np
import torch
from torch.utils.data import Dataset

from ._attack import AttackResult

#: The per-sample fields stored; traces are never cached.
_CACHED_FIELDS = [f.name for f in fields(AttackResult) if not f.name.endswith("_trace")]
#: Rows converted to float32 at once to compute their keys.
_ROWS_AT_A_TIME = 1024
#: Marks a file written by :meth:`AttackCache.save`, and its layout.
_FORMAT = "resistclf.AttackCache/1"


class AttackCache:
    """Per-image store of attack results, shared by everything it is given to.

    An entry is keyed by the network's weights and architecture, the attack's
    settings (all but ``verbose`` and ``n_jobs``), the attacked rank and the
    image's bytes. The attack runs fixed-shape batches, so an image's result
    does not depend on the images attacked with it: a cached result is the one
    a fresh attack would give.

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

    Examples
    --------
    >>> from resistclf import AttackCache
    >>> cache = AttackCache()
    >>> len(cache)
    0
    """

    def __init__(self):
        self._store = {}

    def __deepcopy__(self, memo):
        return self

    def __len__(self):
        return len(self._store)

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
            X = np.asarray(X, dtype=np.float32)
        prefix = repr((_fingerprint(module), _settings(attack), rank)).encode()
        keys = [_key(prefix, row)
                for start in range(0, len(X), _ROWS_AT_A_TIME)
                for row in np.asarray(X[start : start + _ROWS_AT_A_TIME], dtype=np.float32)]
        missing = np.array([i for i, key in enumerate(keys) if key not in self._store],
                           dtype=np.int64)
        if len(missing):
            fresh = attack(module, _Rows(X, missing), rank=rank)
            for j, i in enumerate(missing):
                self._store[keys[i]] = tuple(getattr(fresh, name)[j] for name in _CACHED_FIELDS)
        rows = [self._store[key] for key in keys]
        return AttackResult(**{name: np.array([row[k] for row in rows])
                               for k, name in enumerate(_CACHED_FIELDS)})

    def save(self, path):
        """Write the cache to ``path`` as a ``.npz`` file of plain arrays.

        The file is written under a temporary name and then renamed, so a crash
        or a second process never leaves a half-written cache.

        Parameters
        ----------
        path : str or path-like
        """
        keys = list(self._store)
        columns = {name: np.array([self._store[key][k] for key in keys])
                   for k, name in enumerate(_CACHED_FIELDS)}
        with atomic_write(path) as file:
            np.savez(file, format=np.array(_FORMAT), keys=np.array(keys, dtype=str), **columns)

    @classmethod
    def load(cls, path):
        """A cache read from a file written by :meth:`save`, without pickle.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        cache : AttackCache

        Raises
        ------
        ValueError
            If the file is not a cache written by :meth:`save` (corrupt, or of
            another kind, such as a pickle); the message names the file.
        FileNotFoundError
            If there is no such file.
        """
        not_a_cache = f"{os.fspath(path)} is not an attack cache written by AttackCache.save"
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not an .npz archive")
            with data:
                if "format" not in data or str(data["format"]) != _FORMAT:
                    raise ValueError(f"it does not say it is in the format {_FORMAT!r}")
                keys = data["keys"]
                columns = [data[name] for name in _CACHED_FIELDS]
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{not_a_cache}: {exc}") from exc
        if keys.dtype.kind != "U" or keys.ndim != 1 or any(
                column.ndim != 1 or len(column) != len(keys) or column.dtype.kind not in "biuf"
                for column in columns):
            raise ValueError(f"{not_a_cache}: its arrays do not line up.")
        cache = cls()
        cache._store = dict(zip(keys.tolist(), zip(*columns)))
        return cache


class _Rows(Dataset):
    """The rows ``index`` of ``X`` as float32 tensors, read one at a time when asked."""

    def __init__(self, X, index):
        self.X, self.index = X, index

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
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


def _key(prefix, row):
    digest = hashlib.blake2b(prefix, digest_size=16)
    digest.update(row.tobytes())
    return digest.hexdigest()


def _fingerprint(module):
    """Hash of the module's architecture and weights."""
    state = {name: tensor.detach().cpu().numpy() for name, tensor in module.state_dict().items()}
    return joblib.hash((repr(module), state))


def _settings(attack):
    # verbose and n_jobs do not change the results (the attack's tests check n_jobs).
    return tuple(sorted((k, repr(v)) for k, v in attack.get_params().items()
                        if k not in ("verbose", "n_jobs")))
