"""Pretrained torchvision weights (safetensors) in the Flax ResNet: exact logits against the
committed fixture (scripts/make_pretrained_fixture.py, made with torch), and clear errors."""

import os

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jaxsparse.models import ResNetTiny, ResNetTinyBottleneck, functional
from jaxsparse.models.pretrained import from_state_dict, load_torchvision, torchvision_key

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
MODELS = {"resnet_basic_tiny": ResNetTiny, "resnet_bottleneck_tiny": ResNetTinyBottleneck}


def _model(name, **kw):
    kw = {"num_classes": 10, "stem": "imagenet", "width": 0.125, **kw}
    return functional(MODELS[name](rngs=nnx.Rngs(0), **kw))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_pretrained_fixture_matches_its_torch_logits(name):
    apply_fn, variables = _model(name)
    loaded = load_torchvision(os.path.join(FIXTURES, f"{name}.safetensors"), variables)
    ref = np.load(os.path.join(FIXTURES, f"{name}_logits.npz"))
    logits = np.asarray(apply_fn(loaded, ref["x_nhwc"], train=False))
    np.testing.assert_allclose(logits, ref["logits"], rtol=1e-5, atol=1e-5)


def test_key_names_follow_torchvision():
    assert torchvision_key("params/stem/conv/kernel") == "conv1.weight"
    assert torchvision_key("batch_stats/stem/bn/var") == "bn1.running_var"
    assert torchvision_key("params/layer3/0/proj_conv/kernel") == "layer3.0.downsample.0.weight"
    assert torchvision_key("params/layer3/0/proj_bn/scale") == "layer3.0.downsample.1.weight"
    assert torchvision_key("params/layer2/1/bn3/bias") == "layer2.1.bn3.bias"
    assert torchvision_key("params/head/kernel") == "fc.weight"
    with pytest.raises(ValueError, match="no torchvision ResNet counterpart"):
        torchvision_key("params/encoder/attn/kernel")


def test_another_architecture_or_shape_names_the_key(tmp_path):
    path = os.path.join(FIXTURES, "resnet_basic_tiny.safetensors")
    _, bottleneck = _model("resnet_bottleneck_tiny")
    with pytest.raises(ValueError, match=r"have no 'layer1\.0\.(conv|bn)3\."):
        load_torchvision(path, bottleneck)
    _, small_stem = _model("resnet_basic_tiny", stem="small")
    with pytest.raises(ValueError, match=r"'conv1.weight'.* has shape \(8, 3, 7, 7\)"):
        load_torchvision(path, small_stem)
    _, classes = _model("resnet_basic_tiny", num_classes=1000)
    with pytest.raises(ValueError, match=r"'fc\.(weight|bias)'.*data.num_classes"):
        load_torchvision(path, classes)
    state = load_file(path)  # A deeper network: keys the model does not have.
    _, basic = _model("resnet_basic_tiny")
    with pytest.raises(ValueError, match=r"1 keys the model lacks, e.g. \['layer1.1.conv1"):
        from_state_dict({**state, "layer1.1.conv1.weight": np.zeros(1)}, basic)
    with pytest.raises(ValueError, match="no such file"):
        load_torchvision(str(tmp_path / "none.safetensors"), basic)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_torchvision(str(tmp_path / "bad.safetensors"), basic)


def test_config_model_pretrained_builds_the_loaded_model():
    from experiments.configs import default
    from jaxsparse.training.experiment import build_model

    c = default.get_config()
    c.model.name, c.model.stem, c.model.width = "resnet_tiny", "imagenet", 0.125
    c.data.num_classes = 10
    c.model.pretrained = os.path.join(FIXTURES, "resnet_basic_tiny.safetensors")
    apply_fn, variables = build_model(c, in_channels=3)
    ref = np.load(os.path.join(FIXTURES, "resnet_basic_tiny_logits.npz"))
    np.testing.assert_allclose(np.asarray(apply_fn(variables, ref["x_nhwc"], train=False)),
                               ref["logits"], rtol=1e-5, atol=1e-5)
