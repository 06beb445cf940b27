"""
=========================================
The whole study on a network of your own
=========================================

:mod:`resistclf.study` runs the write-up's study on any trained network: every
error score (resistance, the softmax-derived ones, attack-based distances), the
detection table with bootstrap intervals, the complementarity test, the
correction and top-k claims beside their softmax baselines, and the cost of each
score. Here it studies a small CNN trained on scikit-learn's digits, in two steps:
:func:`~resistclf.study.measure` spends the passes through the network, and
:func:`~resistclf.study.analyse` turns them into the report's numbers.
"""

# %%
# A network to study
# ------------------
# Any trained network will do: a skorch classifier, as here, a
# ``FrozenEstimator`` around one, or a torch module that returns logits.
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from resistclf import ResistanceAttack, ResultStore
from resistclf.datasets import load_digits_images
from resistclf.models import SimpleCNN, make_net
from resistclf.study import analyse, measure

X, y = load_digits_images()  # (1797, 1, 8, 8) float32 in [0, 1]
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=400, random_state=0)
torch.manual_seed(0)
net = make_net(SimpleCNN, image_size=8, channels=(8, 16), hidden=64, max_epochs=8, lr=1e-2)
net.fit(X_train, y_train)

# %%
# Measure: every pass through the network, once per image
# -------------------------------------------------------
# The resistance attack runs at ranks 0 to 2 (the top-5 lists need all three),
# and the attack-based competitors beside it. Digits change class within a few
# steps, so 100 steps are enough (the default, 500, is for MNIST-sized nets).
# A :class:`~resistclf.ResultStore` with a folder would keep every per-image result
# keyed by its content, so that an interrupted study resumes; ``None`` keeps them
# in memory.
measured = measure(net, X_test, y_test, attack=ResistanceAttack(max_iter=100), ranks=3,
                   competitors=("input-space margin", "DeepFool"), store=ResultStore(None))
print(f"{measured.is_error.sum()} errors among {len(measured)} test images")
for method, cost in measured.cost().items():
    print(f"{method:<22} {cost['forward']:6.1f} forward + {cost['backward']:6.1f} backward "
          "passes per image")

# %%
# Analyse: every claim beside its baseline
# ----------------------------------------
# Each score is an error score (higher means more likely wrong), scored by
# AUROC and by the area under the risk-coverage curve, each with a bootstrap 95%
# interval. Learned detectors are scored out of fold.
study = analyse(measured, n_resamples=200, random_state=0)
results = study.to_dict()
for name in ["Res_N", "Res_mean", "LR(resistance)", "max-softmax", "DeepFool distance",
             "LR(softmax + resistance)"]:
    auroc, aurc = (results["detection"][name][key] for key in ("auroc", "aurc"))
    print(f"{name:<26} AUROC {auroc['value']:.3f} [{auroc['ci'][0]:.3f}, {auroc['ci'][1]:.3f}]"
          f"   AURC x1000 {1000 * aurc['value']:5.1f}")

# %%
# Does resistance add anything beyond the softmax? The same learner with and
# without the resistance features, on the same folds; the difference comes with
# its paired bootstrap interval.
row = results["complementarity"]["resistance beyond the softmax"]
low, high = row["auroc"]["ci"]
print(f"{row['with']} - {row['without']}: AUROC {row['auroc']['difference']:+.3f} "
      f"[{low:+.3f}, {high:+.3f}], {row['auroc']['verdict']}")

# %%
# Correction and top-k, beside the softmax's own second choice and top-k.
correction = results["correction"]
print(f"errors whose true label the attack lands in: "
      f"{correction['adversarial_class_is_true']['count']} of "
      f"{correction['adversarial_class_is_true']['of']}; the softmax's second choice: "
      f"{correction['second_choice_is_true']['count']}")
for k in (2, 5):
    print(f"top-{k} error: resistance {results['topk_error'][f'top{k}_predict_topk']['value']:.3f}"
          f", softmax {results['topk_error'][f'top{k}_softmax']['value']:.3f}")

# %%
# A subset, analysed alone
# ------------------------
# Measurements index like arrays: here the images of the digits 0 to 4. Nothing
# is attacked again. (:meth:`~resistclf.study.Measurements.concatenate` joins
# measurements, such as i.i.d. and shifted images.)
low_digits = analyse(measured[np.isin(y_test, range(5))], n_resamples=200, random_state=0)
print(f"digits 0-4: {low_digits.to_dict()['errors']['count']} errors, max-softmax AUROC "
      f"{low_digits.to_dict()['detection']['max-softmax']['auroc']['value']:.3f}")

# %%
# The report
# ----------
# :meth:`~resistclf.study.StudyResult.to_markdown` writes the report's sections
# and :meth:`~resistclf.study.StudyResult.figures` its figures: risk against
# coverage, ROC curves and the scores' histograms. ``resistclf study`` writes the
# same report for a network and data given on the command line.
print(study.to_markdown(level=2)[:600], "...")
figures = study.figures()
figures["risk_coverage"]
