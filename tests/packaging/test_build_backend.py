"""build_backend/medkv_build.py's import rewrite and staging, without pip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "build_backend"))
import medkv_build  # noqa: E402


def test_rewrites_absolute_imports_of_the_repository_packages_only() -> None:
    src = (
        "from node.config import load\n"
        "from proto.medkv.v1 import kv_pb2 as k\n"
        "if True:\n    from client import (\n        Client,\n    )\n"
        "from . import sibling\n"
        "from nodex import y\n"
        "from consensus import raft\n"
        "from typing import Any\n"
    )
    out = medkv_build.rewrite_imports(src, "x.py")
    assert out.splitlines() == [
        "from medkv.node.config import load",
        "from medkv.proto.medkv.v1 import kv_pb2 as k",
        "if True:",
        "    from medkv.client import (",
        "        Client,",
        "    )",
        "from . import sibling",
        "from nodex import y",
        "from medkv.consensus import raft",
        "from typing import Any",
    ]


@pytest.mark.parametrize("src", ["import node.config\n", "import client\n",
                                 "def f():\n    import proto.placement as p\n"])
def test_a_statement_it_cannot_relocate_fails_the_build(src: str) -> None:
    with pytest.raises(medkv_build.StagingError, match=r"x\.py"):
        medkv_build.rewrite_imports(src, "x.py")


def test_staged_tree_has_one_top_level_package(tmp_path: Path) -> None:
    medkv_build.stage(ROOT, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "medkv", "pyproject.toml"]
    assert sorted(p.name for p in (tmp_path / "medkv").iterdir()) == [
        "__init__.py", "client", "consensus", "jepsen_like", "node", "proto"]
    pyproject = (tmp_path / "pyproject.toml").read_text()
    assert 'medkv = "medkv.client.cli:main"' in pyproject and 'include = ["medkv", "medkv.*"]' in pyproject
    assert "from medkv.client" in (tmp_path / "medkv" / "client" / "cli.py").read_text()
