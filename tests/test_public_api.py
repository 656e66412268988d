"""The public surface: the root's names come from the subpackages; renamed names warn."""

import warnings

import pytest

import jaxsparse as js
from jaxsparse import compiler, pruning
from jaxsparse.training import methods


def test_root_exports_are_the_subpackages_exports():
    assert set(js.__all__) == set(compiler.__all__) | set(pruning.__all__)
    for name in js.__all__:
        assert getattr(js, name) is (getattr(compiler, name, None) or getattr(pruning, name))
    for name in ("sparsify", "transforms", "measured_sparsity", "sr_ste", "ste_params",
                 "masked_pruning", "channel_groups", "UnsupportedPrimitiveError"):
        assert name in js.__all__


@pytest.mark.parametrize("module,old,new", [
    (js, "compile", "sparsify"), (js, "optax", "transforms"),
    (js, "sparsity", "measured_sparsity"), (compiler, "LayerRow", "CompiledLayer")])
def test_renamed_names_work_and_warn(module, old, new):
    name = module.__name__
    with pytest.warns(DeprecationWarning, match=f"{name}.{old} is deprecated.*use {name}.{new}"):
        got = getattr(module, old)
    assert got is getattr(module, new)


def test_new_names_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        js.sparsify, js.transforms.masked_pruning, js.measured_sparsity  # noqa: B018


def test_unknown_attribute():
    with pytest.raises(AttributeError, match="no attribute 'compyle'"):
        js.compyle  # noqa: B018


def test_methods_registry():
    assert methods.names() == ("none", "one_shot", "gradual", "sr_ste")

    @methods.register("test_only")
    def _build(a):
        return methods.PruningSetup(a.tx, None, None)

    try:
        assert "test_only" in methods.names()
    finally:
        methods._BUILDERS.pop("test_only")
