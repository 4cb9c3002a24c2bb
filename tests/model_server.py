"""Start ``mlflow models serve`` on a loopback port, talk to it, stop it (the serving test and the load benchmark).

The server is the real one, started the way the README tells users to
(``mlflow models serve -m models:/matshift-band_gap/1 --env-manager local``), as a child
process in its own process group so stopping it stops its uvicorn workers too.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # the decoded JSON, or the raw text when the body is not JSON


@dataclass(frozen=True)
class Server:
    url: str
    log: Path

    def post(self, payload: Any, *, timeout: float = 60.0, raw: bytes | None = None) -> Reply:
        """POST ``payload`` (as JSON, or ``raw`` bytes) to ``/invocations``; a 4xx/5xx is returned, not raised."""
        data = raw if raw is not None else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.url}/invocations", data=data,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode(errors="replace")
        try:
            return Reply(status, json.loads(text))
        except ValueError:
            return Reply(status, text)


def formulas_payload(formulas: list[str], **params: Any) -> dict[str, Any]:
    """Return the request body for a batch of formulas (pandas split orientation, the signature's ``formula`` column)."""
    body: dict[str, Any] = {"dataframe_split": {"columns": ["formula"], "data": [[f] for f in formulas]}}
    if params:
        body["params"] = params
    return body


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


@contextmanager
def serve(model_uri: str, *, tracking_uri: str, cwd: Path, workers: int = 1,
          startup_s: float = 180.0) -> Iterator[Server]:
    """Run ``mlflow models serve`` for ``model_uri`` on 127.0.0.1 until the block ends.

    Raises RuntimeError with the server's log tail if it exits or does not answer ``/ping``
    within ``startup_s``.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"matshift-serve-{port}.log"  # the server's output, read when it fails
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    # MLflow starts `uvicorn` through the shell: the environment's bin directory must be on PATH (an activated venv)
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking_uri,
                        "PATH": f"{mlflow_cli.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [str(mlflow_cli), "models", "serve", "-m", model_uri, "--env-manager", "local", "-h", "127.0.0.1",
             "-p", str(port), "-w", str(workers)],
            cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_s
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"mlflow models serve did not come up on {url} "
                                   f"(exit code {process.poll()}):\n{tail}")
            time.sleep(0.5)
        yield Server(url=url, log=log)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
