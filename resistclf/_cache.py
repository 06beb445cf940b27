"""A per-image cache of attack results, so that each image is attacked once."""

import hashlib
from dataclasses import fields

import joblib
import numpy as np
import torch

from ._attack import AttackResult

#: The per-sample fields stored; traces are never cached.
_CACHED_FIELDS = [f.name for f in fields(AttackResult) if not f.name.endswith("_trace")]


class AttackCache:
    """Per-image store of attack results, shared by everything it is given to.

    An entry is keyed by the network's weights and architecture, the attack's
    settings (all but ``verbose``), the attacked rank and the image's bytes.
    The attack runs fixed-shape batches, so an image's result does not depend
    on the images attacked with it: a cached result is the one a fresh attack
    would give.

    Give the same cache to :class:`ResistanceClassifier` (``cache=``) and the
    clones that ``cross_val_score`` or ``GridSearchCV`` make of it share it, so
    ``transform``, ``predict``, ``predict_topk`` and cross-validation over the
    same images attack each image once. (Copies share the store: scikit-learn
    deep-copies parameters when it clones.) With ``n_jobs > 1`` each worker
    process has its own copy.

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
            Converted to float32, as the attack sees it.
        rank : int, default=0

        Returns
        -------
        result : AttackResult
            Without traces.
        """
        X = np.asarray(X, dtype=np.float32)
        prefix = (_fingerprint(module), _settings(attack), rank)
        keys = [prefix + (hashlib.blake2b(row.tobytes(), digest_size=16).digest(),)
                for row in X]
        missing = [i for i, key in enumerate(keys) if key not in self._store]
        if missing:
            fresh = attack(module, torch.tensor(X[missing]), rank=rank)
            for j, i in enumerate(missing):
                self._store[keys[i]] = tuple(getattr(fresh, name)[j] for name in _CACHED_FIELDS)
        rows = [self._store[key] for key in keys]
        return AttackResult(**{name: np.array([row[k] for row in rows])
                               for k, name in enumerate(_CACHED_FIELDS)})

    def save(self, path):
        """Write the cache to ``path`` (with joblib)."""
        joblib.dump(self._store, path)

    @classmethod
    def load(cls, path):
        """A cache read from a file written by :meth:`save`."""
        cache = cls()
        cache._store = joblib.load(path)
        return cache


def _fingerprint(module):
    """Hash of the module's architecture and weights."""
    state = {name: tensor.detach().cpu().numpy() for name, tensor in module.state_dict().items()}
    return joblib.hash((repr(module), state))


def _settings(attack):
    # verbose and n_jobs do not change the results (the attack's tests check n_jobs).
    return tuple(sorted((k, repr(v)) for k, v in attack.get_params().items()
                        if k not in ("verbose", "n_jobs")))
