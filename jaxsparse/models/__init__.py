"""Models: the ResNet family (Flax NNX) and the pure-function wrapper."""

from jaxsparse.models.functional import functional
from jaxsparse.models.resnet import (
    MODELS,
    BasicBlock,
    BottleneckBlock,
    ResNet,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNetTiny,
    ResNetTinyBottleneck,
    create_model,
)

__all__ = [
    "MODELS",
    "BasicBlock",
    "BottleneckBlock",
    "ResNet",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNet101",
    "ResNetTiny",
    "ResNetTinyBottleneck",
    "create_model",
    "functional",
]
