"""
=====================================================
Cross-validation and grid search with a trained net
=====================================================

``cross_val_score`` and ``GridSearchCV`` clone their estimator, and a cloned
skorch net comes back untrained. Wrapping the trained net in
:class:`~sklearn.frozen.FrozenEstimator` keeps it as it is, so only the error
detector is refit in each fold. An :class:`~resistclf.AttackCache` given to the
estimator is shared by all its clones: each image is attacked once, however many
folds and candidates see it.
"""

# %%
# Train the net once, on images the search will not see
# ------------------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score, train_test_split

from resistclf import AttackCache, ResistanceAttack, ResistanceClassifier
from resistclf.datasets import load_digits_images
from resistclf.metrics import auroc
from resistclf.models import SimpleCNN, make_net

X, y = load_digits_images()
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
torch.manual_seed(0)
net = make_net(SimpleCNN, image_size=8, channels=(8, 16), hidden=64, max_epochs=15, lr=1e-2)
net.fit(X_train, y_train)

# %%
# Cross-validate detect-then-correct
# ----------------------------------
# The detector must learn from images the net did not train on, so the folds
# split the test images. The score is the accuracy of the corrected predictions.
cache = AttackCache()
clf = ResistanceClassifier(
    FrozenEstimator(net), attack=ResistanceAttack(max_iter=100), cache=cache, random_state=0
)
cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
net_accuracy = (net.predict(X_test) == y_test).mean()
print(f"net accuracy {net_accuracy:.3f}; detect then correct, by fold:",
      cross_val_score(clf, X_test, y_test, cv=cv).round(3))
print(f"images attacked so far: {len(cache)} (the test set has {len(X_test)})")


# %%
# Which resistance features detect errors best?
# ---------------------------------------------
# A grid search over ``features``, scored by the AUROC of ``predict_error_proba``
# for the net's errors. The cache already holds every test image, so the search
# attacks none.
def error_detection_auroc(estimator, X, y):
    """AUROC of P(error) for the net's own mistakes on X."""
    is_error = estimator.classes_[estimator.predict_proba(X).argmax(axis=1)] != y
    return auroc(is_error, estimator.predict_error_proba(X))


feature_sets = [("res_n",), ("res_max",), ("res_min",), ("res_mean",),
                ("res_n", "res_max", "res_min"), ("res_n", "res_max", "res_min", "res_mean")]
search = GridSearchCV(clf, {"features": feature_sets}, scoring=error_detection_auroc, cv=cv)
search.fit(X_test, y_test)
print("best:", search.best_params_, f"AUROC {search.best_score_:.3f}")
print(f"images attacked in all: {len(cache)}")

# %%
# The baseline on the same folds: max-softmax of the same net.
proba = net.predict_proba(X_test)
is_error = net.classes_[proba.argmax(axis=1)] != y_test
baseline = np.array([auroc(is_error[test], 1 - proba[test].max(axis=1))
                     for _, test in cv.split(X_test, y_test)])

fig, ax = plt.subplots(figsize=(7, 4))
names = [" + ".join(f) for f in feature_sets] + ["max-softmax (baseline)"]
means = np.r_[search.cv_results_["mean_test_score"], baseline.mean()]
stds = np.r_[search.cv_results_["std_test_score"], baseline.std()]
ax.barh(names, means, xerr=stds, color=["tab:blue"] * len(feature_sets) + ["tab:gray"])
ax.set_xlim(0.5, 1)
ax.set_xlabel(f"error-detection AUROC, mean and std over {cv.n_splits} folds")
fig.tight_layout()
plt.show()
