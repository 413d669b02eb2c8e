"""LeNet-5 (Caffe variant) and LeNet-300-100, exactly as in Han et al. (Deep Compression, Table 1)."""

from __future__ import annotations

from torch import nn


class LeNet5(nn.Module):
    """conv 1->20 5x5, maxpool 2, conv 20->50 5x5, maxpool 2, fc 800->500, ReLU, fc 500->10.

    The Caffe model has no activation after the convolutions; 431,080 parameters.
    """

    input_shape = (1, 28, 28)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)     # (B,1,28,28) -> (B,20,24,24)
        self.pool1 = nn.MaxPool2d(2)         # -> (B,20,12,12)
        self.conv2 = nn.Conv2d(20, 50, 5)    # -> (B,50,8,8)
        self.pool2 = nn.MaxPool2d(2)         # -> (B,50,4,4)
        self.flatten = nn.Flatten()          # -> (B,800)
        self.fc1 = nn.Linear(800, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x):
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class LeNet300100(nn.Module):
    """784 -> 300 -> 100 -> 10 with ReLU; 266,610 parameters."""

    input_shape = (784,)

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = x.flatten(1)
        return self.fc3(self.relu(self.fc2(self.relu(self.fc1(x)))))


# name -> (constructor, whether it takes flat MNIST rows)
MODELS = {"lenet5": (LeNet5, False), "lenet300": (LeNet300100, True)}


def build_model(name: str) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; bundled models are {sorted(MODELS)}")
    return MODELS[name][0]()
