"""The few ComfyUI HTTP endpoints the benchmark needs (upload, /prompt, /history, /view), standard library only.

Also the encoders of what is uploaded: PNG bytes, and ID regions as one multi-frame RGBA TIFF
(ComfyUI's LoadImage turns 1 - alpha of every frame into one MASK batch).
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np

SUBFOLDER = "instantfamily_eval"


class ComfyClient:
    """A running ComfyUI at ``server`` (e.g. http://127.0.0.1:8188); uploads go to input/<subfolder>."""

    def __init__(self, server: str, subfolder: str = SUBFOLDER, timeout: float = 600.0):
        self.server = server.rstrip("/")
        self.client_id = str(uuid.uuid4())
        self.subfolder, self.timeout = subfolder, float(timeout)

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(self.server + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.read()
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, ConnectionError) as e:
            raise RuntimeError(
                f"cannot reach ComfyUI at {self.server} ({e}): start it with this pack installed, "
                "or pass its address with --server"
            ) from e

    def upload(self, name: str, data: bytes) -> str:
        boundary = uuid.uuid4().hex
        parts = []
        for key, value in (("subfolder", self.subfolder), ("type", "input"), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
        parts.append(f"--{boundary}--\r\n".encode())
        reply = json.loads(
            self._request(
                "/upload/image", b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            )
        )
        return f"{reply.get('subfolder') or self.subfolder}/{reply['name']}"

    def queue(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        try:
            reply = json.loads(self._request("/prompt", body, {"Content-Type": "application/json"}))
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"ComfyUI rejected the prompt: {e.read().decode(errors='replace')[:2000]}") from e
        return reply["prompt_id"]

    def wait_for_images(self, prompt_id: str, node_id: str, poll: float = 1.0) -> list[bytes]:
        """The images output node ``node_id`` saved for the prompt (waits at most ``timeout`` s)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            history = json.loads(self._request(f"/history/{prompt_id}"))
            entry = history.get(prompt_id)
            if entry:
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    raise RuntimeError(f"ComfyUI failed on prompt {prompt_id}: {status.get('messages')}")
                images = entry.get("outputs", {}).get(node_id, {}).get("images", [])
                if images or status.get("completed"):
                    return [
                        self._request(
                            "/view?"
                            + urllib.parse.urlencode(
                                {"filename": i["filename"], "subfolder": i["subfolder"], "type": i["type"]}
                            )
                        )
                        for i in images
                    ]
            time.sleep(poll)
        raise TimeoutError(
            f"ComfyUI at {self.server} did not finish prompt {prompt_id} in {self.timeout:.0f} s; "
            "is the server busy, or does the graph need a longer timeout?"
        )


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def mask_frames_bytes(masks: np.ndarray) -> bytes:
    """(N, H, W) uint8 masks -> a multi-frame RGBA TIFF whose frame k is transparent where mask k is on
    (ComfyUI's LoadImage turns 1 - alpha of every frame into one MASK batch)."""
    from PIL import Image

    frames = []
    for m in masks:
        rgba = np.zeros((*m.shape, 4), np.uint8)
        rgba[..., 3] = 255 - m
        frames.append(Image.fromarray(rgba, "RGBA"))
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    return buf.getvalue()
