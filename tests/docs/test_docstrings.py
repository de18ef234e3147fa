"""The Examples in every public docstring run and print what they say."""
import doctest
import importlib
import pkgutil

import pytest

import jax_bigsoftmax

MODULES = sorted(m.name for m in pkgutil.walk_packages(jax_bigsoftmax.__path__, "jax_bigsoftmax."))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed"
