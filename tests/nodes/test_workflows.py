"""The example workflows against this host: node types exist, widgets match INPUT_TYPES by position,
sockets and links agree with the real definitions, and each workflow, converted to an API prompt and
swapped onto the tiny test models, passes ComfyUI's validator and runs."""

import os

import pytest
import torch
import workflow_fixtures as wf
from PIL import Image

from instantfamily_dev import workflow_api as api

WORKFLOWS = wf.workflow_names()
# Combo widgets whose choices are the user's own files (the test host has other files there).
USER_FILE_WIDGETS = {
    ("LoadImage", "image"),
    ("CheckpointLoaderSimple", "ckpt_name"),
    ("InstantFamilyModelLoader", "instantfamily_file"),
}
WEIGHT_LOADERS = {"CheckpointLoaderSimple", "InstantFamilyModelLoader", "InstantFamilyLoadFaceAnalyzer"}
EXPECTED = {
    "two_people_pose_template",
    "four_people_group_photo",
    "seven_people",
    "several_photos_per_person",
    "evaluation_identity_report",
    "two_people_dwpose",
    "sdxl_three_people",
}


@pytest.fixture(scope="module")
def world(comfy_host):
    """Test photos in the host's input folder, the tiny face pack and the test checkpoint in its models."""
    wf.write_test_images(comfy_host.folder_paths.get_input_directory())
    wf.build_test_models(comfy_host, comfy_host.models_dir)
    comfy_host.folder_paths.filename_list_cache.clear()
    return comfy_host


def definitions(comfy_host, workflow):
    types = {n["type"] for n in workflow["nodes"]}
    found = api.definitions_from_classes(comfy_host.nodes.NODE_CLASS_MAPPINGS, types)
    found.update({t: d for t, d in wf.RECORDED_DEFINITIONS.items() if t in types})
    return found


def test_the_promised_workflows_exist_with_thumbnails_and_match_their_generator(comfy_host):
    """The committed JSON is what the generator writes with the sockets of this host's node classes."""
    from scripts import make_workflows

    assert set(WORKFLOWS) == EXPECTED
    texts = make_workflows.build_all(comfy_host.nodes.NODE_CLASS_MAPPINGS)
    assert set(texts) == EXPECTED
    for name in WORKFLOWS:
        assert (wf.WORKFLOW_DIR / f"{name}.json").read_text() == texts[name], (
            f"{name}.json is stale: run python scripts/make_workflows.py"
        )
        with Image.open(wf.WORKFLOW_DIR / f"{name}.jpg") as thumb:
            assert thumb.format == "JPEG" and 128 <= min(thumb.size) and max(thumb.size) <= 512


@pytest.mark.parametrize("name", WORKFLOWS)
def test_every_node_type_is_stock_or_this_packs(comfy_host, name):
    workflow = wf.load_workflow(name)
    pack_types = set(comfy_host.pack.NODE_CLASS_MAPPINGS)
    fixture_types = set(comfy_host.fixtures.NODE_CLASS_MAPPINGS)
    stock = set(comfy_host.nodes.NODE_CLASS_MAPPINGS) - pack_types - fixture_types
    allowed_optional = wf.OPTIONAL_WORKFLOWS.get(name, set())
    for node in workflow["nodes"]:
        kind = node["type"]
        assert kind in pack_types | stock | {"Note"} | allowed_optional, (
            f"{name}: node {node['id']} has type {kind!r}, neither this pack's nor stock ComfyUI {comfy_host.version}'s"
            " (of the frontend-only nodes, only Note exists in every frontend)"
        )
        assert kind not in fixture_types
    used = {n["type"] for n in workflow["nodes"]}
    assert used & pack_types >= {
        "InstantFamilyModelLoader",
        "InstantFamilyLoadFaces",
        "InstantFamilyApply",
        "InstantFamilyBuildEmbeddingStack",
        "InstantFamilyFaceMask",
    }
    assert allowed_optional <= used  # an optional variant really is one
    note = " ".join(n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "Note")
    assert all(wf.OPTIONAL_NODES[t] in note for t in allowed_optional), "say in the Note which pack it needs"


