"""The test host itself: ComfyUI loads the pack, validates and runs real prompts on the CPU."""

import os

import pytest
import torch

from instantfamily_dev.comfy_host import PACK_DIR_NAME, PATH_ENV, REPO_ROOT, PromptExecutionError

CONTEXT_DIM = 32


def _tiny_prompt(width=64, height=48, batch=2, steps=2, cfg=2.0):
    """Tiny model + random conditionings + empty latent -> KSampler -> latent probe."""
    return {
        "1": {"class_type": "IFTestTinyModel", "inputs": {"seed": 1, "context_dim": CONTEXT_DIM}},
        "2": {
            "class_type": "IFTestConditioning",
            "inputs": {"seed": 2, "context_dim": CONTEXT_DIM, "tokens": 77, "batch": 1},
        },
        "3": {
            "class_type": "IFTestConditioning",
            "inputs": {"seed": 3, "context_dim": CONTEXT_DIM, "tokens": 77, "batch": 1},
        },
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": 7,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "IFTestLatentProbe", "inputs": {"samples": ["5", 0]}},
    }


def test_host_is_the_selected_comfyui(comfy_host):
    assert comfy_host.version in ("2024", "2025")
    assert comfy_host.nodes.__file__.startswith(str(comfy_host.root))
    if not os.environ.get(PATH_ENV) and comfy_host.version == "2025":
        assert comfy_host.comfyui_version == "0.3.75"
    for stock in ("KSampler", "EmptyLatentImage", "CheckpointLoaderSimple"):
        assert comfy_host.node_class(stock) is comfy_host.nodes.NODE_CLASS_MAPPINGS[stock]


def test_pack_loaded_through_comfyui_loader(comfy_host):
    pack = comfy_host.pack
    assert pack.__file__ == str(comfy_host.session_dir / "custom_nodes" / PACK_DIR_NAME / "__init__.py")
    assert (REPO_ROOT / "__init__.py").samefile(pack.__file__)
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert comfy_host.node_class(name) is cls
    assert comfy_host.pack_import("instantfamily_core").__name__ == f"{pack.__name__}.instantfamily_core"
    warnings = comfy_host.load_warnings[PACK_DIR_NAME]
    assert not warnings, f"loading the pack logged warnings: {warnings}"


def test_fixture_nodes_registered(comfy_host):
    for name in ("IFTestTinyModel", "IFTestConditioning", "IFTestLatentProbe"):
        assert comfy_host.node_class(name) is comfy_host.fixtures.NODE_CLASS_MAPPINGS[name]


def test_models_dir_is_isolated(comfy_host):
    import folder_paths

    models = comfy_host.models_dir
    assert (models / "instantfamily").is_dir() and (models / "insightface" / "models").is_dir()
    assert folder_paths.get_folder_paths("controlnet")[0] == str(models / "controlnet")
    assert folder_paths.get_folder_paths("checkpoints") == [str(models / "checkpoints")]


def test_pyproject_parses_with_comfyui_config_parser(comfy_host):
    try:
        from comfy_config import config_parser
    except ImportError:
        pytest.skip(f"ComfyUI {comfy_host.version} has no comfy_config (pyproject support came later)")
    config = config_parser.extract_node_configuration(str(REPO_ROOT))
    assert config.project.name == "comfyui-instantfamily"
    assert config.tool_comfy.publisher_id == "instantfamily"
    assert config.tool_comfy.display_name == "InstantFamily"


def test_tiny_model_emits_sd15_attn2_keys(comfy_host):
    model = comfy_host.tiny_sd15_model(context_dim=CONTEXT_DIM, seed=0).clone()
    seen = []

    def record(q, context, value, extra_options):
        seen.append((extra_options["block"][0], int(extra_options["block"][1])))
        return q, context, value

    model.set_model_attn2_patch(record)
    cond = comfy_host.random_conditioning(context_dim=CONTEXT_DIM, seed=1)
    latent = torch.zeros(1, 4, 8, 8)
    comfy_host.sample(model, cond, cond, latent, seed=0, steps=1, cfg=1.0)
    assert sorted(set(seen)) == sorted(comfy_host.fixtures.tiny_model.SD15_ATTN2_BLOCKS)


def test_sample_with_tiny_model_is_deterministic(comfy_host):
    model = comfy_host.tiny_sd15_model(context_dim=CONTEXT_DIM, seed=0)
    pos = comfy_host.random_conditioning(context_dim=CONTEXT_DIM, seed=1)
    neg = comfy_host.random_conditioning(context_dim=CONTEXT_DIM, seed=2)
    latent = torch.zeros(2, 4, 6, 10)
    a = comfy_host.sample(model, pos, neg, latent, seed=3, steps=2, cfg=2.0)
    b = comfy_host.sample(model, pos, neg, latent, seed=3, steps=2, cfg=2.0)
    c = comfy_host.sample(model, neg, pos, latent, seed=3, steps=2, cfg=2.0)
    assert a.shape == (2, 4, 6, 10) and torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3, "the conditioning must reach the output"


