"""Generate the evaluation set with this pack through a running ComfyUI (for users who have the weights).

    python scripts/generate_eval_set.py --server http://127.0.0.1:8188 \\
        --manifest eval/manifest.json --references eval/references --out eval/generated \\
        --checkpoint v1-5-pruned-emaonly.safetensors --instantfamily instantfamily_sd15.safetensors

then score it with ``python -m train.evaluate --generated eval/generated ...`` (same manifest).

Protocol and the choices made here (the paper follows FastComposer's evaluation, whose multi-subject
generation code is not public):

* prompts and identities: the manifest's (``instantfamily_core/evaluation/fastcomposer.py`` describes it). To
  reproduce the paper's tables use FastComposer's evaluation subjects and prompt lists (its
  ``evaluation/single_object/data.py`` and ``evaluation/multi_object/data.py``); they are not
  bundled here. The first image (sorted) of ``references/<identity>/`` is the reference, as
  FastComposer does; its largest face becomes the ID.
* 512 x 512, 50 steps, CFG 5.0 (FastComposer's ``guidance_scale=5.0``), seed 42: instance i of every
  prompt uses seed ``42 + i`` with batch size 1, so any single image can be reproduced in the UI
  (FastComposer drew its 4 instances as one batch from one seeded generator). The seeds are written
  into the manifest copied next to the images.
* sampler: FastComposer used its diffusers pipeline's scheduler; ComfyUI has no PNDM, so the default
  here is ``ddim`` with the ``ddim_uniform`` schedule (50 steps); ``--sampler/--scheduler`` change it.
* layout: the paper conditions on pose + circles, FastComposer on nothing spatial. Every image here
  uses the same neutral layout: N people standing side by side (evenly spaced, heads in the upper
  third), OpenPose skeletons drawn by the pack's own drawing code, one face region per ID (the head
  box enlarged by the checkpoint's 25% margin), IDs left to right in manifest order.
* negative prompt: empty (FastComposer passed none). InstantFamily weight 1.0, ControlNet strength 1.0.

Needs: the pack and controlnet_aux installed in that ComfyUI, the SD1.5 checkpoint in
``models/checkpoints``, the InstantFamily file in ``models/instantfamily``, an insightface pack in
``models/insightface/models/<pack>``. Talks to ComfyUI over its HTTP API (upload, /prompt, /history,
/view); nothing is downloaded from anywhere else.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # a standalone script: make the pack's engine importable
    sys.path.insert(0, REPO)

from instantfamily_core.evaluation.fastcomposer import Manifest, reference_files  # noqa: E402

SUBFOLDER = "instantfamily_eval"

# A standing person in COCO-18 order, in head heights relative to the nose (x right, y down).
_STANDING = np.array([
    (0.0, 0.0), (0.0, 0.9), (-0.9, 1.0), (-1.2, 2.2), (-1.3, 3.3), (0.9, 1.0), (1.2, 2.2), (1.3, 3.3),
    (-0.5, 3.4), (-0.5, 4.9), (-0.5, 6.4), (0.5, 3.4), (0.5, 4.9), (0.5, 6.4),
    (-0.2, -0.15), (0.2, -0.15), (-0.4, -0.05), (0.4, -0.05),
])


def side_by_side_layout(n: int, width: int = 512, height: int = 512, margin: float = 0.25):
    """N standing people: (bodies (N, 18, 3) normalised, face masks (N, H, W) uint8 0/255)."""
    head = min(0.55 / n, 0.12)  # head height as a fraction of the image width
    bodies, masks = [], []
    for k in range(n):
        cx, cy = (k + 0.5) / n, 0.2
        pts = np.array([(cx + dx * head, cy + dy * head * width / height) for dx, dy in _STANDING])
        bodies.append(np.concatenate([np.clip(pts, 0, 1), (pts[:, 1:2] <= 1.0).astype(float)], 1))
        half_w = 0.5 * head * (1 + margin) * width  # the head box, enlarged by the margin, in pixels
        half_h = 0.6 * head * (1 + margin) * width
        x0, y0 = cx * width, (cy - 0.05 * head * width / height) * height
        mask = np.zeros((height, width), np.uint8)
        mask[int(max(0, y0 - half_h)):int(min(height, y0 + half_h)), int(max(0, x0 - half_w)):int(min(width, x0 + half_w))] = 255
        masks.append(mask)
    return np.stack(bodies), np.stack(masks)


class ComfyClient:
    """The few ComfyUI HTTP endpoints this script needs."""

    def __init__(self, server: str):
        self.server = server.rstrip("/")
        self.client_id = str(uuid.uuid4())

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(self.server + path, data=data, headers=headers or {})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.read()

    def upload(self, name: str, data: bytes) -> str:
        boundary = uuid.uuid4().hex
        parts = []
        for key, value in (("subfolder", SUBFOLDER), ("type", "input"), ("overwrite", "true")):
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        reply = json.loads(self._request("/upload/image", b"".join(parts),
                                         {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return f"{reply.get('subfolder') or SUBFOLDER}/{reply['name']}"

    def queue(self, prompt: dict) -> str:
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        try:
            reply = json.loads(self._request("/prompt", body, {"Content-Type": "application/json"}))
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"ComfyUI rejected the prompt: {e.read().decode(errors='replace')[:2000]}") from e
        return reply["prompt_id"]

    def wait_for_images(self, prompt_id: str, node_id: str, poll: float = 1.0) -> list[bytes]:
        while True:
            history = json.loads(self._request(f"/history/{prompt_id}"))
            entry = history.get(prompt_id)
            if entry:
                status = entry.get("status", {})
                if status.get("status_str") == "error":
                    raise RuntimeError(f"ComfyUI failed on prompt {prompt_id}: {status.get('messages')}")
                images = entry.get("outputs", {}).get(node_id, {}).get("images", [])
                if images or status.get("completed"):
                    return [self._request("/view?" + urllib.parse.urlencode(
                        {"filename": i["filename"], "subfolder": i["subfolder"], "type": i["type"]})) for i in images]
            time.sleep(poll)


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


def build_prompt(args, refs: list[str], masks: str, pose: str, text: str, seed: int, prefix: str) -> dict:
    """The API-format graph of one image (node ids are strings, links are [node id, output index])."""
    g = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": args.checkpoint}},
        "if": {"class_type": "InstantFamilyModelLoader", "inputs": {"instantfamily_file": args.instantfamily}},
        "analyzer": {"class_type": "InstantFamilyLoadFaceAnalyzer", "inputs": {
            "pack": args.insightface_pack, "provider": "auto", "det_size": 640, "det_thresh": 0.5}},
    }
    faces = None
    for k, ref in enumerate(refs):  # one Load Faces per identity, chained: slot k = identity k
        g[f"ref{k}"] = {"class_type": "LoadImage", "inputs": {"image": ref}}
        inputs = {"analyzer": ["analyzer", 0], "images": [f"ref{k}", 0], "mode": "largest face per image",
                  "order": "left to right", "combine": "separate", "face_indices": ""}
        if faces is not None:
            inputs["faces"] = faces
        g[f"faces{k}"] = {"class_type": "InstantFamilyLoadFaces", "inputs": inputs}
        faces = [f"faces{k}", 0]
    # the ID regions: one multi-frame RGBA image, frame k transparent over region k -> LoadImage's MASK batch
    g["masks"] = {"class_type": "LoadImage", "inputs": {"image": masks}}
    g["regions"] = {"class_type": "InstantFamilyFaceMask", "inputs": {
        "margin": 0.25, "order": "", "overlap": "both", "faces": faces, "masks": ["masks", 1], "instantfamily": ["if", 0]}}
    g["pose"] = {"class_type": "LoadImage", "inputs": {"image": pose}}
    g["control"] = {"class_type": "InstantFamilyPoseCircleImage", "inputs": {
        "pose_image": ["pose", 0], "face_masks": ["regions", 0], "instantfamily": ["if", 0]}}
    g["stack"] = {"class_type": "InstantFamilyBuildEmbeddingStack", "inputs": {"instantfamily": ["if", 0], "faces": faces}}
    g["pos"] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["ckpt", 1]}}
    g["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"text": args.negative, "clip": ["ckpt", 1]}}
    g["cn"] = {"class_type": "InstantFamilyPoseCircleControlNet", "inputs": {
        "positive": ["pos", 0], "negative": ["neg", 0], "model": ["ckpt", 0], "instantfamily": ["if", 0],
        "stack": ["stack", 0], "face_masks": ["regions", 0], "control_image": ["control", 0],
        "strength": args.controlnet_strength, "start_percent": 0.0, "end_percent": 1.0}}
    g["apply"] = {"class_type": "InstantFamilyApply", "inputs": {
        "model": ["ckpt", 0], "instantfamily": ["if", 0], "stack": ["stack", 0], "face_masks": ["regions", 0],
        "weight": args.weight, "start_at": 0.0, "end_at": 1.0, "mask_mode": "as trained", "overlap": "both"}}
    g["latent"] = {"class_type": "EmptyLatentImage", "inputs": {"width": args.width, "height": args.height, "batch_size": 1}}
    g["sample"] = {"class_type": "KSampler", "inputs": {
        "model": ["apply", 0], "positive": ["cn", 0], "negative": ["cn", 1], "latent_image": ["latent", 0],
        "seed": seed, "steps": args.steps, "cfg": args.cfg, "sampler_name": args.sampler,
        "scheduler": args.scheduler, "denoise": 1.0}}
    g["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["ckpt", 2]}}
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": f"{SUBFOLDER}/{prefix}"}}
    return g


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--manifest", required=True)
    p.add_argument("--references", required=True)
    p.add_argument("--out", required=True, help="folder for subject_XXXX_prompt_XXXX_instance_XXXX.png")
    p.add_argument("--checkpoint", required=True, help="SD1.5 checkpoint name in ComfyUI's models/checkpoints")
    p.add_argument("--instantfamily", required=True, help="file name in ComfyUI's models/instantfamily")
    p.add_argument("--insightface-pack", default="antelopev2")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--scheduler", default="ddim_uniform")
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--negative", default="")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--controlnet-strength", type=float, default=1.0)
    p.add_argument("--skip-existing", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from PIL import Image

    from instantfamily_core.control_image import draw_skeletons

    args = parse_args(argv)
    manifest = Manifest.load(args.manifest)
    manifest.seeds = [args.seed + i for i in range(manifest.instances)]
    os.makedirs(args.out, exist_ok=True)
    client = ComfyClient(args.server)

    uploaded_refs: dict[str, str] = {}
    layouts: dict[int, tuple[str, str]] = {}
    todo = manifest.items()
    for n_done, (c, p, i) in enumerate(todo):
        case = manifest.cases[c]
        stem = manifest.file_pattern.format(case=c, prompt=p, instance=i)
        target = os.path.join(args.out, stem + ".png")
        if args.skip_existing and os.path.isfile(target):
            continue
        for ident in case.identities:
            if ident not in uploaded_refs:
                path = reference_files(args.references, ident)[0]
                with Image.open(path) as im:
                    uploaded_refs[ident] = client.upload(f"ref_{ident}.png", png_bytes(np.asarray(im.convert("RGB"))))
        n = len(case.identities)
        if n not in layouts:
            bodies, masks = side_by_side_layout(n, args.width, args.height)
            pose = client.upload(f"pose_{n}.png", png_bytes(draw_skeletons(list(bodies), (args.height, args.width))))
            layouts[n] = (client.upload(f"masks_{n}.tiff", mask_frames_bytes(masks)), pose)
        mask_file, pose = layouts[n]
        prompt = build_prompt(args, [uploaded_refs[x] for x in case.identities], mask_file, pose,
                              case.prompts[p], manifest.seeds[i], stem)
        images = client.wait_for_images(client.queue(prompt), "save")
        if len(images) != 1:
            raise RuntimeError(f"{stem}: ComfyUI returned {len(images)} images, expected 1")
        with open(target, "wb") as f:
            f.write(images[0])
        print(f"[{n_done + 1}/{len(todo)}] {stem}.png", flush=True)

    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest.to_dict(), f, indent=2)
    shutil.copyfile(args.manifest, os.path.join(args.out, "manifest.source.json"))
    print(f"done: {len(todo)} images in {args.out}; evaluate with python -m train.evaluate "
          f"--manifest {os.path.join(args.out, 'manifest.json')} --references {args.references} --generated {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
