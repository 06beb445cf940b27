"""Reference networks: the write-up's "simple AlexNet-style" CNN, and an MLP."""

import torch
from skorch import NeuralNetClassifier
from torch import nn


class SimpleCNN(nn.Module):
    """A small AlexNet-style CNN, like the write-up's reference networks.

    Two blocks of 5x5 convolution (padding 2), ReLU and 2x2 max-pooling, then a
    ReLU hidden layer with dropout and a linear layer returning logits.

    Parameters
    ----------
    n_classes : int, default=10
        Number of logits.
    in_channels : int, default=1
        Channels of the input images.
    image_size : int, default=28
        Height and width of the (square) input images; a multiple of 4.
    channels : tuple of two ints, default=(16, 32)
        Output channels of the two convolutions.
    hidden : int, default=128
        Width of the hidden fully-connected layer.
    dropout : float, default=0.5
        Dropout before the last layer (active in training only).
    """

    def __init__(self, n_classes=10, in_channels=1, image_size=28, channels=(16, 32),
                 hidden=128, dropout=0.5):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4; got {image_size}.")
        c1, c2 = channels
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(c2 * (image_size // 4) ** 2, hidden), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden, n_classes),
        )

    def forward(self, x):
        return self.layers(x)


class MLP(nn.Module):
    """A multi-layer perceptron on flattened inputs, returning logits.

    Parameters
    ----------
    n_features : int
        Number of input values per sample (784 for 28x28 images).
    n_classes : int, default=10
        Number of logits.
    hidden : tuple of int, default=(256, 128)
        Widths of the ReLU hidden layers.
    """

    def __init__(self, n_features, n_classes=10, hidden=(256, 128)):
        super().__init__()
        widths = [n_features, *hidden]
        layers = [nn.Flatten()]
        for n_in, n_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], n_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def make_net(module=SimpleCNN, *, max_epochs=10, lr=1e-3, batch_size=128, device="cpu",
             verbose=0, **module_params):
    """A skorch classifier around ``module``, trained with Adam and cross-entropy.

    Parameters
    ----------
    module : torch.nn.Module class, default=SimpleCNN
        The module to train; it must return logits.
    max_epochs : int, default=10
    lr : float, default=1e-3
        Adam's learning rate.
    batch_size : int, default=128
    device : str, default="cpu"
    verbose : int, default=0
        skorch's epoch log; 0 is silent.
    **module_params
        Passed to the module, for example ``n_classes=10`` or ``image_size=8``.

    Returns
    -------
    net : skorch.NeuralNetClassifier
        Not trained; it holds out no validation split (``train_split=None``).
    """
    return NeuralNetClassifier(
        module,
        criterion=nn.CrossEntropyLoss,
        optimizer=torch.optim.Adam,
        lr=lr,
        max_epochs=max_epochs,
        batch_size=batch_size,
        train_split=None,
        device=device,
        verbose=verbose,
        **{f"module__{name}": value for name, value in module_params.items()},
    )
