"""What the attack and the estimator take as X: memory-mapped arrays and Datasets, read a
batch at a time; and preprocessing, so that X, |r| and clip stay in pixel units."""

import tracemalloc

import numpy as np
import pytest
import torch
from sklearn.base import clone
from torch import nn
from torch.utils.data import Dataset, IterableDataset, TensorDataset
from torchvision.transforms import Normalize

from resistclf import AttackCache, ResistanceAttack, ResistanceClassifier

FIELDS = ["res_n", "res_max", "res_min", "res_mean", "flipped", "adversarial_class", "c0",
          "conf0"]
ATTACK = ResistanceAttack(max_iter=40, batch_size=16)


def assert_identical(result, expected):
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(result, name), getattr(expected, name),
                                      err_msg=name)


@pytest.fixture(scope="module")
def images(digits):
    return digits[2][:40]


@pytest.fixture(scope="module")
def memmap(images, tmp_path_factory):
    path = tmp_path_factory.mktemp("memmap") / "images.npy"
    np.save(path, images)
    return np.load(path, mmap_mode="r")


class CountingDataset(Dataset):
    """Images, labelled as torchvision's datasets return them (or bare, with
    ``labelled=False``); counts the items read."""

    def __init__(self, images, as_array=False, labelled=True):
        self.images, self.as_array, self.labelled, self.reads = images, as_array, labelled, 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.reads += 1
        image = self.images[i]
        image = image if self.as_array else torch.from_numpy(image.copy())
        return (image, 0) if self.labelled else image


class Recorder(nn.Module):
    """Runs ``module`` and records what ``on_forward`` returns at each call."""

    def __init__(self, module, on_forward):
        super().__init__()
        self.module, self.on_forward, self.records = module, on_forward, []

    def forward(self, x):
        self.records.append(self.on_forward(x))
        return self.module(x)


def test_attack_memmap_gives_the_tensor_results(trained_cnn, images, memmap):
    expected = ATTACK(trained_cnn.module_, torch.tensor(images))
    assert_identical(ATTACK(trained_cnn.module_, memmap), expected)
    assert_identical(ATTACK(trained_cnn.module_, images.astype(np.float64)), expected)
    # Files written on another machine may be big-endian; torch reads native order only.
    assert_identical(ATTACK(trained_cnn.module_, images.astype(">f4")), expected)


def test_attack_auto_batch_size_reads_a_dataset(trained_cnn, images):
    # "auto" times batches it reads by position from X, here a Dataset.
    attack = clone(ATTACK).set_params(max_iter=3, batch_size="auto")
    result = attack(trained_cnn.module_, CountingDataset(images[:20]))
    np.testing.assert_array_equal(result.c0, trained_cnn.predict(images[:20]))


@pytest.mark.parametrize("labelled", [True, False])
@pytest.mark.parametrize("as_array", [False, True])
def test_attack_dataset_gives_the_tensor_results_reading_a_batch_at_a_time(
        trained_cnn, images, as_array, labelled):
    expected = ATTACK(trained_cnn.module_, torch.tensor(images))
    dataset = CountingDataset(images, as_array=as_array, labelled=labelled)
    module = Recorder(trained_cnn.module_, lambda x: dataset.reads)
    assert_identical(ATTACK(module, dataset), expected)
    # One item to learn the images' shape, then a batch before the first step.
    assert module.records[0] == 1 + ATTACK.batch_size
    assert dataset.reads == 1 + len(images)


def test_attack_n_jobs_reads_dataset_and_memmap(trained_cnn, images, memmap):
    attack = clone(ATTACK).set_params(n_jobs=2)
    expected = ATTACK(trained_cnn.module_, torch.tensor(images))
    assert_identical(attack(trained_cnn.module_, CountingDataset(images)), expected)
    assert_identical(attack(trained_cnn.module_, memmap), expected)


class Unsized(Dataset):
    def __getitem__(self, i):
        return torch.zeros(1, 8, 8)


class Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(1, 8, 8)