@pytest.mark.parametrize("name", WORKFLOWS)
def test_widgets_sockets_and_links_match_the_node_definitions(comfy_host, name):
    workflow = wf.load_workflow(name)
    defs = definitions(comfy_host, workflow)
    errors = api.schema_errors(workflow)
    for node in workflow["nodes"]:
        kind, where = node["type"], f"node {node['id']} ({node['type']})"
        if kind in api.UI_ONLY_TYPES:
            continue
        layout = api.widgets_of(defs[kind])
        values = node["widgets_values"]
        if len(values) != len(layout):
            errors.append(f"{where}: {len(values)} widget values for widgets {[w.name for w in layout]}")
            continue
        free = {w for (t, w) in USER_FILE_WIDGETS if t == kind}
        errors += [f"{where}: {e}" for w, v in zip(layout, values) for e in api.widget_value_errors(w, v, free)]
        sockets = [(s["name"], s["type"]) for s in node["inputs"]]
        if sockets != api.sockets_of(defs[kind]):
            errors.append(f"{where}: sockets {sockets} != definition {api.sockets_of(defs[kind])}")
        if kind in comfy_host.nodes.NODE_CLASS_MAPPINGS:
            cls = comfy_host.nodes.NODE_CLASS_MAPPINGS[kind]
            names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
            outputs = [(o["name"], o["type"]) for o in node["outputs"]]
            if outputs != list(zip(names, cls.RETURN_TYPES)):
                errors.append(f"{where}: outputs {outputs} != {list(zip(names, cls.RETURN_TYPES))}")
    assert not errors, "\n".join(errors)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, origin, slot, target, tslot, type_ in workflow["links"]:
        assert nodes[origin]["outputs"][slot]["type"] == type_ == nodes[target]["inputs"][tslot]["type"]
        assert link_id in nodes[origin]["outputs"][slot]["links"] and nodes[target]["inputs"][tslot]["link"] == link_id
    assert workflow["last_link_id"] == max(link[0] for link in workflow["links"])
    assert workflow["last_node_id"] == max(nodes)


def test_converter_follows_the_ui_conventions(comfy_host):
    """Seed control widgets, the LoadImage upload widget, a widget fed by a PrimitiveNode, a Reroute."""
    ksampler = api.widgets_of(comfy_host.node_class("KSampler").INPUT_TYPES())
    assert [w.name for w in ksampler][:2] == ["seed", "seed:control_after_generate"]
    load = api.widgets_of(comfy_host.node_class("LoadImage").INPUT_TYPES())
    assert [w.kind for w in load] == ["COMBO", "UPLOAD"]
    workflow = {
        "nodes": [
            {"id": 1, "type": "PrimitiveNode", "inputs": [], "outputs": [], "widgets_values": [96, "fixed"]},
            {
                "id": 2,
                "type": "EmptyLatentImage",
                "inputs": [{"name": "width", "type": "INT", "link": 2, "widget": {"name": "width"}}],
                "outputs": [],
                "widgets_values": [96, 512, 1],
            },
            {
                "id": 3,
                "type": "Reroute",
                "inputs": [{"name": "", "type": "*", "link": 3}],
                "outputs": [],
                "widgets_values": [],
            },
            {
                "id": 4,
                "type": "IFTestLatentProbe",
                "inputs": [{"name": "samples", "type": "LATENT", "link": 4}],
                "outputs": [],
                "widgets_values": [],
            },
            {
                "id": 5,
                "type": "IFTestConditioning",
                "inputs": [],
                "outputs": [],
                "widgets_values": [3, "fixed", 32, 7, 1, 0],
            },
            {"id": 6, "type": "EmptyLatentImage", "inputs": [], "outputs": [], "widgets_values": [64, 48, 1]},
            {"id": 7, "type": "Note", "inputs": [], "outputs": [], "widgets_values": ["text"]},
        ],
        "links": [[2, 1, 0, 2, 0, "INT"], [3, 6, 0, 3, 0, "LATENT"], [4, 3, 0, 4, 0, "LATENT"]],
    }
    defs = api.definitions_from_classes(
        comfy_host.nodes.NODE_CLASS_MAPPINGS, ["EmptyLatentImage", "IFTestLatentProbe", "IFTestConditioning"]
    )
    prompt = api.ui_to_api(workflow, defs)
    assert set(prompt) == {"2", "4", "5", "6"}  # no PrimitiveNode, Reroute or Note
    assert prompt["2"]["inputs"] == {"width": 96, "height": 512, "batch_size": 1}
    assert prompt["4"]["inputs"] == {"samples": ["6", 0]}  # through the Reroute
    assert prompt["5"]["inputs"] == {"seed": 3, "context_dim": 32, "tokens": 7, "batch": 1, "pooled": 0}
    assert comfy_host.validate(prompt) == (True, [])
    workflow["nodes"][5]["widgets_values"] = [64, 48]
    with pytest.raises(api.WorkflowError, match="2 widget values for 3 widgets"):
        api.ui_to_api(workflow, defs)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_each_workflow_runs_on_a_tiny_model_of_its_own_family(world, name):
    """The SDXL workflow runs on the tiny SDXL model with an SDXL-trained test checkpoint (Apply refuses a
    mismatch), the others on the tiny SD1.5 one: a run is evidence for the family the workflow is for."""
    workflow = wf.load_workflow(name)
    family = "SDXL" if any(n["type"] == "CheckpointLoaderSimple" and "xl" in n["widgets_values"][0].lower()
                           for n in workflow["nodes"]) else "SD1.5"  # fmt: skip
    swapped = wf.use_test_models(api.ui_to_api(workflow, definitions(world, workflow)), name)
    models = [n["inputs"] for n in swapped.values() if n["class_type"] == "IFTestTinyModel"]
    loaders = [n["inputs"] for n in swapped.values() if n["class_type"] == "InstantFamilyModelLoader"]
    assert models and all(m["family"] == family for m in models)
    assert loaders and all(m["instantfamily_file"] == wf.TEST_CHECKPOINTS[family] for m in loaders)


