"""The pack in a REAL ComfyUI server process (``main.py --cpu`` on 127.0.0.1), driven over HTTP.

One server per session, started from the host this stage tests (ComfyUI 0.3.75 in nodes@2025, or
COMFYUI_PATH); the 2024 stage skips this module (it runs the same workflows in-process in
test_workflows.py). The server gets this pack and the test fixture pack as symlinks in its own
custom_nodes, the tiny face pack and test checkpoint in its own models folder, and test photos in
its input folder; weights-dependent nodes are swapped for stand-ins (workflow_fixtures.use_test_models).
"""

import io
import json
import time

import numpy as np
import pytest
import workflow_fixtures as wf
from PIL import Image

from instantfamily_dev import workflow_api as api
from instantfamily_dev.comfy_host import FIXTURE_DIR_NAME, FIXTURE_PACK, PACK_DIR_NAME, REPO_ROOT
from instantfamily_dev.comfy_server import ComfyServer, execution_error

# The inputs users' workflows store by name (API format) and by position (UI format): a rename or
# reorder here breaks saved workflows, so it must be deliberate.
DOCUMENTED = {
    "InstantFamilyModelLoader": (["instantfamily_file"], [], ["INSTANTFAMILY_MODEL"]),
    "InstantFamilyBuildEmbeddingStack": (["instantfamily", "faces"], [], ["INSTANTFAMILY_STACK"]),
    "InstantFamilyApply": (
        ["model", "instantfamily", "stack", "face_masks", "weight", "start_at", "end_at", "mask_mode", "overlap"],
        ["attn1_isolation"],
        ["MODEL"],
    ),
    "InstantFamilyLoadFaceAnalyzer": (["pack", "provider", "det_size", "det_thresh"], [], ["INSTANTFAMILY_ANALYZER"]),
    "InstantFamilyLoadFaces": (
        ["analyzer", "images", "mode", "order", "combine", "face_indices"],
        ["faces", "images_2", "images_3", "images_4"],
        ["INSTANTFAMILY_FACES", "IMAGE", "IMAGE"],
    ),
    "InstantFamilyFaceMask": (
        ["margin", "order", "overlap"],
        ["faces", "template", "analyzer", "pose_keypoint", "masks", "instantfamily"],
        ["INSTANTFAMILY_FACE_MASKS", "IMAGE"],
    ),
    "InstantFamilyPoseCircleImage": ([], ["pose_keypoint", "pose_image", "face_masks", "instantfamily"], ["IMAGE"]),
    "InstantFamilyPoseCircleControlNet": (
        [
            "positive",
            "negative",
            "model",
            "instantfamily",
            "stack",
            "face_masks",
            "control_image",
            "strength",
            "start_percent",
            "end_percent",
        ],
        [],
        ["CONDITIONING", "CONDITIONING"],
    ),
    # new inputs/outputs only at the end: saved workflows keep loading
    "InstantFamilyIdentityReport": (
        ["images", "faces", "encoder", "clamp"],
        ["analyzer", "face_masks"],
        ["STRING", "IMAGE", "IMAGE"],
    ),
}
BATCH = {"evaluation_identity_report": 2}  # images per prompt after use_test_models (max_batch=2)


@pytest.fixture(scope="module")
def server(comfy_host, tmp_path_factory):
    if comfy_host.version == "2024":
        pytest.skip(
            "the HTTP server test runs once, in the nodes@2025 (or COMFYUI_PATH) stage; "
            "test_workflows.py runs the workflows in this host"
        )
    base = tmp_path_factory.mktemp("server")
    for sub in ("custom_nodes", "input", "output", "user", "models/instantfamily", "models/insightface/models"):
        (base / sub).mkdir(parents=True)
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    (base / "custom_nodes" / FIXTURE_DIR_NAME).symlink_to(FIXTURE_PACK, target_is_directory=True)
    wf.build_test_models(comfy_host, base / "models")
    wf.write_test_images(base / "input")
    srv = ComfyServer(comfy_host.root, base)
    srv.start()
    print(f"\n[server] ComfyUI answered after {srv.startup_seconds:.1f}s on {srv.url}")
    yield srv
    srv.stop()
    assert srv.process.returncode is not None


@pytest.fixture(scope="module")
def object_info(server):
    status, info = server.get_json("/object_info", timeout=60)
    assert status == 200
    return info


def test_object_info_lists_every_pack_node_with_its_documented_inputs(server, object_info, comfy_host):
    assert set(comfy_host.pack.NODE_CLASS_MAPPINGS) <= set(object_info)
    assert set(DOCUMENTED) <= set(comfy_host.pack.NODE_CLASS_MAPPINGS)
    for name, (required, optional, outputs) in DOCUMENTED.items():
        info = object_info[name]
        order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
        assert list(order.get("required", [])) == required, name
        assert list(order.get("optional", [])) == optional, name
        assert info["output"] == outputs, name
        assert info["category"].startswith("InstantFamily")
        assert info["display_name"] == comfy_host.nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
        assert PACK_DIR_NAME in info["python_module"]
    # the test models are visible to the loaders through the server's folders
    assert wf.TEST_PACK in object_info["InstantFamilyLoadFaceAnalyzer"]["input"]["required"]["pack"][0]
    assert wf.TEST_CHECKPOINT in object_info["InstantFamilyModelLoader"]["input"]["required"]["instantfamily_file"][0]


