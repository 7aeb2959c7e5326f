"""Shared fixtures and ``require_*`` gates (hardware/services are skipped with a reason)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _has_tvm() -> bool:
    try:
        import tvm  # noqa: F401

        return True
    except ImportError:
        return False


require_cuda = pytest.mark.skipif(not _has_cuda(), reason="needs an NVIDIA GPU with CUDA")
require_tvm = pytest.mark.skipif(not _has_tvm(), reason="needs apache-tvm (pip install hwloop[tvm])")
require_sshd = pytest.mark.skipif(shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists(),
                                  reason="needs OpenSSH server (Debian openssh-server)")


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs with the repo's device profiles but writes nothing into the checkout."""
    monkeypatch.setenv("HWLOOP_DEVICES_DIR", str(REPO / "devices"))
    monkeypatch.setenv("HWLOOP_HOME", str(tmp_path / "hwloop-home"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def digits_pretrained():  # type: ignore[no-untyped-def]
    """(task, model, space): digits (256 train / 256 val images) and small_cnn pre-trained 2 epochs (seed 0), with
    its search space of channels and weight bits (8-bit activations); one per test module (tests may change it)."""
    import torch

    from hwloop.search.space import SearchSpace, SpaceOptions
    from hwloop.search.train import make_task, train_epochs

    task = make_task("digits", "small_cnn", train_limit=256, val_limit=256, seed=0)
    torch.manual_seed(0)
    model = task.ref.build()
    train_epochs(model, task.train, 2, 0.05)
    model.eval()
    space = SearchSpace.from_ref(task.ref, SpaceOptions(bits=True, a_bits=8), model=model)
    return task, model, space


@pytest.fixture(scope="session")
def postgres_url():  # type: ignore[no-untyped-def]
    """URL of a throw-away PostgreSQL 15 server's admin database (tests/pg.py); skipped when unavailable.

    Tests create their own databases with ``pg.create_database(postgres_url)``.
    """
    import importlib.util
    import sys

    pg = sys.modules.get("pg")
    if pg is None or not hasattr(pg, "PostgresServer"):
        spec = importlib.util.spec_from_file_location("pg", Path(__file__).with_name("pg.py"))
        assert spec is not None and spec.loader is not None
        pg = importlib.util.module_from_spec(spec)
        sys.modules["pg"] = pg
        spec.loader.exec_module(pg)
    reason = pg.pg_available()
    if reason:
        pytest.skip(reason)
    server = pg.PostgresServer.start()
    try:
        yield server.url
    finally:
        server.stop()
