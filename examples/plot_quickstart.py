"""
==============================================
Resistance of digits to a zero-initialised attack
==============================================

Train a small skorch CNN on scikit-learn's digits, measure how hard each test
image is to attack (its *resistance*), and use that to detect and correct the
network's mistakes. Every number is shown beside the network's own baseline.
"""

# %%
# Data and an untrained skorch net
# --------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import cross_val_score, train_test_split

from resistclf import ResistanceAttack, ResistanceClassifier
from resistclf.datasets import load_digits_images
from resistclf.metrics import detection_metrics
from resistclf.models import SimpleCNN, make_net

X, y = load_digits_images()  # (1797, 1, 8, 8) float32 in [0, 1]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
net = make_net(SimpleCNN, image_size=8, channels=(16, 32), hidden=64, max_epochs=30, lr=3e-3)

# %%
# Fit: train the net, attack held-out images, learn to detect errors
# ------------------------------------------------------------------
# With an untrained net, ``fit`` trains a clone on 80% of the data and fits the
# error detector on the resistance of the 20% held out.
clf = ResistanceClassifier(net, attack=ResistanceAttack(max_iter=300), random_state=0)
clf.fit(X_train, y_train)

features = clf.transform(X_test)  # Res_N, Res_max, Res_min
net_pred = clf.predict_proba(X_test).argmax(axis=1)
is_error = net_pred != y_test
print(f"net accuracy {1 - is_error.mean():.3f}, with correction {clf.score(X_test, y_test):.3f}")
print("AUROC of Res_N    ", detection_metrics(is_error, -features[:, 0])["auroc"])
print("AUROC max-softmax ", detection_metrics(is_error, -clf.predict_proba(X_test).max(1))["auroc"])
print("top-2 lists:\n", clf.predict_topk(X_test[:5], k=2))

# %%
# Cross-validation with the trained net kept fixed
# ------------------------------------------------
# ``cross_val_score`` clones its estimator, and a cloned skorch net comes back
# untrained; ``FrozenEstimator`` keeps it as it is, so only the detector is refit.
frozen = ResistanceClassifier(
    FrozenEstimator(clf.net_), attack=ResistanceAttack(max_iter=300), random_state=0
)
print("5-fold accuracy:", cross_val_score(frozen, X_test, y_test, cv=5).round(3))

# %%
# Resistance of correct and incorrect predictions
# -----------------------------------------------
fig, ax = plt.subplots()
bins = np.linspace(0, features[:, 0].max(), 30)
ax.hist(features[~is_error, 0], bins=bins, alpha=0.6, density=True, label="correct")
ax.hist(features[is_error, 0], bins=bins, alpha=0.6, density=True, label="incorrect")
ax.set_xlabel("Res_N (norm of the perturbation after the attack)")
ax.set_ylabel("density")
ax.legend()
plt.show()
