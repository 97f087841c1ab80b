"""Real galaxy-serve processes for the serving tests, and the eager model to check their answers.

`ServeProcess` starts `galaxy-serve ... --port 0`, waits for its "serving ... on http://..." line,
and on exit sends SIGTERM and checks that the server and every rank process it started are
gone. `TinyModel` keeps the eager tiny BERT whose bundles are served, so every answer is
compared with the single-process model on the same inputs.
"""
from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from galaxy.compiler.capture.load import load_model
from galaxy.compiler.capture.trace import capture, flatten_outputs
from galaxy.compiler.passes.recognise import recognise
from galaxy.compiler.passes.summarise import summarise
from helpers import ATOL, MODELS, RTOL, build_bundle, request_inputs

TOKEN = "serving-test-token-0123456789abcdef"
_URL = re.compile(r"serving .* on (http://\S+) ")
_CONTROL = re.compile(r"coordinator listens for ranks on (\S+)")


@dataclass
class TinyModel:
    module: torch.nn.Module
    captured: object
    graph: object
    summary: object

    @classmethod
    def bert(cls) -> "TinyModel":
        loaded = load_model(str(MODELS / "bert.py"), "tiny")
        captured = capture(loaded)
        graph = recognise(captured)
        return cls(loaded.module, captured, graph, summarise(graph, captured))

    def bundle(self, folder: Path, plan) -> Path:
        return build_bundle(folder, self.captured, self.graph, self.summary, plan)

    def requests(self, n: int) -> list[dict[str, torch.Tensor]]:
        distinct = request_inputs(self.captured.example_inputs, min(n, 8), self.module.config.vocab_size)
        return [distinct[i % len(distinct)] for i in range(n)]

    def check(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            expected = flatten_outputs(self.module(**inputs), self.captured.output_names)
        assert set(outputs) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(outputs[name], value, atol=ATOL, rtol=RTOL)


class ServeProcess:
    """`galaxy-serve BUNDLE <mode args> --port 0` as a real process; a context manager."""

    def __init__(self, bundle: Path, *mode: str, env: dict | None = None, start_timeout_s: float = 180.0,
                 extra: tuple[str, ...] = (), command_prefix: tuple[str, ...] = ()):
        self.command = [*command_prefix, sys.executable, "-m", "galaxy.serve.cli", str(bundle),
                        *(mode or ("--local",)), "--port", "0", "--heartbeat", "0.5", "--dead-after", "3",
                        "--timeout", "30", *extra]
        self.env = {**os.environ, "GALAXY_CLUSTER_TOKEN": TOKEN, **(env or {})}
        self.start_timeout_s = start_timeout_s
        self.lines: collections.deque = collections.deque(maxlen=2000)
        self.url = self.control = None
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "ServeProcess":
        self.proc = subprocess.Popen(self.command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + self.start_timeout_s
        while self.url is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"galaxy-serve did not come up (exit {self.proc.returncode}):\n" + self.log())
            time.sleep(0.1)
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def rank_pids(self) -> list[int]:
        """Processes started by the server (its children and theirs)."""
        return _descendants(self.proc.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                raise AssertionError(f"galaxy-serve ignored signal {sig} for {timeout_s} s:\n{self.log()}")
        return self.proc.returncode

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line matching {pattern!r} within {timeout_s} s:\n{self.log()}")

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            found = _URL.search(line)
            if found:
                self.url = found.group(1)
            found = _CONTROL.search(line)
            if found:
                self.control = found.group(1)


def _descendants(pid: int) -> list[int]:
    children = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children[ppid].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pids: list[int]) -> list[int]:
    """Those of `pids` still running (zombies count as gone)."""
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} parsed by prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def json_body(inputs: dict[str, torch.Tensor]) -> bytes:
    return json.dumps({"inputs": {name: t.tolist() for name, t in inputs.items()}}).encode()