def test_template_browser_serves_the_example_workflows(server):
    status, templates = server.get_json("/workflow_templates")
    assert status == 200 and sorted(templates[PACK_DIR_NAME]) == wf.workflow_names()
    for name in wf.workflow_names():
        status, body = server.request(f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.json")
        assert status == 200 and json.loads(body) == wf.load_workflow(name)
        status, body = server.request(f"/api/workflow_templates/{PACK_DIR_NAME}/{name}.jpg")
        assert status == 200 and body == (wf.WORKFLOW_DIR / f"{name}.jpg").read_bytes()


def api_prompt(object_info, name, **swap):
    workflow = wf.load_workflow(name)
    definitions = dict(api.definitions_from_object_info(object_info), **wf.RECORDED_DEFINITIONS)
    return wf.use_test_models(api.ui_to_api(workflow, definitions), name, **swap)


def node_id(prompt, class_type):
    (found,) = [nid for nid, n in prompt.items() if n["class_type"] == class_type]
    return found


def pixels(server, ref) -> np.ndarray:
    with Image.open(io.BytesIO(server.image(ref))) as png:
        return np.asarray(png.convert("RGB"))


def queue_strict(server, prompt):
    """POST /prompt; ComfyUI answers 200 when ANY output validates, so also require no node_errors."""
    status, reply = server.queue(prompt)
    assert status == 200, json.dumps(reply, indent=1)[:3000]
    assert reply["node_errors"] == {}, json.dumps(reply["node_errors"], indent=1)[:3000]
    return reply["prompt_id"]


@pytest.mark.parametrize("name", wf.workflow_names())
def test_example_workflow_runs_through_the_server(server, object_info, name):
    prompt = api_prompt(object_info, name)
    t0 = time.monotonic()
    entry = server.wait(queue_strict(server, prompt), timeout=180)
    print(f"\n[server] {name}: {time.monotonic() - t0:.1f}s")
    assert entry["status"]["status_str"] == "success", execution_error(entry)
    outputs = entry["outputs"]
    saved = outputs[node_id(prompt, "SaveImage")]["images"]
    assert len(saved) == BATCH.get(name, 1) and all(ref["type"] == "output" for ref in saved)
    for ref in saved:
        image = pixels(server, ref)
        assert image.shape == (64, 64, 3) and image.std() > 0
    previews = [nid for nid, n in prompt.items() if n["class_type"] == "PreviewImage"]
    assert previews and all(outputs[nid]["images"] for nid in previews)
    if name == "evaluation_identity_report":
        (report,) = outputs[node_id(prompt, "InstantFamilyIdentityReport")]["text"]
        assert report.startswith("InstantFamily identity report") and "2 identities, 2 images" in report
        assert "slots by position (face_masks)" in report and "slots: accuracy" in report


CROSS_TALK_FACES = 6


def cross_talk_prompt(base, i):
    """Prompt i of the batch: its own pair of faces and seed; previews left out, the latent reported."""
    prompt = {nid: n for nid, n in json.loads(json.dumps(base)).items() if n["class_type"] != "PreviewImage"}
    loads = sorted(
        (
            nid
            for nid, n in prompt.items()
            if n["class_type"] == "LoadImage" and n["inputs"]["image"].startswith("person_")
        ),
        key=lambda nid: prompt[nid]["inputs"]["image"],
    )
    a, b = i % CROSS_TALK_FACES, (i + 1 + i // CROSS_TALK_FACES) % CROSS_TALK_FACES
    prompt[loads[0]]["inputs"]["image"] = f"xt_face_{a}.png"
    prompt[loads[1]]["inputs"]["image"] = f"xt_face_{b}.png"
    sampler = node_id(prompt, "KSampler")
    prompt[sampler]["inputs"]["seed"] = 1000 + i % 4
    prompt[node_id(prompt, "SaveImage")]["inputs"]["filename_prefix"] = f"xt/{i:02d}"
    prompt["latent_values"] = {"class_type": "IFTestLatentValues", "inputs": {"samples": [sampler, 0]}}
    return prompt, (a, b), 1000 + i % 4


def flush_prompt(tag):
    """A prompt sharing no node with the others: ComfyUI then drops every cached output."""
    return {
        "1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64 + 8 * tag, "batch_size": 1}},
        "2": {"class_type": "IFTestLatentProbe", "inputs": {"samples": ["1", 0]}},
    }


def latent_of(entry):
    ui = entry["outputs"]["latent_values"]
    return np.asarray(ui["values"], np.float64).reshape(ui["shape"])


def test_twenty_queued_prompts_do_not_cross_talk(server, object_info):
    base = api_prompt(object_info, "two_people_pose_template", steps=1)
    for k in range(CROSS_TALK_FACES):
        wf.write_image(server.base_dir / "input", f"xt_face_{k}.png", [(20 + k, wf.SHIFTED[0])])
    batch = [cross_talk_prompt(base, i) for i in range(20)]
    t0 = time.monotonic()
    ids = [queue_strict(server, p) for p, _, _ in batch]
    answers = []
    while True:  # the server keeps answering while the queue drains
        t = time.monotonic()
        status, queue = server.get_json("/queue", timeout=10)
        answers.append(time.monotonic() - t)
        assert status == 200
        if not queue["queue_running"] and not queue["queue_pending"]:
            break
        assert time.monotonic() - t0 < 600, "the queue did not drain in 10 minutes"
        time.sleep(1.0)
    entries = [server.wait(pid, timeout=30) for pid in ids]
    print(f"\n[server] 20 queued prompts: {time.monotonic() - t0:.1f}s; /queue answered in <= {max(answers):.2f}s")
    assert all(e["status"]["status_str"] == "success" for e in entries), [execution_error(e) for e in entries]
    save = node_id(base, "SaveImage")
    assert all(len(e["outputs"][save]["images"]) == 1 for e in entries)
    latents = [latent_of(e) for e in entries]
    # Faces matter: the same seed with another pair of faces gives another result.
    effects = [
        np.abs(latents[i] - latents[j]).max()
        for i in range(20)
        for j in range(i + 1, 20)
        if batch[i][2] == batch[j][2] and batch[i][1] != batch[j][1]
    ]
    print(f"[server] same seed, other faces: latents differ by {min(effects):.3g} .. {max(effects):.3g} (max |diff|)")
    assert min(effects) > 0.02
    # Each result depends only on its own prompt: run alone after the cache is flushed, it is the same.
    for tag, i in enumerate((0, 19)):
        assert server.run(flush_prompt(tag + 1))["status"]["status_str"] == "success"
        alone = server.wait(queue_strict(server, batch[i][0]), timeout=120)
        assert alone["status"]["status_str"] == "success", execution_error(alone)
        drift = np.abs(latent_of(alone) - latents[i]).max()
        print(f"[server] prompt {i} alone vs in the batch: max |diff| {drift:.3g}")
        assert drift <= 1e-3, f"prompt {i} gives another result when run alone"
    status, _ = server.get_json("/system_stats")
    assert status == 200


def test_malformed_prompts_get_validation_errors(server, object_info):
    # Without the previews, SaveImage is the only output: one bad input leaves nothing to run (HTTP 400).
    # (With other valid outputs, ComfyUI answers 200, runs those and lists the bad node in node_errors.)
    base = {
        nid: n
        for nid, n in api_prompt(object_info, "two_people_pose_template", steps=1).items()
        if n["class_type"] != "PreviewImage"
    }
    sampler, apply = node_id(base, "KSampler"), node_id(base, "InstantFamilyApply")
    latent, analyzer = node_id(base, "EmptyLatentImage"), node_id(base, "InstantFamilyLoadFaceAnalyzer")

    def edited(node, **inputs):
        prompt = json.loads(json.dumps(base))
        prompt[node]["inputs"].update(inputs)
        prompt[node]["inputs"] = {k: v for k, v in prompt[node]["inputs"].items() if v is not None}
        return prompt

    cases = [
        (edited(sampler, steps=None), sampler, "required_input_missing"),
        (edited(sampler, steps="many"), sampler, "invalid_input_type"),
        (edited(apply, stack=[latent, 0]), apply, "return_type_mismatch"),
        (edited(analyzer, pack="no_such_pack"), analyzer, "value_not_in_list"),
    ]
    for prompt, bad_node, error_type in cases:
        status, reply = server.queue(prompt)
        assert status == 400, (error_type, reply)
        assert bad_node in reply["node_errors"], (error_type, reply["node_errors"])
        assert error_type in {e["type"] for e in reply["node_errors"][bad_node]["errors"]}
    unknown = dict(base, **{"999": {"class_type": "InstantFamilyNoSuchNode", "inputs": {}}})
    status, reply = server.queue(unknown)
    assert status == 400 and reply["error"]["type"] == "invalid_prompt"
    status, _ = server.get_json("/system_stats")
    assert status == 200


def test_unknown_face_index_is_a_clean_execution_error(server, object_info):
    base = api_prompt(object_info, "two_people_pose_template", steps=1)
    prompt = json.loads(json.dumps(base))
    faces = [nid for nid, n in prompt.items() if n["class_type"] == "InstantFamilyLoadFaces"]
    prompt[faces[0]]["inputs"]["face_indices"] = "5"  # the photo has one face
    entry = server.wait(queue_strict(server, prompt), timeout=120)
    assert entry["status"]["status_str"] == "error"
    error = execution_error(entry)
    assert error["node_type"] == "InstantFamilyLoadFaces" and error["exception_type"].endswith("ValueError")
    assert "face indices [5] do not exist" in error["exception_message"]
    # the server carries on: the same prompt with a valid index runs
    prompt[faces[0]]["inputs"]["face_indices"] = "0"
    assert server.wait(queue_strict(server, prompt), timeout=120)["status"]["status_str"] == "success"