class Strings(Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return "image.png", 0


class Ragged(Dataset):
    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(1, 8, 8 + i)


class LastDiffers(Dataset):
    """Its last image alone has another shape, and is read in a batch of its own."""

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return torch.zeros(1, 8, 8 if i < 2 else 9)


@pytest.mark.parametrize(
    "X, error, match",
    [
        (Stream(), TypeError, "map-style Dataset"),
        (Unsized(), TypeError, "map-style Dataset"),
        (Strings(), TypeError, "Dataset items must be images"),
        (Ragged(), ValueError, "images differ in shape"),
        (LastDiffers(), ValueError, r"images differ in shape: \[\(1, 8, 8\), \(1, 8, 9\)\]"),
        (TensorDataset(torch.zeros(0, 4)), ValueError, "at least one sample"),
        (np.array([["a"] * 4] * 2), ValueError, "must hold numbers"),
        (np.zeros(4, dtype=np.float32), ValueError, "shape"),
    ],
)
def test_attack_bad_dataset_or_array_raises(X, error, match):
    with pytest.raises(error, match=match):
        ResistanceAttack(max_iter=2, batch_size=2)(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)),
                                                   X)


def test_attack_memmap_is_not_modified(trained_cnn, memmap, images):
    ATTACK(trained_cnn.module_, memmap)
    np.testing.assert_array_equal(memmap, images)
    assert not memmap.flags.writeable


def _numpy_peak(function):
    """The largest memory that Python and NumPy held at once while ``function`` ran, above
    what they held before (torch's own allocations are not traced)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        function()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("cache", [None, AttackCache()])
def test_classifier_reads_a_memmap_a_batch_at_a_time(tmp_path, cache):
    rng = np.random.RandomState(0)
    X = rng.rand(4000, 1, 32, 32).astype(np.float32)  # 16 MB
    np.save(tmp_path / "X.npy", X)
    memmap = np.load(tmp_path / "X.npy", mmap_mode="r")
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 3))
    y = rng.randint(3, size=100)

    def fitted(cache):
        return ResistanceClassifier(module, attack=ResistanceAttack(max_iter=2, batch_size=32),
                                    cache=cache, random_state=0).fit(X[:100], y)

    # Expected from another classifier, so that neither the cache nor the classifier's memory
    # of its last inputs holds the memmap's results yet: they must be attacked.
    expected = fitted(None).transform(X)
    clf = fitted(cache)
    peak = _numpy_peak(lambda: (clf.transform(memmap), clf.predict_proba(memmap)))
    # The attack reads eight batches of 128 kB at a time (1 MB); a copy of X would be 16 MB.
    assert peak < X.nbytes / 4, f"{peak} bytes at once"
    np.testing.assert_array_equal(clf.transform(memmap), expected)


# ---------------------------------------------------------------- preprocessing

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def rgb_images():
    return torch.rand(24, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def rgb_module():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def test_preprocessing_equals_a_module_that_normalises_inside(rgb_module, rgb_images):
    """torchvision's Normalize in the module, or preprocessing around it: the same attack."""
    inside = nn.Sequential(Normalize(MEAN, STD), rgb_module)
    attack = ResistanceAttack(max_iter=60, batch_size=8, clip=(0, 1))
    expected = attack(inside, rgb_images, return_trace=True)
    result = attack.set_params(preprocessing={"mean": MEAN, "std": STD, "axis": -3})(
        rgb_module, rgb_images, return_trace=True)
    assert_identical(result, expected)
    np.testing.assert_array_equal(result.norm_trace, expected.norm_trace)
    assert result.flipped.any()


def test_preprocessing_broadcasts_as_numpy_does_without_axis(rgb_module, rgb_images):
    attack = ResistanceAttack(max_iter=30, batch_size=8)
    with_axis = attack.set_params(preprocessing={"mean": MEAN, "std": STD, "axis": -3})(
        rgb_module, rgb_images)
    shaped = np.array([MEAN, STD])[:, :, None, None]
    broadcast = ResistanceAttack(max_iter=30, batch_size=8, preprocessing={
        "mean": shaped[0].tolist(), "std": shaped[1].tolist()})(rgb_module, rgb_images)
    assert_identical(broadcast, with_axis)


