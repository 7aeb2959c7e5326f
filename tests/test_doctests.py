"""Every ``>>>`` example in ``hwloop/`` runs here: one case per module.

Modules are found with ``pkgutil.walk_packages``, so a module added later is picked up without
editing this file (``__main__`` modules are left out: importing one starts the CLI). ELLIPSIS and
NORMALIZE_WHITESPACE are on for every example. ``+SKIP`` marks the examples that need a device or
timing (GPU, TVM builds, CPU timing, the simulated-device measurement of a whole method run), data
that is not in the checkout (the CIFAR-10 tarball, an image folder, a saved predictor) or minutes of
training (a search spec, an Optuna objective); every other example runs here.
"""
from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import hwloop

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules() -> list[str]:
    names = [hwloop.__name__]
    for info in pkgutil.walk_packages(hwloop.__path__, prefix=hwloop.__name__ + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__":
            continue  # running it would start the CLI
        names.append(info.name)
    return sorted(names)


MODULES = _modules()


def test_every_module_is_collected() -> None:
    # walk_packages must see the subpackages, not only the top level
    assert "hwloop.search.report" in MODULES and "hwloop.methods.base" in MODULES
    assert len(MODULES) > 50


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str, tmp_path, monkeypatch) -> None:
    # examples that write (a store, a plan) do so under a fresh HWLOOP_HOME and working directory
    monkeypatch.setenv("HWLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    tests = finder.find(module, name)  # globals: a copy of the module's, as doctest.testmod does
    for test in sorted(tests, key=lambda t: t.name):
        if test.examples:
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples in {name} failed (see above)"
