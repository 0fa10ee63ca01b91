"""Shared fixtures of the worker tests: a random-weights file (ResNet50) built once and cached under
.cache/worker/, a tiny 127.0.0.1 HTTP server, and a runner for `python -m worker` as an iExec task.

Other test files (devnet workerpool, end to end) may use `worker_weights_r50` too.
"""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

REPO = Path(__file__).resolve().parent.parent
WEIGHTS_CACHE = REPO / ".cache" / "worker"
WEIGHTS_VERSION = "v1"  # bump when worker.testing.make_weights changes its output


def make_test_weights(path: Path, backbone: str = "resnet50") -> Path:
    """Build a random-weights file in a subprocess (TF aliasing stays out of the test process)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "worker", "make-test-weights", str(path), "--backbone", backbone],
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=240,
        )
    return path


@pytest.fixture(scope="session")
def worker_weights_r50() -> Path:
    """Path of a random ResNet50 Mask R-CNN COCO weights file (stamped as random), built once."""
    return make_test_weights(WEIGHTS_CACHE / f"random_r50_{WEIGHTS_VERSION}.h5")


@dataclass(frozen=True)
class WorkerRun:
    """Result of one `python -m worker` subprocess."""

    code: int
    stdout: str
    stderr: str
    seconds: float
    out: Path

    @property
    def files(self) -> set[str]:
        return {p.name for p in self.out.iterdir()} if self.out.exists() else set()

    def computed(self) -> dict:
        import json

        return json.loads((self.out / "computed.json").read_text())

    @property
    def imported_tensorflow(self) -> bool:
        # `-X importtime` lists every module imported, on stderr
        return "| tensorflow" in self.stderr


def iexec_env(tmp: Path, input_name: str | None = None, **extra: str) -> dict[str, str]:
    """The IEXEC_* environment exactly as an iExec worker sets it (no dataset)."""
    iexec_in, iexec_out = tmp / "iexec_in", tmp / "iexec_out"
    iexec_in.mkdir(exist_ok=True)
    iexec_out.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IEXEC_", "MRCNN_"))}
    env.update(
        {
            "IEXEC_IN": str(iexec_in),
            "IEXEC_OUT": str(iexec_out),
            "IEXEC_TASK_ID": "0x" + "ab" * 32,
            "IEXEC_DEAL_ID": "0x" + "cd" * 32,
            "IEXEC_INPUT_FILES_FOLDER": str(iexec_in),
            "IEXEC_INPUT_FILES_NUMBER": "1" if input_name else "0",
            "IEXEC_DATASET_FILENAME": "",
            "SEGBOT_CACHE": str(tmp / "no-cache"),
        }
    )
    if input_name:
        env["IEXEC_INPUT_FILE_NAME_1"] = input_name
    env.update(extra)
    return env


@pytest.fixture
def run_worker(tmp_path: Path) -> Callable[..., WorkerRun]:
    """Run `python -X importtime -m worker ARGS` with the given env; returns a WorkerRun."""

    def run(args: list[str], env: dict[str, str], timeout: float = 240) -> WorkerRun:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "worker", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        out = Path(env.get("IEXEC_OUT", tmp_path / "none"))
        return WorkerRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started, out)

    return run


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, dict[str, str], bytes | Callable[[object], None]]]] = {}

    def do_GET(self) -> None:
        status, headers, body = self.routes.get(self.path, (404, {}, b"not found"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if isinstance(body, bytes) and "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if callable(body):
                body(self.wfile)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class LocalServer:
    """A 127.0.0.1 HTTP server whose routes tests set: `server.routes[path] = (status, headers, body)`."""

    base: str
    routes: dict


@pytest.fixture
def local_http() -> Iterator[LocalServer]:
    handler = type("Handler", (_Handler,), {"routes": {}})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield LocalServer(f"http://127.0.0.1:{server.server_address[1]}", handler.routes)
    server.shutdown()
    server.server_close()
