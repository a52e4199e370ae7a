"""InstantFamily Identity Report in a real ComfyUI: a full prompt (tiny ONNX face pack, the pack's own
recognizer), and the node's function on real photos with the real dlib recognizer."""

import importlib.util
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from instantfamily_dev.comfy_host import REPO_ROOT

NODE = "InstantFamilyIdentityReport"
CENTRES = ((160, 320), (480, 320))  # on the toy detector's stride-32 anchors at 640 px


def _load_test_module(name):
    """A helper module of tests/core (the face-analysis fixtures, the photo helpers), by name:
    tests/core is on pytest's pythonpath (pyproject.toml)."""
    return importlib.import_module(name)


def disc_scene(patterns, size=640):
    """Bright textured discs ("faces" for the toy detector) at CENTRES; the texture is drawn in each disc's
    own coordinates, so a pattern is the same face wherever it stands."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = np.zeros((size, size), np.float32)
    for (cx, cy), k in zip(CENTRES, patterns):
        if k is None:
            continue
        dx, dy = xx - cx, yy - cy
        inside = dx**2 + dy**2 <= 20.0**2
        image[inside] = 200 + 40 * np.sin((0.35 + 0.45 * k) * dx[inside] + (0.1 + 0.3 * k) * dy[inside])
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def scores_from_text(text):
    """[(identity, MultiSim or None), ...] per image line of the report."""
    out = []
    for line in text.splitlines():
        m = re.match(r"image \d+: .*identity ([\d.]+)(?:.*MultiSim ([-\d.]+))?", line)
        if m:
            out.append((float(m.group(1)), None if m.group(2) is None else float(m.group(2))))
    return out


@pytest.fixture(scope="module")
def tiny_pack(comfy_models_dir):
    face_fixtures = _load_test_module("instantfamily_dev.face_fixtures")
    return face_fixtures.build_tiny_pack(str(comfy_models_dir / "insightface"), "tinypack_eval")


def test_identity_report_runs_in_a_real_prompt(comfy_host, tiny_pack):
    import folder_paths

    input_dir = folder_paths.get_input_directory()
    Image.fromarray(disc_scene([0, 1])).save(os.path.join(input_dir, "eval_ref.png"))
    Image.fromarray(disc_scene([1, 0])).save(os.path.join(input_dir, "eval_swapped.png"))  # same people, swapped
    Image.fromarray(disc_scene([0, 2])).save(os.path.join(input_dir, "eval_wrong.png"))  # second person replaced
    Image.fromarray(disc_scene([0, None])).save(os.path.join(input_dir, "eval_missing.png"))  # second person absent
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "eval_ref.png"}},
        "2": {
            "class_type": "InstantFamilyLoadFaceAnalyzer",
            "inputs": {"pack": "tinypack_eval", "provider": "CPU", "det_size": 640, "det_thresh": 0.5},
        },
        "3": {
            "class_type": "InstantFamilyLoadFaces",
            "inputs": {
                "analyzer": ["2", 0],
                "images": ["1", 0],
                "mode": "every face",
                "order": "left to right",
                "combine": "separate",
                "face_indices": "",
            },
        },
        "4": {"class_type": "LoadImage", "inputs": {"image": "eval_swapped.png"}},
        "5": {"class_type": "LoadImage", "inputs": {"image": "eval_wrong.png"}},
        "6": {"class_type": "LoadImage", "inputs": {"image": "eval_missing.png"}},
        "7": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["5", 0]}},
        "8": {"class_type": "ImageBatch", "inputs": {"image1": ["7", 0], "image2": ["6", 0]}},
        "9": {
            "class_type": NODE,
            "inputs": {
                "images": ["8", 0],
                "faces": ["3", 0],
                "encoder": "insightface (analyzer)",
                "clamp": True,
                "analyzer": ["2", 0],
            },
        },
        "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 1]}},
    }
    outputs = comfy_host.run_prompt(prompt)
    text, heatmap, verdicts = outputs["9"]
    assert "encoder insightface, 2 identities, 3 images" in text
    assert "slots by similarity (no face_masks" in text
    assert verdicts.shape == (3, 640, 640, 3)  # the images with their verdicts drawn
    reported = scores_from_text(text)
    assert len(reported) == 3
    # the same numbers as the core computes from the analyzer's own features (the tiny random
    # recognizer cannot tell textures apart, so face discrimination is tested with dlib below)
    faces_mod = comfy_host.pack_import("instantfamily_core.faces")
    metrics = comfy_host.pack_import("instantfamily_core.evaluation.metrics")
    analyzer = faces_mod.load_face_analyzer([str(comfy_host.models_dir / "insightface")], "tinypack_eval", "CPU")
    refs = [f.global_feature for f in sorted(analyzer.analyze(disc_scene([0, 1])), key=lambda f: f.box[0])]
    for (identity, multi), patterns in zip(reported, ([1, 0], [0, 2], [0, None])):
        gens = [f.global_feature for f in analyzer.analyze(disc_scene(patterns))]
        expected = metrics.score_identities(refs, gens)
        assert identity == pytest.approx(expected.identity, abs=6e-4)
        assert multi == pytest.approx(expected.multi_sim, abs=6e-4)
    (swapped_id, swapped_ms), _, (missing_id, missing_ms) = reported
    assert swapped_id == pytest.approx(1.0, abs=1e-3)  # the swap is undone by the matching
    assert missing_id == pytest.approx(0.5, abs=1e-3) and missing_ms < swapped_ms  # a missing face scores 0
    assert "1 missing" in text and "no face" in text and "mean MultiSim" in text
    assert isinstance(heatmap, torch.Tensor) and heatmap.ndim == 4 and heatmap.shape[0] == 3
    assert heatmap.shape[-1] == 3 and 0.0 <= float(heatmap.min()) and float(heatmap.max()) <= 1.0
    assert float(heatmap.std()) > 0.05  # a drawn image, not a blank one


@pytest.fixture(scope="module")
def photo_faces(comfy_host):
    """A FACES value built in the test (Load Faces needs insightface weights for real photos): two
    identities whose sources carry tight face crops of the astronaut and of Grace Hopper."""
    photos = _load_test_module("eval_fixtures")
    identity = comfy_host.pack_import("instantfamily_core.identity")
    encoders = comfy_host.pack_import("instantfamily_core.evaluation.encoders")
    dlib = encoders.DlibEncoder()
    regions, identities = [], []
    for label, image in (("astronaut", photos.astronaut()), ("hopper", photos.grace_hopper())):
        face = dlib.encode(image)[0]
        x1, y1, x2, y2 = face.box.astype(int)
        crop = np.asarray(Image.fromarray(image[y1:y2, x1:x2]).resize((112, 112), Image.BICUBIC))
        source = identity.DetectedFace(
            box=face.box,
            keypoints=np.zeros((5, 2), np.float32),
            score=1.0,
            global_feature=np.zeros(512, np.float32),
            local_feature=np.zeros((512, 7, 7), np.float32),
            crop=crop,
        )
        identities.append(
            identity.Identity(
                np.zeros(512, np.float32), np.zeros((512, 7, 7), np.float32), label=label, sources=[source]
            )
        )
        regions.append(photos.face_region(image, face.box))
    group = photos.group_photo()
    stranger = photos.face_region(group, dlib.encode(group)[3].box)
    return identity.Faces(identities), regions, stranger, photos


def test_identity_report_on_real_photos_with_dlib(comfy_host, photo_faces):
    faces, (r_ast, r_gh), stranger, photos = photo_faces
    right = photos.paste([r_gh, r_ast])  # positions swapped on purpose
    wrong = photos.paste([r_ast, stranger])
    images = torch.from_numpy(np.stack([right, wrong]).astype(np.float32) / 255.0)  # (2, H, W, 3)
    node = comfy_host.node_class(NODE)()
    result = node.report(images=images, faces=faces, encoder="dlib", clamp=True)
    text, heatmap, verdicts = result["result"]
    assert result["ui"]["text"] == [text]
    assert verdicts.shape == images.shape and not torch.equal(verdicts, images)
    (right_id, right_ms), (wrong_id, wrong_ms) = scores_from_text(text)
    assert right_id > 0.95 and wrong_id < right_id - 0.03 and wrong_ms < right_ms
    assert re.search(r"hopper: 0\.8\d\d", text)  # the stranger in Grace Hopper's place
    assert "astronaut:" in text and "hopper:" in text
    assert heatmap.shape[0] == 2 and heatmap.shape[-1] == 3
    assert not torch.equal(heatmap[0], heatmap[1])  # each image has its own matrix


def halves(comfy_host, width, height):
    """FaceMasks of two side-by-side slots: the left and the right half of the image."""
    masks_mod = comfy_host.pack_import("instantfamily_core.masks")
    masks = torch.zeros(2, height, width)
    masks[0, :, : width // 2] = 1
    masks[1, :, width // 2 :] = 1
    return masks_mod.FaceMasks(masks, torch.tensor([[0.25, 0.5], [0.75, 0.5]]))


def test_identity_report_by_position_sees_the_swap_that_matching_forgives(comfy_host, photo_faces):
    """astronaut meant on the left, Grace Hopper on the right; the image has them the other way round."""
    faces, (r_ast, r_gh), _, photos = photo_faces
    swapped, right = photos.paste([r_gh, r_ast]), photos.paste([r_ast, r_gh])
    images = torch.from_numpy(np.stack([swapped, right]).astype(np.float32) / 255.0)
    face_masks = halves(comfy_host, swapped.shape[1], swapped.shape[0])
    node = comfy_host.node_class(NODE)()
    text, heatmap, verdicts = node.report(images=images, faces=faces, encoder="dlib", face_masks=face_masks)["result"]
    (swapped_id, _), (right_id, _) = scores_from_text(text)
    assert swapped_id > 0.95 and right_id > 0.95  # Hungarian matching: both look perfect
    blocks = text.split("\nimage ")
    assert "slots: accuracy 0.00, 1 swapped pairs" in blocks[1] and "SWAPPED, looks most like hopper" in blocks[1]
    assert "slots: accuracy 1.00, 0 swapped pairs" in blocks[2] and "SWAPPED" not in blocks[2]
    assert "slots by position (face_masks)" in text
    assert not torch.equal(heatmap[0], heatmap[1])
    drawn = (verdicts[0].numpy() * 255).round().astype(np.uint8)
    config = comfy_host.pack_import("instantfamily_core.config").InstantFamilyConfig()
    for slot in (0, 1):  # each slot's box is drawn in its slot colour
        assert (drawn == np.array(config.palette_colour(slot), np.uint8)).all(-1).sum() > 50
    with pytest.raises(ValueError, match="face_masks hold 1 regions but FACES has 2"):
        one_region = type(face_masks)(masks=face_masks.masks[:1], centres=face_masks.centres[:1], boxes=None)
        node.report(images=images, faces=faces, encoder="dlib", face_masks=one_region)


def test_identity_report_errors_name_the_fix(comfy_host, photo_faces):
    faces, _, _, _ = photo_faces
    node = comfy_host.node_class(NODE)()
    images = torch.zeros(1, 64, 64, 3)
    with pytest.raises(ValueError, match="connect a Load Face Analyzer"):
        node.report(images=images, faces=faces, encoder="insightface (analyzer)")
    identity = comfy_host.pack_import("instantfamily_core.identity")
    bare = identity.Faces([identity.Identity(np.ones(512, np.float32), np.zeros((512, 7, 7), np.float32))])
    with pytest.raises(ValueError, match="no face crop to embed with the dlib encoder"):
        node.report(images=images, faces=bare, encoder="dlib")
    if importlib.util.find_spec("facenet_pytorch") is not None:
        with pytest.raises(RuntimeError, match="models.facenet.facenet_vggface2.safetensors"):
            node.report(images=images, faces=faces, encoder="facenet")


def test_generation_script_graph_passes_comfyuis_validator(comfy_host, tiny_pack):
    """scripts/generate_eval_set.py's per-image graph, checked by ComfyUI's own prompt validator (node
    ids, input names, link types, widget values); its layout part (faces, ID regions, control image) is
    also run. Sampling is not: that needs SD1.5 + InstantFamily weights."""
    import folder_paths

    spec = importlib.util.spec_from_file_location("generate_eval_set", REPO_ROOT / "scripts" / "generate_eval_set.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    bodies, masks = script.side_by_side_layout(3, 512, 512)
    assert bodies.shape == (3, 18, 3) and masks.shape == (3, 512, 512)
    assert ((masks > 0).sum(0) <= 1).all()  # the three face regions do not overlap
    centres = [np.argwhere(m).mean(0)[1] for m in masks]
    assert centres == sorted(centres)  # IDs left to right
    for body, mask in zip(bodies, masks):  # each region holds its person's nose
        nose = (int(body[0, 1] * 512), int(body[0, 0] * 512))
        assert mask[nose] == 255

    for sub in ("checkpoints", "instantfamily"):
        open(os.path.join(folder_paths.get_folder_paths(sub)[0], "eval_dummy.safetensors"), "wb").close()
    folder_paths.filename_list_cache.clear()
    sub = script.SUBFOLDER
    input_dir = os.path.join(folder_paths.get_input_directory(), sub)
    os.makedirs(input_dir, exist_ok=True)
    for k in range(3):  # references: one "face" each for the toy detector
        Image.fromarray(disc_scene([k, None])).save(os.path.join(input_dir, f"ref_{k}.png"))
    with open(os.path.join(input_dir, "masks_3.tiff"), "wb") as f:
        f.write(script.mask_frames_bytes(masks))
    draw = comfy_host.pack_import("instantfamily_core.control_image")
    Image.fromarray(draw.draw_skeletons(list(bodies), (512, 512))).save(os.path.join(input_dir, "pose_3.png"))

    args = script.parse_args(
        [
            "--manifest",
            "m.json",
            "--references",
            "r",
            "--out",
            "o",
            "--checkpoint",
            "eval_dummy.safetensors",
            "--instantfamily",
            "eval_dummy.safetensors",
            "--insightface-pack",
            "tinypack_eval",
        ]
    )
    assert (args.seed, args.steps, args.cfg, args.width, args.height) == (42, 50, 5.0, 512, 512)
    prompt = script.build_prompt(
        args,
        [f"{sub}/ref_{k}.png" for k in range(3)],
        f"{sub}/masks_3.tiff",
        f"{sub}/pose_3.png",
        "a photo of three people",
        43,
        "subject_0000_prompt_0000_instance_0001",
    )
    ok, errors = comfy_host.validate(prompt)
    assert ok, errors
    assert prompt["sample"]["inputs"]["seed"] == 43 and prompt["faces2"]["inputs"]["faces"] == ["faces1", 0]

    # run the layout part (everything up to the control image; the InstantFamily file is a dummy)
    keep = {"analyzer", "masks", "regions", "pose", "control"} | {k for k in prompt if k.startswith(("ref", "faces"))}
    layout = {k: v for k, v in prompt.items() if k in keep}
    for node in ("regions", "control"):
        layout[node]["inputs"].pop("instantfamily")
    layout["preview"] = {"class_type": "PreviewImage", "inputs": {"images": ["control", 0]}}
    outputs = comfy_host.run_prompt(layout)
    mask_batch = outputs["masks"][1]
    assert tuple(mask_batch.shape) == (3, 512, 512)
    np.testing.assert_array_equal(mask_batch.numpy() > 0.5, masks > 0)
    face_masks = outputs["regions"][0]
    assert len(outputs["faces2"][0]) == 3 and face_masks.masks.shape[0] == 3
    control = (outputs["control"][0][0].numpy() * 255).round().astype(np.uint8)  # (512, 512, 3)
    config = comfy_host.pack_import("instantfamily_core.config").InstantFamilyConfig()
    for k in range(3):  # a palette circle on each ID's face
        cx, cy = (np.asarray(face_masks.centres[k], np.float64) * 512).astype(int)
        assert tuple(control[cy, cx]) == config.palette_colour(k)
