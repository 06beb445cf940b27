"""
=======================================
Detect and correct a network's mistakes
=======================================

Train a small CNN through skorch on scikit-learn's digits, measure how hard each
test image is to attack (its *resistance*), and use it to detect the network's
mistakes and to correct them. Every number is printed beside the network's own
baseline: max-softmax for detection, the net itself for accuracy.
"""

# %%
# Data and an untrained skorch net
# --------------------------------
import matplotlib.pyplot as plt
from sklearn.model_selection import train_test_split

from resistclf import ResistanceAttack, ResistanceClassifier
from resistclf.datasets import load_digits_images
from resistclf.metrics import detection_metrics
from resistclf.models import SimpleCNN, make_net
from resistclf.plotting import plot_roc_curves

X, y = load_digits_images()  # (1797, 1, 8, 8) float32 in [0, 1]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
net = make_net(SimpleCNN, image_size=8, channels=(8, 16), hidden=64, max_epochs=15, lr=1e-2)

# %%
# Fit: train the net, attack held-out images, learn to detect errors
# ------------------------------------------------------------------
# With an untrained net, ``fit`` trains a clone on 80% of the data and fits the
# error detector on the resistance of the 20% held out: a net is rarely wrong on
# the images it trained on. Digits change class within a few steps of the attack,
# so 100 steps are enough here (the default, 500, is for MNIST-sized nets). The
# classifier remembers its last inputs' attacks, so ``transform``, ``predict``,
# ``predict_error_proba`` and ``score`` attack the test images once between them.
clf = ResistanceClassifier(net, attack=ResistanceAttack(max_iter=100), random_state=0)
clf.fit(X_train, y_train)

# %%
# Detect the net's errors, beside max-softmax
# -------------------------------------------
# Errors are the positive class, so each score is "higher means more likely
# wrong": minus a resistance feature, one minus max-softmax.
proba = clf.predict_proba(X_test)  # the net's own softmax
is_error = clf.classes_[proba.argmax(axis=1)] != y_test
res_n, res_max, res_min = clf.transform(X_test).T
error_scores = {
    "Res_N": -res_n,
    "Res_max": -res_max,
    "Res_min": -res_min,
    "detector P(error)": clf.predict_error_proba(X_test),
    "max-softmax (baseline)": 1 - proba.max(axis=1),
}
print(f"{is_error.sum()} errors among {len(y_test)} test images")
for name, score in error_scores.items():
    print(f"AUROC {name:<24} {detection_metrics(is_error, score)['auroc']:.3f}")

# %%
# Correct them
# ------------
# ``predict`` replaces the net's prediction by the class the attack lands in
# where the detector flags an error; ``predict_topk(k=2)`` lists both.
print(f"accuracy: net {1 - is_error.mean():.3f}, detect then correct "
      f"{clf.score(X_test, y_test):.3f}")
print("top-2 lists of the first five test images:\n", clf.predict_topk(X_test, k=2)[:5])

# %%
# Resistance of correct and wrong predictions
# -------------------------------------------
fig, (ax_hist, ax_roc) = plt.subplots(1, 2, figsize=(10, 4))
bins = 30
ax_hist.hist(res_max[~is_error], bins=bins, density=True, alpha=0.6, label="correct")
ax_hist.hist(res_max[is_error], bins=bins, density=True, alpha=0.6, label="wrong")
ax_hist.set_xlabel("Res_max (largest |r| over the attack)")
ax_hist.set_ylabel("density")
ax_hist.legend()
plot_roc_curves(is_error, error_scores, ax=ax_roc)
plt.show()