def test_prompt_runs_through_executor(comfy_host):
    out = comfy_host.run_prompt(_tiny_prompt(width=64, height=48, batch=2))
    samples = out["6"][0]["samples"]
    assert samples.shape == (2, 4, 6, 8)
    assert torch.isfinite(samples).all() and samples.abs().max() > 0
    assert torch.equal(out["5"][0]["samples"], samples)
    assert out.ui["6"]["latent_shape"] == [[2, 4, 6, 8]]
    model = out["1"][0]
    assert model.model.diffusion_model.model_channels == 32


def test_prompt_matches_direct_sampling(comfy_host):
    prompt = _tiny_prompt(width=64, height=64, batch=1)
    via_executor = comfy_host.run_prompt(prompt)["6"][0]["samples"]
    model = comfy_host.tiny_sd15_model(context_dim=CONTEXT_DIM, seed=1)
    pos = comfy_host.random_conditioning(context_dim=CONTEXT_DIM, seed=2)
    neg = comfy_host.random_conditioning(context_dim=CONTEXT_DIM, seed=3)
    direct = comfy_host.sample(model, pos, neg, torch.zeros(1, 4, 8, 8), seed=7, steps=2, cfg=2.0)
    torch.testing.assert_close(via_executor, direct, rtol=0, atol=1e-5)


def test_malformed_prompt_is_reported_not_raised(comfy_host):
    prompt = _tiny_prompt()
    del prompt["5"]["inputs"]["model"]
    ok, errors = comfy_host.validate(prompt)
    assert not ok
    assert any("model" in e for e in errors), errors

    prompt = _tiny_prompt()
    prompt["5"]["inputs"]["positive"] = ["4", 0]  # a LATENT into a CONDITIONING input
    ok, errors = comfy_host.validate(prompt)
    assert not ok and errors

    ok, errors = comfy_host.validate({"1": {"class_type": "NoSuchNode", "inputs": {}}})
    assert not ok and "NoSuchNode" in errors[0]
    assert comfy_host.validate(_tiny_prompt()) == (True, [])


def test_run_prompt_raises_comfyui_error_message(comfy_host):
    prompt = _tiny_prompt()
    prompt["2"]["inputs"]["context_dim"] = 48  # text width no longer matches the model
    with pytest.raises(PromptExecutionError) as info:
        comfy_host.run_prompt(prompt)
    assert info.value.node_id == "5" and info.value.node_type == "KSampler"
    assert info.value.exception_message
    assert "KSampler" in str(info.value)


def test_the_pack_leaves_the_process_environment_alone(comfy_host):
    """Loading the pack, and listing every node's inputs (as the UI does), changes no environment
    variable of ComfyUI's process (the trainer's modules once set HF_HUB_OFFLINE on import).
    Running the demo nodes is checked in test_demo_bundled.py."""
    import os

    node_modules = {f"{comfy_host.pack.__name__}.nodes.{name}" for name in comfy_host.pack._NODE_MODULES}
    registered = {cls.__module__ for cls in comfy_host.pack.NODE_CLASS_MAPPINGS.values()}
    assert registered == node_modules, "the comparison below must cover the import of every node module"
    assert comfy_host.environ_after_pack == comfy_host.environ_before_pack
    before = dict(os.environ)
    for cls in comfy_host.pack.NODE_CLASS_MAPPINGS.values():
        cls.INPUT_TYPES()
    changed = {k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k)}
    assert not changed, f"listing the nodes' inputs changed {sorted(changed)}"


def test_every_node_has_a_description_and_every_widget_a_tooltip(comfy_host):
    missing = []
    for name, cls in comfy_host.pack.NODE_CLASS_MAPPINGS.items():
        if not getattr(cls, "DESCRIPTION", "").strip():
            missing.append(f"{name}: DESCRIPTION")
        for group in ("required", "optional"):
            for widget, spec in cls.INPUT_TYPES().get(group, {}).items():
                is_widget = isinstance(spec[0], list) or spec[0] in ("INT", "FLOAT", "STRING", "BOOLEAN")
                if is_widget and not (spec[1] if len(spec) > 1 else {}).get("tooltip"):
                    missing.append(f"{name}.{widget}: tooltip")
    assert not missing, missing
