"""Pretrained weights in: a torchvision ResNet ``state_dict`` saved as safetensors, loaded into
the Flax ResNet of :mod:`jaxsparse.models.resnet` (no torch needed at run time).

Save the weights once, where torch is installed::

    import torch, torchvision
    from safetensors.torch import save_file
    m = torchvision.models.resnet50(weights="IMAGENET1K_V1")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, "resnet50.safetensors")

then ``--config.model.pretrained=resnet50.safetensors`` (with ``model.name=resnet50``,
``model.stem=imagenet``, ``data.num_classes=1000``), or :func:`load_torchvision`.

The layouts: torchvision's ResNet is v1.5 (the stride on the 3x3 conv of a bottleneck), as the
project's is; a conv weight ``(cout, cin, kh, kw)`` becomes a kernel ``(kh, kw, cin, cout)``,
the classifier ``fc.weight (out, in)`` the ``head`` kernel ``(in, out)``, and each BatchNorm's
``weight``/``bias``/``running_mean``/``running_var`` its ``scale``/``bias`` and
``batch_stats`` ``mean``/``var`` (``num_batches_tracked`` is not used).
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from jaxsparse.pruning.tree_paths import map_with_names

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}
_MODULE = [(re.compile(r"^stem/conv$"), "conv1"), (re.compile(r"^stem/bn$"), "bn1"),
           (re.compile(r"^head$"), "fc"),
           (re.compile(r"^(layer\d+)/(\d+)/proj_conv$"), r"\1.\2.downsample.0"),
           (re.compile(r"^(layer\d+)/(\d+)/proj_bn$"), r"\1.\2.downsample.1"),
           (re.compile(r"^(layer\d+)/(\d+)/((?:conv|bn)\d+)$"), r"\1.\2.\3")]
UNUSED = ("num_batches_tracked",)  # BatchNorm's step counter: not a weight.


def torchvision_key(path: str) -> str:
    """The torchvision ``state_dict`` key of a variables path, e.g.
    ``params/layer1/0/proj_conv/kernel`` -> ``layer1.0.downsample.0.weight``.

    Raises:
        ValueError: for a path that is not part of a ResNet of this project.
    """
    collection, _, rest = path.partition("/")
    module, _, leaf = rest.rpartition("/")
    for pattern, repl in _MODULE:
        if collection in ("params", "batch_stats") and pattern.match(module) and leaf in _LEAF:
            return f"{pattern.sub(repl, module)}.{_LEAF[leaf]}"
    raise ValueError(f"variables path {path!r} has no torchvision ResNet counterpart.")


def _to_flax(path: str, array: np.ndarray) -> np.ndarray:
    if path.endswith("/kernel") and array.ndim == 4:
        return np.transpose(array, (2, 3, 1, 0))  # (cout, cin, kh, kw) -> (kh, kw, cin, cout)
    if path.endswith("/kernel") and array.ndim == 2:
        return array.T  # fc: (out, in) -> (in, out)
    return array


def from_state_dict(state: dict[str, np.ndarray], variables: Any, *, source: str = "") -> Any:
    """``variables`` (``{"params", "batch_stats"}`` of a project ResNet) with every leaf
    replaced by its torchvision weight from ``state``.

    Raises:
        ValueError: naming the first key the model needs and ``state`` lacks, a key whose
            shape differs (both shapes), or the keys of ``state`` the model does not have
            (another architecture).
    """
    where = f" in {source}" if source else ""
    used = set()

    def take(path: str, leaf: Any) -> np.ndarray:
        key = torchvision_key(path)
        if key not in state:
            raise ValueError(f"pretrained weights{where} have no {key!r} (for {path}); is it a "
                             f"torchvision ResNet of the same depth?")
        value = _to_flax(path, np.asarray(state[key]))
        if value.shape != np.shape(leaf):
            raise ValueError(f"pretrained weight {key!r}{where} has shape "
                             f"{tuple(np.shape(state[key]))} ({value.shape} in the Flax "
                             f"layout) but the model's {path} is {tuple(np.shape(leaf))}; "
                             f"check model.name, model.stem, model.width and "
                             f"data.num_classes.")
        used.add(key)
        return value.astype(np.asarray(leaf).dtype)

    out = map_with_names(take, variables)
    extra = sorted(k for k in state if k not in used and k.rsplit(".", 1)[-1] not in UNUSED)
    if extra:
        raise ValueError(f"pretrained weights{where} have {len(extra)} keys the model lacks, "
                         f"e.g. {extra[:3]}; they come from another architecture (for "
                         f"example a deeper ResNet, or bottleneck blocks for a basic-block "
                         f"model).")
    return out


def load_torchvision(path: str, variables: Any) -> Any:
    """Loads a torchvision ResNet ``state_dict`` saved as safetensors into ``variables`` (see
    :func:`from_state_dict`).

    Raises:
        ValueError: for a missing or unreadable file, or weights that do not match.
    """
    if not os.path.isfile(path):
        raise ValueError(f"model.pretrained={path!r}: no such file; give a safetensors file of "
                         f"a torchvision ResNet state_dict.")
    from safetensors.numpy import load_file

    try:
        state = load_file(path)
    except Exception as e:  # noqa: BLE001  (safetensors raises its own error types)
        raise ValueError(f"model.pretrained={path!r} is not a readable safetensors file: "
                         f"{e}") from None
    return from_state_dict(state, variables, source=path)

