"""``keep_freed_memory``: the CLI's allocator settings that spare a page fault per page per forward."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
from frcnn_cli.devices import keep_freed_memory
applied = keep_freed_memory()
def faults_of_a_64_mb_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = bytearray(64 << 20)  # zero-filled: every page is touched
    del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_of_a_64_mb_block()
print(applied, faults_of_a_64_mb_block())
"""


def _probe(env_extra: dict[str, str]) -> tuple[bool, int]:
    import os

    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def _transparent_huge_pages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_block_freed_and_allocated_again_reuses_its_pages():
    applied, faults = _probe({"FRCNN_SYSTEM_MALLOC": "0"})
    if not applied:
        pytest.skip("not glibc")
    assert faults < 1000  # 64 MB are 16384 pages of 4 KB: the second block reuses the first one's
    applied, faults = _probe({"FRCNN_SYSTEM_MALLOC": "1"})  # the escape hatch keeps glibc's defaults
    assert not applied
    if "[always]" not in _transparent_huge_pages():
        assert faults > 8000  # mapped afresh: a fault per 4 KB page
