"""scikit-learn's estimator checks, on a configuration with a small MLP.

The checks feed 2-D data of many shapes and label sets, so the skorch net here
sizes its input and output layers from the data it is fit on. Images (4-D
input) are tested in test_estimator.py: the checks only know 2-D arrays.
"""

import numpy as np
import torch
from skorch import NeuralNetClassifier
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from resistclf import ResistanceAttack, ResistanceClassifier
from resistclf.models import MLP


class DataShapedNet(NeuralNetClassifier):
    """A skorch classifier whose MLP takes as many inputs and classes as the data has."""

    def fit(self, X, y, **fit_params):
        n_classes = len(self.classes) if self.classes is not None else len(np.unique(y))
        self.set_params(module__n_features=X.shape[1], module__n_classes=n_classes)
        return super().fit(X, y, **fit_params)


def small_mlp_classifier():
    net = DataShapedNet(
        MLP, module__n_features=1, module__hidden=(16,), criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam, lr=1e-2, max_epochs=40, batch_size=32, train_split=None,
        verbose=0,
    )
    return ResistanceClassifier(
        net, attack=ResistanceAttack(max_iter=20, batch_size=32), random_state=0
    )


# Every check passes: no expected failures to list.
@parametrize_with_checks([small_mlp_classifier()])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
