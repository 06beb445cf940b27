"""
=================================================
Risk-coverage: resistance against softmax scores
=================================================

A detector of errors lets a classifier abstain: accept the images it is most
sure of, reject the rest. The risk-coverage curve plots the error rate among the
accepted images (the *selective risk*) against the fraction accepted (the
*coverage*), and its area (AURC) summarises it: lower is better. This example
draws the curves of the resistance detector and of the softmax scores of
:mod:`resistclf.scores`, all on the same net and the same test images.
"""

# %%
# A trained net, a fitted detector, and held-out images
# -----------------------------------------------------
import matplotlib.pyplot as plt
import torch
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import train_test_split

from resistclf import ResistanceAttack, ResistanceClassifier
from resistclf.datasets import load_digits_images
from resistclf.models import SimpleCNN, make_net
from resistclf.plotting import RiskCoverageDisplay
from resistclf.scores import softmax_scores

X, y = load_digits_images()
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
torch.manual_seed(0)
net = make_net(SimpleCNN, image_size=8, channels=(8, 16), hidden=64, max_epochs=6, lr=1e-2)
net.fit(X_train, y_train)

# The detector learns from half of the test images; the curves use the other half.
X_fit, X_eval, y_fit, y_eval = train_test_split(X_test, y_test, test_size=0.5,
                                                random_state=0, stratify=y_test)
clf = ResistanceClassifier(FrozenEstimator(net), attack=ResistanceAttack(max_iter=100),
                           features=("res_n", "res_max", "res_min", "res_mean"))
clf.fit(X_fit, y_fit)

# %%
# Error scores on the same images
# -------------------------------
# The softmax scores come from the net's logits (skorch's ``forward`` returns the
# module's outputs, here logits). Each is an error score: higher means more
# likely wrong, and a resistance feature enters with its sign flipped.
logits = net.forward(X_eval)
is_error = net.classes_[logits.argmax(dim=1).numpy()] != y_eval
res_n, res_max, res_min, res_mean = clf.transform(X_eval).T
error_scores = {
    "resistance detector": clf.predict_error_proba(X_eval),
    "-Res_mean": -res_mean,
    "-Res_max": -res_max,
    **{name: score for name, score in softmax_scores(logits).items()
       if name in ("max-softmax", "softmax margin", "entropy", "DOCTOR D_alpha")},
}
print(f"{is_error.sum()} errors among {len(y_eval)} images")

# %%
# The curves
# ----------
fig, ax = plt.subplots(figsize=(7, 5))
for name, score in error_scores.items():
    RiskCoverageDisplay.from_predictions(
        is_error, score, name=name, ax=ax, plot_optimal=name == "max-softmax",
        linestyle="-" if name.startswith(("resistance", "-Res")) else "--")
ax.set_title("Abstaining on the images each score trusts least")
plt.show()

# %%
# ``from_estimator`` draws the estimator's own curve in one call: for a
# :class:`~resistclf.ResistanceClassifier`, the error score is
# ``predict_error_proba`` and the prediction judged is the net's own.
RiskCoverageDisplay.from_estimator(clf, X_eval, y_eval, name="ResistanceClassifier",
                                   plot_optimal=True)
plt.show()
