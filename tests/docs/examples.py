"""The documentation's examples, run as written: every fenced ```sh, ```bash,
```shell and ```python block of README.md and docs/*.md.

Why: a reader copies these blocks. An example that no longer works (an
option renamed, a role missing, a file never created) must fail CI, not the
reader. tests/cluster/test_docs_examples.py runs them all against a live
local secure cluster; tests/docs/test_examples_extractor.py checks this
module, including that a planted broken example fails.

Blocks that cannot run anywhere but on real hosts (sudo, scp, systemd, a
stopped node's production paths) carry a marker on the last non-blank line
before their fence, with the reason:

    <!-- not-run: needs root and three hosts -->

They are counted and listed; every other block of those languages runs. A
marker without a reason is an error, as is an unterminated fence.

How a block runs. A shell block runs with `bash -e -o pipefail` (so a failing
command fails the block, not only the last one), a Python block with the
interpreter running the tests; both in a scratch directory shared by the
blocks of one file (a block may use files an earlier block of the same page
made, as a reader in one terminal would), with:

* the environment a reader has after the README's `eval "$(scripts/cluster
  env --data-dir /tmp/medkv)"` (MEDKV_ADDR, MEDKV_TLS_DIR, MEDKV_TOKEN: the
  clinician of clinic north); a block that needs another role says so with
  its own `eval ... --as ROLE`;
* the test's virtual environment first on PATH (`medkv` is its console
  script), MEDKV_VENV naming it and MEDKV_NO_INSTALL=1 (the scripts use the
  interpreter running the test and never pip-install);
* the placeholders below replaced, in this order (SUBSTITUTIONS):

  | in the docs | becomes | why |
  |---|---|---|
  | `/tmp/medkv` | the test cluster's directory | a private temp dir |
  | `scripts/cluster up` | `... up --base-port B` | free ports, not 7101.. |
  | `127.0.0.1:71NN` | `127.0.0.1:B+NN` | node NN of the local cluster |
  | `10.0.0.1N:7101` | `127.0.0.1:B+N` | host dbN of docs/multi-host.md |
  | `~/medkv-tls`, `/etc/clinic-app/medkv-tls` | DIR/certs | a client's TLS directory |
  | `~/.medkv/NAME.token` | DIR/tokens/NAME.token | a person's token (admin, auditor, ...) |
  | `/run/clinic-app/token` | DIR/tokens/clinician.token | an application's token file |
  | `.venv/bin/`, `/opt/medkv/.venv/bin/` | the test's venv `bin/` | the project's virtual environment (on a host: its checkout's) |
  | `scripts/` (a relative path) | the repository's `scripts/` | blocks run in a scratch dir |

Nothing else is changed: what runs is what a reader copies.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

RUN_LANGUAGES = {"sh": "shell", "bash": "shell", "shell": "shell", "python": "python"}
MARKER = re.compile(r"^\s*<!--\s*not-run(?::\s*(?P<reason>.*?))?\s*-->\s*$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,})(?P<info>[^`]*)$")
BLOCK_TIMEOUT_S = 60.0


class DocError(ValueError):
    """A malformed page: unterminated fence, or a not-run marker without a reason."""


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str  # "shell" or "python" for runnable languages, else the info word
    code: str
    not_run: str | None = None  # the marker's reason

    @property
    def runnable(self) -> bool:
        return self.language in ("shell", "python") and self.not_run is None

    def where(self, root: Path | None = None) -> str:
        path = self.path.relative_to(root) if root is not None else self.path
        return f"{path}:{self.line}"


def doc_files(root: Path) -> list[Path]:
    """README.md and docs/*.md: the pages a reader follows."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def parse(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of one page, with its not-run marker if any."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip()
        word = info.split()[0].lower() if info else ""
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^\s*{fence}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        if i >= len(lines):
            raise DocError(f"{path}:{start + 1}: unterminated ``` fence")
        i += 1
        reason = _marker_before(path, lines, start)
        indent = len(m.group("indent"))
        code = "\n".join(line[indent:] if line[:indent].isspace() else line for line in body)
        blocks.append(Block(path, start + 1, RUN_LANGUAGES.get(word, word), code + "\n", reason))
    return blocks


def _marker_before(path: Path, lines: Sequence[str], fence_index: int) -> str | None:
    j = fence_index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0:
        return None
    m = MARKER.match(lines[j])
    if not m:
        return None
    reason = (m.group("reason") or "").strip()
    if not reason:
        raise DocError(f"{path}:{j + 1}: a not-run marker needs a reason (<!-- not-run: why -->)")
    return reason


def collect(root: Path, files: Iterable[Path] | None = None) -> list[Block]:
    out: list[Block] = []
    for path in doc_files(root) if files is None else files:
        out.extend(parse(path))
    return out


@dataclass(frozen=True)
class Context:
    """Where the examples run: the repository, the test cluster, the venv."""

    root: Path
    data_dir: Path  # replaces /tmp/medkv
    base_port: int
    venv: Path
    scratch: Path  # one subdirectory per page
    env: dict[str, str] = field(default_factory=dict)  # the reader's MEDKV_* exports


def _port(base: int) -> Callable[[re.Match[str]], str]:
    return lambda m: f"127.0.0.1:{base + int(m.group(1))}"


def substitutions(ctx: Context) -> list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]]:
    """The placeholder table of the module docstring, in order."""
    certs = str(ctx.data_dir / "certs")
    token = str(ctx.data_dir / "tokens" / "clinician.token")
    return [
        (re.compile(r"/tmp/medkv\b"), str(ctx.data_dir)),
        (re.compile(r"\bscripts/cluster up\b"), f"scripts/cluster up --base-port {ctx.base_port}"),
        (re.compile(r"\b127\.0\.0\.1:71(\d\d)\b"), _port(ctx.base_port)),
        (re.compile(r"\b10\.0\.0\.1(\d):7101\b"), _port(ctx.base_port)),
        (re.compile(r"(~|/etc/clinic-app)/medkv-tls\b"), certs),
        (re.compile(r"~/\.medkv/([\w-]+)\.token\b"),
         lambda m: str(ctx.data_dir / "tokens" / f"{m.group(1)}.token")),
        (re.compile(r"/run/clinic-app/token\b"), token),
        (re.compile(r"(/opt/medkv/|(?<![\w/.-]))\.venv/bin/"), str(ctx.venv / "bin") + "/"),
        (re.compile(r"(?<![\w/.-])scripts/"), str(ctx.root / "scripts") + "/"),
    ]


def substitute(code: str, ctx: Context) -> str:
    for pattern, replacement in substitutions(ctx):
        code = pattern.sub(replacement, code)
    return code


def block_env(ctx: Context) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDKV_")}
    env.update(ctx.env)
    env["PATH"] = f"{ctx.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ctx.root)
    env["MEDKV_VENV"] = str(ctx.venv)
    env["MEDKV_NO_INSTALL"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


@dataclass(frozen=True)
class Result:
    block: Block
    ok: bool
    returncode: int
    output: str  # stdout and stderr, for the failure report
    seconds: float


def run_block(block: Block, ctx: Context, timeout: float = BLOCK_TIMEOUT_S) -> Result:
    """Run one block as a reader would; ok when it exits 0 within the timeout."""
    assert block.runnable, block
    code = substitute(block.code, ctx)
    cwd = ctx.scratch / block.path.stem
    cwd.mkdir(parents=True, exist_ok=True)
    if block.language == "shell":
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        argv = [sys.executable, "-c", code]
    started = time.monotonic()
    # Its own session: on a timeout the whole block (bash and whatever it
    # started in its process group) is killed, not only bash. Nodes that
    # scripts/cluster starts have sessions of their own and survive this.
    proc = subprocess.Popen(
        argv, cwd=cwd, env=block_env(ctx), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, _ = proc.communicate()
        timed_out = True
    _kill_group(proc.pid)  # anything the block left running in the background
    text = _text(out).strip()
    seconds = time.monotonic() - started
    if timed_out:
        return Result(block, False, -1, f"timed out after {timeout:.0f}s\n{text}", seconds)
    return Result(block, proc.returncode == 0, proc.returncode, text, seconds)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def report(results: Sequence[Result], skipped: Sequence[Block], root: Path) -> str:
    """What ran, what failed (with its output) and what is marked not-run, and why."""
    failed = [r for r in results if not r.ok]
    lines = [f"doc examples: {len(results)} run, {len(failed)} failed, "
             f"{len(skipped)} marked not-run"]
    for r in results:
        lines.append(f"  {'ok  ' if r.ok else 'FAIL'} {r.block.where(root)} "
                     f"({r.block.language}, {r.seconds:.1f}s)")
    for b in skipped:
        lines.append(f"  not-run {b.where(root)}: {b.not_run}")
    for r in failed:
        lines.append(f"\n--- {r.block.where(root)} exited {r.returncode}:\n{r.block.code}"
                     f"--- output (last 40 lines):")
        lines.extend(r.output.splitlines()[-40:])
    return "\n".join(lines)
