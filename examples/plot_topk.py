"""
=====================================
Top-k lists: resistance and softmax
=====================================

:meth:`~resistclf.ResistanceClassifier.predict_topk` ranks labels by attacking the
net's top classes: the prediction ``c1``, the class ``a1`` its attack lands in,
then ``c2``, ``a2``, ``c3``, ``a3`` (each ``c_j`` attacked with the classes ranked
above it removed), without repeats. This example compares these lists with the
softmax's own top-k on the same net.
"""

# %%
# A trained net and a fitted classifier
# -------------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import train_test_split

from resistclf import AttackCache, ResistanceAttack, ResistanceClassifier
from resistclf.datasets import load_digits_images
from resistclf.metrics import softmax_topk, topk_accuracy
from resistclf.models import SimpleCNN, make_net

X, y = load_digits_images()
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
torch.manual_seed(0)
# A net trained for a few epochs only, so that it makes mistakes worth ranking.
net = make_net(SimpleCNN, image_size=8, channels=(8, 16), hidden=64, max_epochs=4, lr=1e-2)
net.fit(X_train, y_train)

# Half of the test images fit the error detector; the lists are scored on the rest.
X_fit, X_eval, y_fit, y_eval = train_test_split(X_test, y_test, test_size=0.5,
                                                random_state=0, stratify=y_test)
clf = ResistanceClassifier(
    FrozenEstimator(net), attack=ResistanceAttack(max_iter=100), cache=AttackCache()
).fit(X_fit, y_fit)

# %%
# Top-k accuracy for k = 1 to 5
# -----------------------------
# ``k=1`` is the net's prediction and ``k=2`` adds its adversarial correction;
# ``k>=3`` attacks three times per image (the cache keeps the three results).
proba = clf.predict_proba(X_eval)
ks = np.arange(1, 6)
resistance = [topk_accuracy(y_eval, clf.predict_topk(X_eval, k=k)) for k in ks]
softmax = [topk_accuracy(y_eval, softmax_topk(proba, clf.classes_, k)) for k in ks]
for k, r, s in zip(ks, resistance, softmax):
    print(f"top-{k} error: resistance {1 - r:.2%}, softmax {1 - s:.2%}")

# %%
# The lists of the misclassified images
# -------------------------------------
wrong = np.flatnonzero(clf.classes_[proba.argmax(axis=1)] != y_eval)[:8]
for i, resistance_list, softmax_list in zip(
        wrong, clf.predict_topk(X_eval[wrong], k=3), softmax_topk(proba[wrong], clf.classes_, 3)):
    print(f"true {y_eval[i]}: resistance {resistance_list}, softmax {softmax_list}")

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(ks, 1 - np.array(resistance), marker="o", label="resistance (predict_topk)")
ax.plot(ks, 1 - np.array(softmax), marker="s", ls="--", label="softmax top-k (baseline)")
ax.set_xlabel("k")
ax.set_ylabel("top-k error")
ax.set_xticks(ks)
ax.legend()
fig.tight_layout()
plt.show()
