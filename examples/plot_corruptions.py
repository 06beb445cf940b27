"""
=================================
MNIST-C's corruptions, made here
=================================

:func:`~resistclf.datasets.corrupt` applies the 15 corruptions of MNIST-C (Mu and
Gilmer 2019) at the parameters the published data set was built with, without
downloading anything. It takes grey-scale images in [0, 1] and returns a corrupted copy.
MNIST-C's parameters are in pixels of 28x28 images, so the 8x8 digits are scaled up
first: each pixel becomes a 3x3 block, with a 2-pixel margin, as MNIST centres its
digits in 28x28.
"""

# %%
# Every corruption on three digits
# --------------------------------
import matplotlib.pyplot as plt
import numpy as np

from resistclf.datasets import CORRUPTIONS, corrupt, load_digits_images

X, y = load_digits_images()
X28 = np.pad(np.kron(X[:3], np.ones((3, 3), np.float32)), [(0, 0), (0, 0), (2, 2), (2, 2)])

panels = {"clean": X28, **{name: corrupt(X28, name, seed=0) for name in CORRUPTIONS}}
fig, axes = plt.subplots(4, 4, figsize=(9, 3.6), layout="constrained")
for ax, (name, images) in zip(axes.flat, panels.items()):
    ax.imshow(np.hstack(images[:, 0]), cmap="gray", vmin=0, vmax=1)
    ax.set_title(name.replace("_", " "), fontsize=10)
    ax.set_axis_off()
plt.show()

# %%
# Seeds and subsets
# -----------------
# Each image draws from its own random stream, derived from the seed, the corruption
# and the image's index in its data set: a subset, passed with its indices, or the
# images corrupted batch by batch, come out as they do in the whole set.
whole = corrupt(X28, "zigzag", seed=0)
subset = corrupt(X28[[2]], "zigzag", seed=0, index=[2])
print("subset equals the whole set's image:", np.array_equal(subset[0], whole[2]))
print("another seed gives another zigzag:", not np.array_equal(corrupt(X28, "zigzag", seed=1),
                                                               whole))
