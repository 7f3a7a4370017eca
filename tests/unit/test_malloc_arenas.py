"""The cloud caps glibc malloc arenas (common.malloc_arenas); harmless elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt arenas are glibc's")
def test_mallopt_is_accepted_in_a_fresh_process() -> None:
    code = "from common.malloc_arenas import limit_malloc_arenas as f; print(f(2))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "True"
