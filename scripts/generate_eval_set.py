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
import json
import os
import shutil
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # a standalone script: make the pack's engine importable
    sys.path.insert(0, REPO)

from instantfamily_core.evaluation.comfy_client import (  # noqa: E402
    SUBFOLDER,
    ComfyClient,
    mask_frames_bytes,
    png_bytes,
)
from instantfamily_core.evaluation.fastcomposer import Manifest, reference_files  # noqa: E402
from instantfamily_core.evaluation.graph import (  # noqa: E402
    add_generation_options,
    build_prompt,
    settings_from_args,
    side_by_side_layout,
)

__all__ = ["SUBFOLDER", "build_prompt", "mask_frames_bytes", "side_by_side_layout"]  # used by the tests


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--manifest", required=True)
    p.add_argument("--references", required=True)
    p.add_argument("--out", required=True, help="folder for subject_XXXX_prompt_XXXX_instance_XXXX.png")
    add_generation_options(p)
    p.add_argument("--skip-existing", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from PIL import Image

    from instantfamily_core.control_image import draw_skeletons

    args = parse_args(argv)
    settings = settings_from_args(args)
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
        prompt = build_prompt(
            settings,
            [uploaded_refs[x] for x in case.identities],
            mask_file,
            pose,
            case.prompts[p],
            manifest.seeds[i],
            stem,
        )
        images = client.wait_for_images(client.queue(prompt), "save")
        if len(images) != 1:
            raise RuntimeError(f"{stem}: ComfyUI returned {len(images)} images, expected 1")
        with open(target, "wb") as f:
            f.write(images[0])
        print(f"[{n_done + 1}/{len(todo)}] {stem}.png", flush=True)

    with open(os.path.join(args.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest.to_dict(), f, indent=2)
    shutil.copyfile(args.manifest, os.path.join(args.out, "manifest.source.json"))
    print(
        f"done: {len(todo)} images in {args.out}; evaluate with python -m train.evaluate "
        f"--manifest {os.path.join(args.out, 'manifest.json')} --references {args.references} --generated {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
