"""Fixtures of the fault-injection suite: one fork server for the whole session, and each command's argv."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import Zygote, zygote_env
from tests.faults.scenarios import Suite


@pytest.fixture(scope="session")
def zygote(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    root = tmp_path_factory.mktemp("zygote")
    server = Zygote(zygote_env(root / "hf-home"), root / "logs")
    yield server
    server.close()


@pytest.fixture(scope="session")
def suite(zygote: Zygote, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Suite:
    return Suite(zygote, tiny_model_dir, tmp_path_factory.mktemp("faults"))
