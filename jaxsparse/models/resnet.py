"""ResNet family (v1.5) as Flax NNX modules.

One generic :class:`ResNet`; the named variants are partial applications of it, as in the flax
ImageNet example. Layout follows Flax: NHWC activations, conv kernels ``(kh, kw, cin, cout)``.

Parameter names are chosen to be readable in pruning reports: ``stem/conv``, ``stem/bn``,
``layer1/0/conv1``, ``layer1/0/proj_conv``, ``head``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

STEMS = ("imagenet", "small")


def _conv(cin: int, cout: int, k: int, stride: int, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        cin,
        cout,
        kernel_size=(k, k),
        strides=(stride, stride),
        padding=[(k // 2, k // 2)] * 2,
        use_bias=False,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def _bn(c: int, dtype, rngs: nnx.Rngs, zero_init: bool = False) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        c,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nnx.initializers.zeros if zero_init else nnx.initializers.ones,
        rngs=rngs,
    )


class _Residual(nnx.Module):
    """A residual block: its convs (each followed by BatchNorm, ReLU between them, the last
    BatchNorm zero-initialised) plus an identity or 1x1 projection shortcut, then ReLU.

    Subclasses give ``layers(cin, width, stride) -> [(cin, cout, kernel, stride), ...]``;
    the attributes are ``conv1``/``bn1``, ``conv2``/``bn2``, ... and ``proj_conv``/``proj_bn``
    (the names checkpoints and pruning paths use).
    """

    expansion = 1

    @staticmethod
    def layers(cin: int, width: int, stride: int) -> list[tuple[int, int, int, int]]:
        raise NotImplementedError

    def __init__(self, cin: int, width: int, stride: int, *, dtype, rngs: nnx.Rngs):
        cout = width * self.expansion
        spec = self.layers(cin, width, stride)
        self.depth = len(spec)
        for i, (a, b, k, s) in enumerate(spec, start=1):
            setattr(self, f"conv{i}", _conv(a, b, k, s, dtype, rngs))
            setattr(self, f"bn{i}", _bn(b, dtype, rngs, zero_init=i == len(spec)))
        if stride != 1 or cin != cout:
            self.proj_conv = _conv(cin, cout, 1, stride, dtype, rngs)
            self.proj_bn = _bn(cout, dtype, rngs)
        else:
            self.proj_conv = None
            self.proj_bn = None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        ura = not train
        y = x
        for i in range(1, self.depth + 1):
            y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(y), use_running_average=ura)
            if i < self.depth:
                y = nnx.relu(y)
        if self.proj_conv is not None:
            x = self.proj_bn(self.proj_conv(x), use_running_average=ura)
        return nnx.relu(x + y)


class BasicBlock(_Residual):
    """Two 3x3 convs with an identity or 1x1 projection shortcut (ResNet-18/34)."""

    expansion = 1

    @staticmethod
    def layers(cin: int, width: int, stride: int) -> list[tuple[int, int, int, int]]:
        return [(cin, width, 3, stride), (width, width, 3, 1)]


class BottleneckBlock(_Residual):
    """1x1 reduce, 3x3 (carrying the stride, v1.5), 1x1 expand (ResNet-50/101)."""

    expansion = 4

    @staticmethod
    def layers(cin: int, width: int, stride: int) -> list[tuple[int, int, int, int]]:
        return [(cin, width, 1, 1), (width, width, 3, stride), (width, 4 * width, 1, 1)]


class Stem(nnx.Module):
    """``imagenet``: 7x7/2 conv + 3x3/2 max-pool. ``small``: 3x3/1 conv, no pool (28/32 px)."""

    def __init__(self, kind: str, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
        if kind not in STEMS:
            raise ValueError(f"stem={kind!r} is not valid; use one of {STEMS}.")
        self.kind = kind
        self.conv = _conv(cin, cout, 7 if kind == "imagenet" else 3, 2 if kind == "imagenet" else 1,
                          dtype, rngs)
        self.bn = _bn(cout, dtype, rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = nnx.relu(self.bn(self.conv(x), use_running_average=not train))
        if self.kind == "imagenet":
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


class ResNet(nnx.Module):
    """A ResNet v1.5 classifier.

    Args:
        stage_sizes: number of blocks in each of the four stages.
        block_cls: :class:`BasicBlock` or :class:`BottleneckBlock`.
        num_classes: size of the classifier output.
        stem: ``"imagenet"`` (224x224 inputs) or ``"small"`` (28x28 / 32x32 inputs).
        width: multiplier on every layer's channel count (1.0 is the standard network).
        in_channels: channels of the input image (3 for RGB, 1 for Fashion-MNIST).
        dtype: computation dtype (e.g. ``jnp.bfloat16`` for mixed precision); params stay f32.
        rngs: NNX random streams for initialisation.
    """

    def __init__(
        self,
        stage_sizes: Sequence[int],
        block_cls: type[BasicBlock] | type[BottleneckBlock],
        *,
        num_classes: int = 1000,
        stem: str = "imagenet",
        width: float = 1.0,
        in_channels: int = 3,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be a positive integer.")
        if not width > 0:
            raise ValueError(f"width={width} must be a positive multiplier (1.0 = standard).")
        base = max(1, int(round(64 * width)))
        self.stem = Stem(stem, in_channels, base, dtype=dtype, rngs=rngs)
        cin = base
        for i, n_blocks in enumerate(stage_sizes):
            w = base * 2**i
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block_cls(cin, w, stride, dtype=dtype, rngs=rngs))
                cin = w * block_cls.expansion
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.num_stages = len(stage_sizes)
        self.head = nnx.Linear(cin, num_classes, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = self.stem(x, train)
        for i in range(self.num_stages):
            for block in getattr(self, f"layer{i + 1}"):
                x = block(x, train)
        x = jnp.mean(x, axis=(1, 2))
        return self.head(x).astype(jnp.float32)


ResNet18 = functools.partial(ResNet, (2, 2, 2, 2), BasicBlock)
ResNet34 = functools.partial(ResNet, (3, 4, 6, 3), BasicBlock)
ResNet50 = functools.partial(ResNet, (3, 4, 6, 3), BottleneckBlock)
ResNet101 = functools.partial(ResNet, (3, 4, 23, 3), BottleneckBlock)
# Tiny variants for tests: one block per stage.
ResNetTiny = functools.partial(ResNet, (1, 1, 1, 1), BasicBlock)
ResNetTinyBottleneck = functools.partial(ResNet, (1, 1, 1, 1), BottleneckBlock)

MODELS = {
    "resnet18": ResNet18,
    "resnet34": ResNet34,
    "resnet50": ResNet50,
    "resnet101": ResNet101,
    "resnet_tiny": ResNetTiny,
    "resnet_tiny_bottleneck": ResNetTinyBottleneck,
}


def create_model(name: str, **kwargs) -> ResNet:
    """Builds a model by registry name (see :data:`MODELS`).

    Raises:
        ValueError: if ``name`` is not a registered model.
    """
    if name not in MODELS:
        raise ValueError(f"model={name!r} is not known; valid names: {sorted(MODELS)}.")
    return MODELS[name](**kwargs)
