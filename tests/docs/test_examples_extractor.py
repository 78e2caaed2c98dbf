"""tests/docs/examples.py without a cluster: what it extracts, what it skips
and why, what it substitutes, and that a broken example fails (planted in a
temporary copy of the real docs, so the check is the one CI runs)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.docs.examples import (
    Context,
    DocError,
    collect,
    doc_files,
    parse,
    report,
    run_block,
    substitute,
)

ROOT = Path(__file__).resolve().parents[2]

PAGE = """# A page

```sh
echo one
```

<!-- not-run: needs three hosts -->
```bash
ssh db1 true
```

```toml
key = 1
```

- a list item:

  ```python
  print("indented")
  ```

```python
print("two")
```
"""


def ctx(tmp_path: Path) -> Context:
    return Context(root=ROOT, data_dir=tmp_path / "medkv", base_port=30000,
                   venv=Path(sys.prefix), scratch=tmp_path / "work")


def test_blocks_languages_markers_and_indentation(tmp_path: Path) -> None:
    blocks = parse(tmp_path / "page.md", PAGE)
    assert [(b.line, b.language, b.runnable) for b in blocks] == [
        (3, "shell", True), (8, "shell", False), (12, "toml", False),
        (18, "python", True), (22, "python", True),
    ]
    assert blocks[1].not_run == "needs three hosts"
    assert blocks[3].code == 'print("indented")\n'


@pytest.mark.parametrize("page", [
    "<!-- not-run -->\n```sh\ntrue\n```\n",          # a marker without its reason
    "<!-- not-run:   -->\n```sh\ntrue\n```\n",
    "```sh\ntrue\n",                                   # never closed
])
def test_malformed_pages_are_errors(tmp_path: Path, page: str) -> None:
    with pytest.raises(DocError):
        parse(tmp_path / "bad.md", page)


def test_substitutions(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    code = substitute(
        "scripts/cluster up --nodes 3 --data-dir /tmp/medkv\n"
        ".venv/bin/medkv --addr 127.0.0.1:7102 status\n"
        "/opt/medkv/.venv/bin/medkv x; export MEDKV_ADDR=10.0.0.11:7101,10.0.0.13:7101\n"
        "MEDKV_TLS_DIR=~/medkv-tls MEDKV_TOKEN=@~/.medkv/admin.token\n"
        'TlsConfig.from_dir("/etc/clinic-app/medkv-tls"), token="@/run/clinic-app/token"\n'
        "--host 10.0.0.1$i /tmp/medkvx\n", c)
    d, v, s = c.data_dir, sys.prefix, ROOT / "scripts"
    assert code.splitlines() == [
        f"{s}/cluster up --base-port 30000 --nodes 3 --data-dir {d}",
        f"{v}/bin/medkv --addr 127.0.0.1:30002 status",
        f"{v}/bin/medkv x; export MEDKV_ADDR=127.0.0.1:30001,127.0.0.1:30003",
        f"MEDKV_TLS_DIR={d}/certs MEDKV_TOKEN=@{d}/tokens/admin.token",
        f'TlsConfig.from_dir("{d}/certs"), token="@{d}/tokens/clinician.token"',
        "--host 10.0.0.1$i /tmp/medkvx",
    ]


def test_every_page_parses_and_every_marker_has_a_reason() -> None:
    blocks = collect(ROOT)
    assert {b.path.name for b in blocks if b.runnable} >= {"README.md", "multi-host.md"}
    for b in blocks:
        assert b.not_run is None or len(b.not_run) > 10, b.where(ROOT)


def test_a_planted_broken_example_fails(tmp_path: Path) -> None:
    """Copy the real pages, break one shell and one Python example, and run the
    planted blocks as the live test does: each fails and the report names it."""
    copy = tmp_path / "repo"
    (copy / "docs").mkdir(parents=True)
    for page in doc_files(ROOT):
        shutil.copy(page, copy / page.relative_to(ROOT))
    readme = copy / "README.md"
    before = len(collect(copy))
    readme.write_text(readme.read_text() + "\n```sh\nmedkv status --no-such-option\necho after\n```\n"
                      "\n```python\nfrom client import NoSuchThing\n```\n"
                      "\n```sh\nfalse | true\n```\n")
    blocks = collect(copy)
    assert len(blocks) == before + 3
    planted = [b for b in blocks if b.path == readme][-3:]
    c = Context(root=ROOT, data_dir=tmp_path / "medkv", base_port=30000,
                venv=Path(sys.prefix), scratch=tmp_path / "work")
    results = [run_block(b, c, timeout=30) for b in planted]
    assert [r.ok for r in results] == [False, False, False]  # pipefail catches `false | true`
    assert results[0].returncode == 2 and "after" not in results[0].output  # -e: stops there
    assert "NoSuchThing" in results[1].output
    text = report(results, [], copy)
    assert text.startswith("doc examples: 3 run, 3 failed") and "FAIL README.md:" in text


def test_a_working_block_passes_and_a_hung_one_is_killed(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("```sh\nmedkv --help > /dev/null\n```\n\n```sh\nsleep 30 & sleep 30\n```\n")
    ok, hung = parse(page)
    assert run_block(ok, ctx(tmp_path), timeout=30).ok
    r = run_block(hung, ctx(tmp_path), timeout=1)
    assert not r.ok and "timed out" in r.output
