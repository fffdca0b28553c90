"""Read the code blocks of a Markdown page and follow them as a reader would, in one directory.

How a block is read:

- ```python or ```proto whose first line is ``# path`` or ``// path`` is a file: written there.
- ```python without that line is a program: run with python.
- ```sh: each line that is not a comment is a command, run by bash. A command whose comment says
  ``until Ctrl-C`` is a server: started, waited for until SERVING, and stopped with SIGTERM
  (exit status 0 expected) when the next server starts or the page ends, as a reader presses
  Ctrl-C in its terminal.
- ```text right after a block that ran: what it printed (the server's log for a block that only
  starts servers). Its lines must appear in that order; ``...`` stands for any text.
- ```console: a transcript, not run.
- A block listed in NOT_RUN, with the reason, is not run. Any other block fails the plan, and
  so does a runnable block in a README section other than RUN_README_SECTION: nothing is
  skipped silently, and nothing outside the quick start runs unannounced.

Port 8080 in the docs is a free port here. Servers get GZ_LISTEN=127.0.0.1:<port> unless the
command sets it, and GZ_SHUTDOWN_DRAIN=0 so stopping them is quick.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DOC_PORT = "8080"
RUN_README_SECTION = "## Quick start"
# (page, first line of the block without its comment): why it is not run here
NOT_RUN = {
    ("README.md", "make demo"): "tests/test_examples.py runs the demo; `make test` is this suite",
}

_FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_FILE_MARKER = re.compile(r"^(?:#|//) ([\w./-]+\.(?:py|proto))$")
_SERVER = re.compile(r"#.*\buntil Ctrl-C\b")
_ASSIGNMENTS = re.compile(r"^((?:\w+=\S*\s+)*)(.*)$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence
    lang: str
    text: str
    section: str  # the "## " heading above it ("" before the first)

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def file(self) -> str | None:
        """The path a file block is written to, from its first line."""
        match = _FILE_MARKER.match(self.text.partition("\n")[0])
        return match.group(1) if match else None


@dataclass(frozen=True)
class Step:
    kind: str  # "file", "program", "sh", "output", "skip"
    block: Block


def blocks(root: Path, page: str) -> list[Block]:
    text = (root / page).read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()]
        headings = re.findall(r"^## .*$", before, re.MULTILINE)
        found.append(
            Block(
                page=page,
                line=before.count("\n") + 1,
                lang=match.group(1),
                text=match.group(2),
                section=headings[-1] if headings else "",
            )
        )
    fences = len(re.findall(r"^\s*```", text, re.MULTILINE))
    assert fences == 2 * len(found), f"{page}: a fence that is indented or not closed"
    return found


def plan(page_blocks: list[Block]) -> list[Step]:
    """What to do with each block; AssertionError naming every block that fits no rule."""
    steps: list[Step] = []
    problems: list[str] = []
    for block in page_blocks:
        kind, problem = _classify(block, steps[-1] if steps else None)
        steps.append(Step(kind, block))
        if problem:
            problems.append(f"{block.where}: ```{block.lang} block: {problem}")
    assert not problems, "\n".join(problems)
    return steps


def _classify(block: Block, previous: Step | None) -> tuple[str, str | None]:
    first_command = block.text.partition("\n")[0].split("#")[0].strip()
    if (block.page, first_command) in NOT_RUN or block.lang == "console":
        return "skip", None
    if block.page == "README.md" and block.section != RUN_README_SECTION:
        return "skip", "outside the quick start: make it ```console, or list it in NOT_RUN"
    if block.lang in ("python", "proto") and block.file:
        return "file", None
    if block.lang == "python":
        return "program", None
    if block.lang == "sh":
        return "sh", None
    if block.lang == "text":
        if previous is None or previous.kind not in ("program", "sh"):
            return "output", "shows output, but no block that runs comes right before it"
        return "output", None
    return "skip", "give it a first line naming its file, a language that runs, or NOT_RUN"


class Reader:
    """A reader following pages in ``directory``: the files they write, the commands they run,
    the servers they leave running in another terminal."""

    def __init__(self, directory: Path, port: int, server_log: Path) -> None:
        self.directory = directory
        self.port = port
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("GZ_", "PYTHON"))}
        bin_dir = str(Path(sys.executable).parent)  # the venv's python, gz, pytest
        self.env |= {
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "GZ_LISTEN": f"127.0.0.1:{port}",
            "GZ_SHUTDOWN_DRAIN": "0",
        }
        self.server: subprocess.Popen[bytes] | None = None
        self.server_log = server_log  # outside the directory: the reader never sees it
        self.output = ""  # what the last block that ran printed
        self.output_is_log = False  # that block only started a server: its log, still growing

    def follow(self, steps: list[Step]) -> None:
        for step in steps:
            text = step.block.text.replace(f":{DOC_PORT}", f":{self.port}")
            if step.kind == "file":
                path = self.directory / (step.block.file or "")
                assert path.parent.is_dir(), f"{step.block.where}: no {path.parent.name}/ yet"
                path.write_text(text)
            elif step.kind == "program":
                self.output = self._run([sys.executable, "-c", text], step.block)
                self.output_is_log = False
            elif step.kind == "sh":
                self._run_sh(text, step.block)
            elif step.kind == "output":
                self._expect(text, step.block)

    def _run_sh(self, text: str, block: Block) -> None:
        outputs, started = [], False
        for line in text.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if _SERVER.search(line):
                self._start_server(line, block)
                started = True
            else:
                outputs.append(self._run(["bash", "-c", line], block))
        self.output_is_log = started and not outputs
        self.output = self._log() if self.output_is_log else "".join(outputs)

    def _run(self, command: list[str], block: Block) -> str:
        done = subprocess.run(
            command,
            cwd=self.directory,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, (
            f"{block.where}: {command[-1]!r} exited {done.returncode}:\n{done.stdout}"
        )
        return done.stdout

    def _start_server(self, line: str, block: Block) -> None:
        self.stop_server()  # Ctrl-C in that terminal before the next server starts there
        assignments, command = _ASSIGNMENTS.match(line.strip()).groups()  # type: ignore[union-attr]
        with self.server_log.open("w") as log:
            self.server = subprocess.Popen(
                ["bash", "-c", f"{assignments}exec {command}"],  # the signal reaches the server
                cwd=self.directory,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while not _serving(f"127.0.0.1:{self.port}"):
            status = self.server.poll()
            assert status is None, f"{block.where}: {line!r} exited {status}:\n{self._log()}"
            assert time.monotonic() < deadline, f"{block.where}: {line!r} not SERVING in 30 s"
            time.sleep(0.05)

    def stop_server(self) -> None:
        """SIGTERM, as Ctrl-C would do: the server drains and exits 0."""
        if self.server is None:
            return
        server, self.server = self.server, None
        server.send_signal(signal.SIGTERM)
        try:
            status = server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise AssertionError(f"a server did not stop on SIGTERM:\n{self._log()}") from None
        assert status == 0, f"a server exited {status} on SIGTERM:\n{self._log()}"

    def close(self) -> None:
        """Kill what is still running (after a failure): nothing outlives the test."""
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait()

    def _expect(self, expected: str, block: Block) -> None:
        # a server's log grows after SERVING: give it a moment before calling it wrong
        deadline = time.monotonic() + 5
        while (missing := _missing_line(expected, self.output)) is not None:
            if not self.output_is_log or time.monotonic() > deadline:
                raise AssertionError(
                    f"{block.where}: the docs show {missing!r}; it printed:\n{self.output}"
                )
            time.sleep(0.1)
            self.output = self._log()

    def _log(self) -> str:
        return self.server_log.read_text() if self.server_log.exists() else ""


def _missing_line(expected: str, output: str) -> str | None:
    """The first expected line not found (in order) in ``output``; ``...`` is any text."""
    lines = iter(line.rstrip() for line in output.splitlines())
    for wanted in expected.splitlines():
        pattern = re.compile(".*".join(re.escape(part) for part in wanted.rstrip().split("...")))
        if not any(pattern.fullmatch(line) for line in lines):
            return wanted
    return None


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=0.5
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING
