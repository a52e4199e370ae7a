"""Write example_workflows/*.json (ComfyUI UI format) and their .jpg thumbnails.

    python scripts/make_workflows.py            # (re)write every workflow and thumbnail
    python scripts/make_workflows.py --check    # exit 1 when a committed .json differs from this script

Every workflow uses only stock ComfyUI nodes and this pack's nodes, except the documented optional
variant ``two_people_dwpose`` (needs comfyui_controlnet_aux for ``DWPreprocessor``). File names in
LoadImage / loader widgets are placeholders: users pick their own files in the dropdowns. Each node's
sockets are read from its own INPUT_TYPES / RETURN_TYPES on a ComfyUI host started here
(``COMFYUI_PATH``, or the copy under ``.hosts/`` that ``INSTANTFAMILY_COMFY_HOST`` picks).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if not __package__:  # run as a file (python scripts/make_workflows.py): the packages it imports live at the root
    sys.path.insert(0, str(REPO))

from scripts.workflow_builder import Graph, dumps, render_thumbnail  # noqa: E402

OUT = REPO / "example_workflows"
SD15 = "v1-5-pruned-emaonly.safetensors"
CHECKPOINT = "instantfamily_sd15.safetensors"
SDXL = "sd_xl_base_1.0.safetensors"
SDXL_CHECKPOINT = "instantfamily_sdxl.safetensors"
NEGATIVE = "lowres, blurry, deformed face, disfigured, extra people, duplicate face, watermark, text"
C = [0, 380, 760, 1140, 1520, 1900]  # column x positions
WHO, WHERE, GENERATE = "#3f789e", "#8A8", "#a1309b"


def load_image(g, pos, file, title):
    return g.add("LoadImage", pos, [file, "image"], title=title, height=320)


def analyzer_node(g, pos):
    return g.add("InstantFamilyLoadFaceAnalyzer", pos, ["antelopev2", "auto", 640, 0.5])


def load_faces(
    g,
    pos,
    analyzer,
    images,
    mode="largest face per image",
    combine="separate",
    indices="",
    previous=None,
    more=(),
    title=None,
):
    """more: further photos (any size) into images_2, images_3, ... of the same node."""
    node = g.add(
        "InstantFamilyLoadFaces",
        pos,
        [mode, "left to right", combine, indices],
        title=title,
        height=230 if more else None,
    )
    g.link(analyzer["analyzer"], node, "analyzer")
    g.link(images, node, "images")
    if previous is not None:
        g.link(previous["faces"], node, "faces")
    for n, photo in enumerate(more, start=2):
        g.link(photo, node, f"images_{n}")
    return node


def preview(g, pos, source, title):
    node = g.add("PreviewImage", pos, title=title, height=260)
    g.link(source, node, "images")
    return node


def where_section(g, y, faces, analyzer, instantfamily, people: str, optional_pose=False):
    """Template photo -> Face Mask; OpenPose image (+ circles) -> control image. Returns (masks, control)."""
    template = load_image(g, (C[0], y), f"pose_template_{people}.png", "Pose template: a photo of the arrangement")
    mask = g.add("InstantFamilyFaceMask", (C[1], y), [0.25, "", "both"], title="Face Mask (from the template photo)")
    circle = g.add("InstantFamilyPoseCircleImage", (C[1], y + 300))
    for source, name in ((faces["faces"], "faces"), (instantfamily["instantfamily"], "instantfamily")):
        g.link(source, mask, name)
    g.link(mask["face_masks"], circle, "face_masks")
    g.link(instantfamily["instantfamily"], circle, "instantfamily")
    if optional_pose:
        dw = g.add(
            "DWPreprocessor",
            (C[0], y + 380),
            ["disable", "enable", "enable", 512, "yolox_l.onnx", "dw-ll_ucoco_384_bs5.torchscript.pt", "disable"],
            title="DWPose Estimator (comfyui_controlnet_aux)",
        )
        g.link(template["IMAGE"], dw, "image")
        g.link(dw["POSE_KEYPOINT"], mask, "pose_keypoint")
        g.link(dw["POSE_KEYPOINT"], circle, "pose_keypoint")
        sources = [template, dw]
    else:
        skeleton = load_image(
            g, (C[0], y + 380), f"pose_openpose_{people}.png", "Pose: OpenPose skeleton of the same arrangement"
        )
        g.link(template["IMAGE"], mask, "template")
        g.link(analyzer["analyzer"], mask, "analyzer")
        g.link(skeleton["IMAGE"], circle, "pose_image")
        sources = [template, skeleton]
    shown = [
        preview(g, (C[2], y), mask["preview"], "Where each ID goes"),
        preview(g, (C[2], y + 300), circle["control_image"], "ControlNet image: pose + ID circles"),
    ]
    g.group("2 · Where: face positions and pose", sources + [mask, circle] + shown, WHERE)
    return mask, circle


def generate_section(
    g, faces, instantfamily, mask, circle, prompt, size, seed, prefix, batch=1, y=0, base=(SD15, "SD1.5")
):
    """Base model + InstantFamily (UNet patch and Pose+Circle ControlNet) -> KSampler -> images. Returns VAEDecode.

    base: (checkpoint file, family name) of the base model loader."""
    width, height = size
    ckpt = g.add("CheckpointLoaderSimple", (C[3], y), [base[0]], title=f"Load Checkpoint ({base[1]})")
    positive = g.add("CLIPTextEncode", (C[3], y + 170), [prompt], title="Positive prompt", height=150)
    negative = g.add("CLIPTextEncode", (C[3], y + 360), [NEGATIVE], title="Negative prompt", height=130)
    stack = g.add("InstantFamilyBuildEmbeddingStack", (C[3], y + 540))
    apply = g.add("InstantFamilyApply", (C[4], y), [1.0, 0.0, 1.0, "as trained", "both", False])
    control = g.add("InstantFamilyPoseCircleControlNet", (C[4], y + 260), [1.0, 0.0, 1.0])
    latent = g.add("EmptyLatentImage", (C[4], y + 560), [width, height, batch])
    sampler = g.add("KSampler", (C[5], y), [seed, "fixed", 30, 6.0, "dpmpp_2m", "karras", 1.0])
    decode = g.add("VAEDecode", (C[5], y + 300))
    save = g.add("SaveImage", (C[5], y + 400), [f"InstantFamily/{prefix}"], height=300)
    for clip_node in (positive, negative):
        g.link(ckpt["CLIP"], clip_node, "clip")
    g.link(instantfamily["instantfamily"], stack, "instantfamily")
    g.link(faces["faces"], stack, "faces")
    for target in (apply, control):
        g.link(instantfamily["instantfamily"], target, "instantfamily")
        g.link(stack["stack"], target, "stack")
        g.link(mask["face_masks"], target, "face_masks")
    g.link(ckpt["MODEL"], apply, "model")
    g.link(apply["MODEL"], control, "model")  # the ControlNet runs Apply's settings
    g.link(positive["CONDITIONING"], control, "positive")
    g.link(negative["CONDITIONING"], control, "negative")
    g.link(circle["control_image"], control, "control_image")
    g.link(apply["MODEL"], sampler, "model")
    g.link(control["positive"], sampler, "positive")
    g.link(control["negative"], sampler, "negative")
    g.link(latent["LATENT"], sampler, "latent_image")
    g.link(sampler["LATENT"], decode, "samples")
    g.link(ckpt["VAE"], decode, "vae")
    g.link(decode["IMAGE"], save, "images")
    g.group("3 · Generate", [ckpt, positive, negative, stack, apply, control, latent, sampler, decode, save], GENERATE)
    return decode


def common_top(g, note_text, y=0, checkpoint=CHECKPOINT):
    """Analyzer + InstantFamily model loader + the workflow's note, in column 2."""
    analyzer = analyzer_node(g, (C[1], y))
    instantfamily = g.add("InstantFamilyModelLoader", (C[2], y), [checkpoint])
    g.note((C[2], y + 110), note_text, height=250)
    return analyzer, instantfamily


def two_people(node_classes, optional_pose=False):
    g = Graph(node_classes)
    analyzer, instantfamily = common_top(
        g,
        (
            "Two people in a pose you choose.\n\n1 Who: one ID photo per person (the largest face of each photo is used; "
            "person A is ID 0).\n2 Where: a template photo of two people in the arrangement you want (its faces give "
            "the ID regions, left to right = ID 0, 1; change 'order' to swap) and "
            + (
                "its pose from the DWPose Estimator (needs comfyui_controlnet_aux)."
                if optional_pose
                else "the OpenPose skeleton image of the same arrangement (from any pose editor or preprocessor)."
            )
            + "\n3 Generate: SD1.5 + the InstantFamily checkpoint (models/instantfamily/)."
        ),
    )
    a = load_image(g, (C[0], 0), "person_a.png", "ID photo: person A")
    b = load_image(g, (C[0], 360), "person_b.png", "ID photo: person B")
    faces_a = load_faces(g, (C[1], 170), analyzer, a["IMAGE"], title="Load Faces (person A)")
    faces = load_faces(g, (C[1], 420), analyzer, b["IMAGE"], previous=faces_a, title="Load Faces (+ person B)")
    crops = preview(g, (C[2], 380), faces["crops"], "Faces found (ID order)")
    g.group("1 · Who: one photo per person", [a, b, analyzer, faces_a, faces, crops], WHO)
    mask, circle = where_section(g, 800, faces, analyzer, instantfamily, "2people", optional_pose)
    prompt = "a photo of two friends standing side by side in a sunny park, smiling, natural light, detailed faces"
    generate_section(
        g,
        faces,
        instantfamily,
        mask,
        circle,
        prompt,
        (512, 512),
        42,
        "two_people_dwpose" if optional_pose else "two_people",
    )
    return g


def four_people_group_photo(node_classes):
    g = Graph(node_classes)
    analyzer, instantfamily = common_top(
        g,
        (
            "Four people from one group photo.\n\nLoad Faces in 'every face' mode makes one ID per face, numbered left "
            "to right (see the preview). Keep only some with face_indices, e.g. '0,1,2,3'.\nThe template photo gives "
            "four face positions; ID n goes to position n from the left unless 'order' says otherwise.\n"
            "The paper trained with up to four people per image."
        ),
    )
    group = load_image(g, (C[0], 0), "group_photo.png", "Group photo (four people)")
    faces = load_faces(
        g,
        (C[1], 170),
        analyzer,
        group["IMAGE"],
        mode="every face",
        indices="",
        title="Load Faces (every face of the group photo)",
    )
    shown = [
        preview(g, (C[2], 380), faces["preview"], "Numbered faces"),
        preview(g, (C[0], 360), faces["crops"], "Faces found (ID order)"),
    ]
    g.group("1 · Who: everyone in a group photo", [group, analyzer, faces] + shown, WHO)
    mask, circle = where_section(g, 800, faces, analyzer, instantfamily, "4people")
    prompt = "a group photo of four colleagues in an office, everyone looking at the camera, detailed faces"
    generate_section(g, faces, instantfamily, mask, circle, prompt, (768, 512), 7, "four_people")
    return g


def seven_people(node_classes):
    g = Graph(node_classes)
    analyzer, instantfamily = common_top(
        g,
        (
            "Seven people: more than the four seen in training (the paper's Fig. 8).\n\nFour IDs come from a group "
            "photo, three from single photos appended after them (Load Faces chains: IDs 0-3 then 4-6).\nThe template "
            "photo needs seven visible faces; InstantFamily was trained at 512 px; 768x512 keeps faces large enough for SD1.5."
        ),
    )
    group = load_image(g, (C[0], 0), "family_photo.png", "Group photo (four people)")
    singles = [
        load_image(g, (C[0], 360 * (k + 1)), f"person_{k + 5}.png", f"ID photo: person {k + 5}") for k in range(3)
    ]
    first = load_faces(g, (C[1], 170), analyzer, group["IMAGE"], mode="every face", title="Load Faces (group: IDs 0-3)")
    faces = load_faces(
        g,
        (C[1], 660),
        analyzer,
        singles[0]["IMAGE"],
        previous=first,
        more=[s["IMAGE"] for s in singles[1:]],
        title="Load Faces (+ IDs 4-6, one per photo)",
    )
    crops = preview(g, (C[2], 380), faces["crops"], "Faces found (ID order)")
    g.group("1 · Who: seven people", [group, *singles, analyzer, first, faces, crops], WHO)
    mask, circle = where_section(g, 1500, faces, analyzer, instantfamily, "7people")
    prompt = "a big family photo of seven people on a sofa in a bright living room, everyone smiling, detailed faces"
    generate_section(g, faces, instantfamily, mask, circle, prompt, (768, 512), 1234, "seven_people", y=800)
    return g


def several_photos_per_person(node_classes):
    g = Graph(node_classes)
    analyzer, instantfamily = common_top(
        g,
        (
            "Several photos per person, averaged into one ID each.\n\nPhotos of one person go into one Load Faces "
            "node (images, images_2, ...) with combine = 'normalized average' (the largest face of each photo); the "
            "photos may differ in size.\nPerson B's node appends to person A's: A is ID 0, B is ID 1."
        ),
    )
    a_photos = [load_image(g, (C[0], 360 * k), f"person_a_{k + 1}.png", f"Person A, photo {k + 1}") for k in range(3)]
    b_photos = [
        load_image(g, (C[0], 360 * (k + 3)), f"person_b_{k + 1}.png", f"Person B, photo {k + 1}") for k in range(2)
    ]
    faces_a = load_faces(
        g,
        (C[1], 660),
        analyzer,
        a_photos[0]["IMAGE"],
        combine="normalized average",
        more=[p["IMAGE"] for p in a_photos[1:]],
        title="Load Faces (person A, averaged)",
    )
    faces = load_faces(
        g,
        (C[1], 1220),
        analyzer,
        b_photos[0]["IMAGE"],
        combine="normalized average",
        previous=faces_a,
        more=[p["IMAGE"] for p in b_photos[1:]],
        title="Load Faces (+ person B, averaged)",
    )
    crops = preview(g, (C[2], 380), faces["crops"], "Every photo's face")
    g.group("1 · Who: several photos per person", [*a_photos, *b_photos, analyzer, faces_a, faces, crops], WHO)
    mask, circle = where_section(g, 1900, faces, analyzer, instantfamily, "2people")
    prompt = "a photo of two people walking together on a beach at sunset, detailed faces"
    generate_section(g, faces, instantfamily, mask, circle, prompt, (512, 512), 2024, "several_photos", y=800)
    return g


def sdxl_three_people(node_classes):
    g = Graph(node_classes)
    analyzer, instantfamily = common_top(
        g,
        (
            "SDXL: three people in a pose you choose, at 1216x832 (one of SDXL's ~1 megapixel buckets).\n\n"
            "Base model: an SDXL checkpoint in models/checkpoints (e.g. sd_xl_base_1.0.safetensors, or an SDXL "
            "fine-tune); InstantFamily: a checkpoint trained for SDXL (base_model SDXL) in models/instantfamily. "
            "Apply refuses an SD1.5 checkpoint on an SDXL model, naming both.\n1 Who: one ID photo per person "
            "(A, B, C = IDs 0, 1, 2).\n2 Where: a template photo of three people (left to right = ID 0, 1, 2) and "
            "the OpenPose skeleton of the same arrangement.\nOther SDXL sizes: 1024x1024, 1152x896, 1344x768, "
            "1536x640 and their portrait twins."
        ),
        checkpoint=SDXL_CHECKPOINT,
    )
    photos = [
        load_image(g, (C[0], 360 * k), f"person_{p}.png", f"ID photo: person {p.upper()}") for k, p in enumerate("abc")
    ]
    chain = []  # each Load Faces appends its person to the previous one's faces
    for k, photo in enumerate(photos):
        previous = chain[-1] if chain else None
        title = f"Load Faces (+ person {'ABC'[k]})" if chain else "Load Faces (person A)"
        chain.append(load_faces(g, (C[1], 170 + 250 * k), analyzer, photo["IMAGE"], previous=previous, title=title))
    faces = chain[-1]
    crops = preview(g, (C[2], 380), faces["crops"], "Faces found (ID order)")
    g.group("1 · Who: one photo per person", [*photos, analyzer, *chain, crops], WHO)
    mask, circle = where_section(g, 1100, faces, analyzer, instantfamily, "3people")
    prompt = "a photo of three friends hiking on a mountain trail, golden hour, smiling, detailed faces"
    generate_section(
        g, faces, instantfamily, mask, circle, prompt, (1216, 832), 77, "sdxl_three_people", base=(SDXL, "SDXL")
    )
    return g


def evaluation_identity_report(node_classes):
    g = Graph(node_classes)
    analyzer, instantfamily = common_top(
        g,
        (
            "Generate a batch, then measure identity with InstantFamily Identity Report.\n\nThe report (shown on the "
            "node) judges each ID in the place Face Mask gave it: similarity and a verdict (OK / swapped / duplicate / "
            "wrong / missing, also drawn on the images), slot accuracy, swaps, mixing and MultiSim; the heatmap is "
            "the references x slots similarity matrix. Re-roll the seed when a face is wrong. "
            "encoder: 'insightface (analyzer)' "
            "works with this pack's requirements; 'dlib' (pip install dlib-bin face_recognition_models) is an "
            "independent judge; 'facenet' is the paper's metric."
        ),
    )
    a = load_image(g, (C[0], 0), "person_a.png", "ID photo: person A")
    b = load_image(g, (C[0], 360), "person_b.png", "ID photo: person B")
    faces_a = load_faces(g, (C[1], 170), analyzer, a["IMAGE"], title="Load Faces (person A)")
    faces = load_faces(g, (C[1], 420), analyzer, b["IMAGE"], previous=faces_a, title="Load Faces (+ person B)")
    g.group("1 · Who", [a, b, analyzer, faces_a, faces], WHO)
    mask, circle = where_section(g, 800, faces, analyzer, instantfamily, "2people")
    prompt = "a photo of two friends sitting at a cafe table, looking at the camera, detailed faces"
    decode = generate_section(g, faces, instantfamily, mask, circle, prompt, (512, 512), 100, "evaluation", batch=4)
    report = g.add("InstantFamilyIdentityReport", (C[5] + 380, 0), ["insightface (analyzer)", True], height=300)
    g.link(decode["IMAGE"], report, "images")
    g.link(faces["faces"], report, "faces")
    g.link(analyzer["analyzer"], report, "analyzer")
    g.link(mask["face_masks"], report, "face_masks")
    heatmap = preview(g, (C[5] + 380, 340), report["confusion_matrix"], "Identity confusion matrix")
    verdicts = preview(g, (C[5] + 380, 640), report["verdicts"], "Verdict per ID, drawn on the images")
    g.group("4 · Evaluate", [report, heatmap, verdicts], "#b58b2a")
    return g


WORKFLOWS = {
    # name: (builder, thumbnail title, thumbnail subtitle)
    "two_people_pose_template": (two_people, "Two people + pose template", "ID photos -> template -> SD1.5"),
    "two_people_dwpose": (
        lambda node_classes: two_people(node_classes, optional_pose=True),
        "Two people + DWPose (optional)",
        "needs comfyui_controlnet_aux",
    ),
    "four_people_group_photo": (four_people_group_photo, "Four people from a group photo", "every face -> 4 IDs"),
    "seven_people": (seven_people, "Seven people (paper Fig. 8)", "beyond the trained four"),
    "several_photos_per_person": (several_photos_per_person, "Several photos per person", "averaged IDs"),
    "sdxl_three_people": (sdxl_three_people, "SDXL: three people, 1216x832", "ID photos -> template -> SDXL"),
    "evaluation_identity_report": (
        evaluation_identity_report,
        "Generate + Identity Report",
        "right person, right place?",
    ),
}


def build_all(node_classes: dict) -> dict[str, str]:
    """name -> JSON text of every example workflow; ``node_classes``: a host's NODE_CLASS_MAPPINGS (the sockets)."""
    return {name: dumps(builder(node_classes).to_json()) for name, (builder, _, _) in WORKFLOWS.items()}


def host_node_classes(session_dir: Path) -> dict:
    """NODE_CLASS_MAPPINGS of a started ComfyUI host with this pack loaded (instantfamily_dev.comfy_host)."""
    from instantfamily_dev.comfy_host import start_host

    return start_host(session_dir).nodes.NODE_CLASS_MAPPINGS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare with the committed files")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="instantfamily_workflows_") as session:
        texts = build_all(host_node_classes(Path(session)))
    if args.check:
        stale = [
            n for n, t in texts.items() if not (OUT / f"{n}.json").is_file() or (OUT / f"{n}.json").read_text() != t
        ]
        for name in stale:
            print(f"example_workflows/{name}.json is out of date: run python scripts/make_workflows.py")
        return 1 if stale else 0
    import json

    OUT.mkdir(exist_ok=True)
    for name, text in texts.items():
        (OUT / f"{name}.json").write_text(text)
        _, title, subtitle = WORKFLOWS[name]
        render_thumbnail(json.loads(text), title, subtitle).save(OUT / f"{name}.jpg", quality=90)
        print(f"wrote example_workflows/{name}.json and .jpg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
