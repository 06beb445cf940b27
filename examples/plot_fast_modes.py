"""
============================
What the fast modes change
============================

After the prediction first changes, the attack bounces across the Conf
thresholds, and Res_N, ``|r|`` after the last step, is one sample of that
oscillation: a difference in the last digits of the logits grows to the size of
the oscillation within a few hundred steps. This example attacks the same images
with the same net in each fast mode and compares every feature with the exact
default's. ``channels_last`` runs the same float32 arithmetic through other
kernels: it shows how much of the change is chaos rather than lost precision.
"""

# %%
# One net, the same images, four settings
# ---------------------------------------
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.model_selection import train_test_split

from resistclf import ResistanceAttack
from resistclf.datasets import load_digits_images
from resistclf.models import SimpleCNN, make_net

X, y = load_digits_images()
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
torch.manual_seed(0)
net = make_net(SimpleCNN, image_size=8, channels=(8, 16), hidden=64, max_epochs=15, lr=1e-2)
net.fit(X_train, y_train)
images = torch.from_numpy(X_test[:256])

settings = {
    "default": {},
    "channels_last": {"channels_last": True},
    "bfloat16": {"precision": "bfloat16"},
    "early_exit=20": {"early_exit": 20},
}
results = {name: ResistanceAttack(max_iter=200, **params)(net.module_, images)
           for name, params in settings.items()}

# %%
# Agreement with the default
# --------------------------
exact = results["default"]


def share_within_2_percent(result, feature):
    return np.mean(np.isclose(getattr(result, feature), getattr(exact, feature), rtol=0.02))


print(f"{'setting':<15} {'Res_N within 2%':>16} {'Res_mean within 2%':>19} "
      f"{'Res_max within 2%':>18} {'Res_min equal':>14} {'adv. class equal':>17}")
for name, result in results.items():
    print(f"{name:<15} {share_within_2_percent(result, 'res_n'):>16.1%} "
          f"{share_within_2_percent(result, 'res_mean'):>19.1%} "
          f"{share_within_2_percent(result, 'res_max'):>18.1%} "
          f"{np.mean(result.res_min == exact.res_min):>14.1%} "
          f"{np.mean(result.adversarial_class == exact.adversarial_class):>17.1%}")

# %%
# Each setting's Res_N and Res_mean against the default's
# -------------------------------------------------------
# On log scales: an image whose ``|r|`` runs away in one setting lies far from
# the diagonal.
fig, axes = plt.subplots(2, len(settings) - 1, figsize=(10, 5), sharex="row", sharey="row")
for column, name in enumerate(list(settings)[1:]):
    for ax, feature in zip(axes[:, column], ("res_n", "res_mean")):
        ax.scatter(getattr(exact, feature), getattr(results[name], feature), s=4)
        ax.axline((0.1, 0.1), (1, 1), color="gray", lw=0.5)
        ax.set(xscale="log", yscale="log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(f"{feature}, default")
axes[0, 0].set_ylabel("Res_N, this setting")
axes[1, 0].set_ylabel("Res_mean, this setting")
fig.tight_layout()
plt.show()