@pytest.mark.parametrize("name", WORKFLOWS)
def test_converted_workflow_passes_the_hosts_validator(world, name):
    workflow = wf.load_workflow(name)
    prompt = api.ui_to_api(workflow, definitions(world, workflow))
    assert len(prompt) == sum(n["type"] not in api.UI_ONLY_TYPES for n in workflow["nodes"])
    assert wf.images_used(prompt) <= set(wf.TEST_IMAGES), "add the new image names to workflow_fixtures.TEST_IMAGES"
    swapped = wf.use_test_models(prompt, name)
    ok, errors = world.validate(swapped)
    assert ok, "\n".join(errors)
    # ComfyUI accepts a prompt when ANY output validates and drops the others: require all of them.
    _, _, good_outputs, node_errors = world._validate_raw(swapped)
    assert node_errors == {}
    output_nodes = {
        nid for nid, n in swapped.items() if getattr(world.node_class(n["class_type"]), "OUTPUT_NODE", False)
    }
    assert set(good_outputs) == output_nodes and output_nodes
    # Unswapped, only the loaders of absent weights fail (the test host has no SD1.5 or real checkpoint).
    _, _, _, node_errors = world._validate_raw(wf.without_other_packs(prompt, name))
    failing = {prompt[nid]["class_type"] for nid in node_errors}
    assert {"CheckpointLoaderSimple", "InstantFamilyModelLoader"} <= failing <= WEIGHT_LOADERS


IDS = {
    "two_people_pose_template": 2,
    "two_people_dwpose": 2,
    "four_people_group_photo": 4,
    "seven_people": 7,
    "several_photos_per_person": 2,
    "evaluation_identity_report": 2,
    "sdxl_three_people": 3,
}


def node_id(prompt, class_type):
    (found,) = [nid for nid, n in prompt.items() if n["class_type"] == class_type]
    return found


@pytest.mark.parametrize("name", WORKFLOWS)
def test_workflow_runs_on_this_host(world, name):
    """The whole graph executes in the 2024 host (test_server.py runs them in a real 0.3.x server)."""
    if world.version != "2024":
        pytest.skip("on this host the workflows run end to end through the HTTP server (test_server.py)")
    workflow = wf.load_workflow(name)
    prompt = wf.use_test_models(api.ui_to_api(workflow, definitions(world, workflow)), name, steps=1, max_batch=1)
    outputs = world.run_prompt(prompt)
    stack = node_id(prompt, "InstantFamilyBuildEmbeddingStack")
    faces = outputs[prompt[stack]["inputs"]["faces"][0]][0]
    assert len(faces) == IDS[name] and outputs[stack][0].num_faces == IDS[name]
    assert len(outputs[node_id(prompt, "InstantFamilyFaceMask")][0]) == IDS[name]
    image = outputs[node_id(prompt, "IFTestDecode")][0]
    assert tuple(image.shape) == (1, 64, 64, 3) and torch.isfinite(image).all()
    (saved,) = outputs.ui[node_id(prompt, "SaveImage")]["images"]
    path = os.path.join(world.folder_paths.get_output_directory(), saved["subfolder"], saved["filename"])
    with Image.open(path) as png:
        assert png.size == (64, 64)
    if name == "evaluation_identity_report":
        report = outputs[node_id(prompt, "InstantFamilyIdentityReport")][0]
        assert report.startswith("InstantFamily identity report") and "2 identities, 1 images" in report
        assert "slots by position (face_masks)" in report and "slots: accuracy" in report