def test_preprocessing_keeps_x_r_and_clip_in_pixel_units(rgb_module, rgb_images):
    mean, std = np.array(MEAN)[:, None, None], np.array(STD)[:, None, None]
    module = Recorder(rgb_module, lambda x: x.detach().clone())
    attack = ResistanceAttack(max_iter=40, batch_size=24, clip=(0.2, 0.8),
                              preprocessing={"mean": MEAN, "std": STD, "axis": -3})
    result = attack(module, rgb_images, return_trace=True)
    pixels = [record.numpy() * std + mean for record in module.records]
    # The module sees (x + r - mean) / std; x + r stays in the clip box, in pixels.
    np.testing.assert_allclose(pixels[0], rgb_images.numpy(), atol=1e-6)
    for step in pixels[1:]:
        assert step.min() >= 0.2 - 1e-6 and step.max() <= 0.8 + 1e-6
    # |r| is measured in pixels: the norm of (x + r) - x.
    r_norm = np.linalg.norm((pixels[-1] - rgb_images.numpy()).reshape(24, -1), axis=1)
    np.testing.assert_allclose(result.norm_trace[:, -1], r_norm, rtol=1e-4, atol=1e-5)


def test_preprocessing_leaves_the_module_alone(rgb_module, rgb_images):
    keys = list(rgb_module.state_dict())
    ResistanceAttack(max_iter=3, batch_size=8, preprocessing={"mean": 0.5, "std": 0.2})(
        rgb_module, rgb_images)
    assert list(rgb_module.state_dict()) == keys
    assert isinstance(rgb_module, nn.Sequential) and len(rgb_module) == 4


def test_classifier_applies_preprocessing_to_predictions_and_attacks(rgb_module, rgb_images):
    inside = nn.Sequential(Normalize(MEAN, STD), rgb_module)
    y = torch.randint(5, (24,), generator=torch.Generator().manual_seed(1)).numpy()
    X = rgb_images.numpy()
    attack = ResistanceAttack(max_iter=20, batch_size=8)
    plain = ResistanceClassifier(inside, attack=attack, random_state=0).fit(X, y)
    wrapped = ResistanceClassifier(
        rgb_module, attack=clone(attack).set_params(preprocessing={"mean": MEAN, "std": STD,
                                                                       "axis": -3}),
        random_state=0).fit(X, y)
    np.testing.assert_array_equal(wrapped.predict_proba(X), plain.predict_proba(X))
    np.testing.assert_array_equal(wrapped.transform(X), plain.transform(X))
    np.testing.assert_array_equal(wrapped.predict_topk(X, k=3), plain.predict_topk(X, k=3))


@pytest.mark.parametrize(
    "preprocessing, match",
    [
        ({"mean": 0.5, "scale": 2.0}, "takes the keys mean, std and axis"),
        ({"std": 0.0}, "std must be positive and finite"),
        ({"std": [0.2, -0.1, 0.2], "axis": -3}, "std must be positive and finite"),
        ({"std": float("inf")}, "std must be positive and finite"),
        ({"std": float("nan")}, "std must be positive and finite"),
        ({"mean": float("nan")}, "mean finite"),
        ({"mean": "zero"}, "numbers or sequences of numbers"),
        ({"mean": [[0.5, 0.5], [0.5]]}, "numbers or sequences of numbers"),
        ({"mean": MEAN, "axis": 1}, "axis must be a negative integer"),
        ({"mean": MEAN, "axis": -1.0}, "axis must be a negative integer"),
        ({"mean": [MEAN], "axis": -3}, "one-dimensional mean and std"),
        ({"mean": MEAN}, r"does not broadcast to a sample of shape \(3, 8, 8\)"),
        ({"mean": MEAN, "axis": -2}, "does not broadcast"),
        ({"std": [0.5, 0.5], "axis": -3}, "does not broadcast"),
        ({"mean": MEAN, "axis": -5}, "does not broadcast"),
    ],
)
def test_attack_bad_preprocessing_raises(rgb_module, rgb_images, preprocessing, match):
    with pytest.raises(ValueError, match=match):
        ResistanceAttack(max_iter=2, batch_size=8, preprocessing=preprocessing)(
            rgb_module, rgb_images)


def test_attack_preprocessing_must_be_a_dict(rgb_module, rgb_images):
    with pytest.raises(ValueError, match="preprocessing"):
        ResistanceAttack(preprocessing=(0.5, 0.2))(rgb_module, rgb_images)
