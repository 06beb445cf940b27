"""
========================================
The attack alone, on a raw torch module
========================================

:class:`~resistclf.ResistanceAttack` works on any :class:`torch.nn.Module` that
returns logits: no skorch, no estimator. Here it attacks a small network trained
with a plain PyTorch loop, records Conf and ``|r|`` at every step
(``return_trace=True``), and draws them for an image that is easy to attack and
one that is hard, as in the write-up's figure.
"""

# %%
# A module trained with plain PyTorch
# -----------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import nn

from resistclf import ResistanceAttack
from resistclf.datasets import load_digits_images
from resistclf.metrics import auroc
from resistclf.plotting import plot_attack_traces

X, y = load_digits_images()
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)

torch.manual_seed(0)
module = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
)
optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
images, labels = torch.from_numpy(X_train), torch.from_numpy(y_train)
for epoch in range(15):
    for batch in torch.randperm(len(images)).split(128):
        optimizer.zero_grad()
        nn.functional.cross_entropy(module(images[batch]), labels[batch]).backward()
        optimizer.step()

# %%
# Attack every test image, with traces
# ------------------------------------
# The attack runs the module in eval mode with its parameters frozen, and
# restores both afterwards. Its result holds one entry per image.
result = ResistanceAttack(max_iter=200)(module, torch.from_numpy(X_test), return_trace=True)
is_error = result.c0 != y_test
print(f"{len(result)} images, {is_error.sum()} misclassified, "
      f"{result.flipped.mean():.1%} changed class within 200 steps")
for name in ("res_n", "res_max", "res_min", "res_mean", "adversarial_class", "c0", "conf0"):
    print(f"{name:<18}", getattr(result, name)[:5].round(3))

# %%
# An easy image and a hard one
# ----------------------------
# Among the correctly classified images, the one with the smallest and the one
# with the largest Res_max. While Conf stays above 0.9 the attack grows ``|r|``;
# once the prediction is about to change it pulls ``|r|`` back, and from the
# first flip on it oscillates across the thresholds.
correct = np.flatnonzero(~is_error)
easy = correct[result.res_max[correct].argmin()]
hard = correct[result.res_max[correct].argmax()]
titles = [f"{kind}: a {y_test[i]}, Res_max {result.res_max[i]:.2f}, first flip at step "
          f"{result.res_min[i]}" for kind, i in (("easy", easy), ("hard", hard))]
plot_attack_traces(result.conf_trace[[easy, hard]], result.norm_trace[[easy, hard]],
                   X_test[[easy, hard]], titles)

# %%
# Res_N and its stable summary
# ----------------------------
# Res_N, ``|r|`` after the last step, is one sample of that oscillation; Res_mean
# averages ``|r|`` from the first flip to the end. Both are lower for the net's
# errors; ``conf0``, the softmax probability of the prediction, is the baseline.
# With this few errors the AUROCs are rough.
for name, error_score in {"Res_N": -result.res_n, "Res_mean": -result.res_mean,
                          "max-softmax": 1 - result.conf0}.items():
    print(f"error-detection AUROC, {name:<12} {auroc(is_error, error_score):.3f}")

fig, ax = plt.subplots(figsize=(5, 4))
ax.scatter(result.res_mean[~is_error], result.res_n[~is_error], s=6, label="correct")
ax.scatter(result.res_mean[is_error], result.res_n[is_error], s=12, label="wrong")
ax.set_xlabel("Res_mean (mean |r| after the first flip)")
ax.set_ylabel("Res_N (|r| after the last step)")
ax.legend()
plt.show()
