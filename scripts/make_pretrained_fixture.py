"""Writes the pretrained-weights test fixtures (needs torch; torch is not a dependency).

    pip install torch==2.13.0 safetensors numpy   # in any environment
    python scripts/make_pretrained_fixture.py tests/models/fixtures

For a basic-block and a bottleneck ResNet of torchvision's architecture (its module and
state-dict names, v1.5: the stride on the bottleneck's 3x3), small (one block per stage, 8 base
channels) and with random weights and random BatchNorm statistics, it saves the state_dict as
``<name>.safetensors`` and its logits in eval mode on a fixed input as ``<name>_logits.npz``
(with the input). torchvision itself is not needed: its ResNet is public and is rebuilt here
with the same names (``conv1``, ``bn1``, ``layerI.J.convK``/``bnK``, ``layerI.J.downsample.0/1``,
``fc``).
"""

import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn


class Basic(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != width:
            self.downsample = nn.Sequential(nn.Conv2d(cin, width, 1, stride, bias=False),
                                            nn.BatchNorm2d(width))

    def forward(self, x):
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        out = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # v1.5
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False),
                                            nn.BatchNorm2d(out))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, block, stages, base=64, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(base)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = base
        for i, n in enumerate(stages):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, base * 2**i, 2 if i > 0 and j == 0 else 1))
                cin = base * 2**i * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_bn(model, gen):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data = torch.rand(m.weight.shape, generator=gen) + 0.5
            m.bias.data = torch.randn(m.bias.shape, generator=gen) * 0.1
            m.running_mean = torch.randn(m.running_mean.shape, generator=gen) * 0.1
            m.running_var = torch.rand(m.running_var.shape, generator=gen) + 0.5


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for name, block in (("resnet_basic_tiny", Basic), ("resnet_bottleneck_tiny", Bottleneck)):
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = ResNet(block, (1, 1, 1, 1), base=8, num_classes=10).eval()
        randomize_bn(model, gen)
        x = torch.randn(2, 3, 64, 64, generator=gen)
        with torch.no_grad():
            logits = model(x).numpy()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(out_dir, f"{name}.safetensors"))
        # The input NHWC, as the Flax model takes it.
        np.savez(os.path.join(out_dir, f"{name}_logits.npz"),
                 x_nhwc=x.numpy().transpose(0, 2, 3, 1), logits=logits)
        print(f"{name}: {len(state)} tensors, logits {logits.shape}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/models/fixtures")
