"""
=========================
Resistance over training
=========================

:class:`~resistclf.ResistanceMonitor` is a skorch callback: after every epoch it
attacks a fixed set of images with the net as it is at that moment and writes
what it measured to the net's history, beside the max-softmax baseline. Here it
follows a small CNN through ten epochs on the digits.
"""

# %%
# Train with the monitor
# ----------------------
import matplotlib.pyplot as plt
import torch
from sklearn.model_selection import train_test_split

from resistclf import ResistanceAttack, ResistanceMonitor
from resistclf.datasets import load_digits_images
from resistclf.models import SimpleCNN, make_net
from resistclf.plotting import plot_curves

X, y = load_digits_images()
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
X_watch, y_watch = X_test[:200], y_test[:200]

# A batch as large as the watched set: the attack pads smaller batches.
monitor = ResistanceMonitor(X_watch, y_watch,
                            attack=ResistanceAttack(max_iter=100, batch_size=len(X_watch)))
torch.manual_seed(0)
net = make_net(SimpleCNN, image_size=8, channels=(8, 16), hidden=64, max_epochs=10, lr=3e-3)
net.set_params(callbacks=[monitor])
net.fit(X_train, y_train)

# %%
# What the history holds
# ----------------------
history = net.history
print(monitor.keys_)
for epoch in history:
    print(f"epoch {epoch['epoch']:>2}: accuracy {epoch['resistance_accuracy']:.3f}, "
          f"flip rate {epoch['resistance_flip_rate']:.2f}, AUROC Res_N "
          f"{epoch['resistance_auroc_res_n']:.3f}, max-softmax "
          f"{epoch['resistance_auroc_max_softmax']:.3f}")

# %%
# Curves
# ------
# Res_N's median for correct and wrong predictions, with the 10%-90% band.
epochs = history[:, "epoch"]
plot_curves(epochs, {
    "the net on the watched images": {
        "accuracy": history[:, "resistance_accuracy"],
        "prediction flipped": history[:, "resistance_flip_rate"],
    },
    "error-detection AUROC": {
        "Res_N": history[:, "resistance_auroc_res_n"],
        "max-softmax (baseline)": history[:, "resistance_auroc_max_softmax"],
    },
    "Res_N": {
        group: history[:, f"resistance_res_n_q50_{group}"] for group in ("correct", "incorrect")
    } | {
        f"{group} band": [history[:, f"resistance_res_n_q10_{group}"],
                          history[:, f"resistance_res_n_q90_{group}"]]
        for group in ("correct", "incorrect")
    },
})
plt.show()
