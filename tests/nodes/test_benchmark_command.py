"""The benchmark command end to end at tiny size: a MultiID-Bench-style folder drawn by the test,
generation through the pack's real graph on the built-in toy model (nodes@2025: a real ComfyUI
server over HTTP, the command's own ``main``; nodes@2024: the same run through the in-process
executor), scoring with the pack's analyzer, the outputs, and a resumed second run."""

import json
import os
import shutil
import uuid

import numpy as np
import pytest
from PIL import Image

from instantfamily_dev.comfy_host import PACK_DIR_NAME, REPO_ROOT

PACK = "tinybench"
TOY_ASSETS = REPO_ROOT / "toyworld" / "assets"
ANCHORS = ((160, 320), (480, 320))  # on the toy detector's stride-32 anchors at 640 px


def discs(centres, patterns, size=640):
    """Bright textured discs, the toy detector's "faces"."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    image = np.zeros((size, size), np.float32)
    for (cx, cy), k in zip(centres, patterns):
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= 20.0**2
        image[inside] = 200 + 40 * np.sin((0.35 + 0.45 * k) * (xx[inside] - cx) + (0.1 + 0.3 * k) * (yy[inside] - cy))
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def write_bench(root):
    """Two samples: one person, and two people (references listed right person first)."""
    samples = {
        "one": ([0], [ANCHORS[0]], [0], "one person on a teal gradient background"),
        "two": ([1, 0], list(ANCHORS), [0, 1], "two people on a teal gradient background"),
    }
    for key, (refs, centres, patterns, prompt) in samples.items():
        folder = root / key
        folder.mkdir(parents=True)
        for k, pattern in enumerate(refs):
            Image.fromarray(discs([(320, 320)], [pattern])).save(folder / f"ref_{k + 1}.png")
        Image.fromarray(discs(centres, patterns)).save(folder / "ori.jpg", quality=98)
        (folder / "meta.json").write_text(json.dumps({"prompt": prompt}))


def build_pack(models_dir):
    """The toy detector beside the toy model's own recognizer (so the toy checkpoint accepts the faces)."""
    from instantfamily_dev import face_fixtures as fixtures

    folder = models_dir / "insightface" / "models" / PACK
    folder.mkdir(parents=True, exist_ok=True)
    fixtures.export_toy_detector(str(folder / "det_toy.onnx"))
    shutil.copyfile(
        TOY_ASSETS / "insightface" / "models" / "toyface" / "toyface_recognizer.onnx",
        folder / "toyface_recognizer.onnx",
    )


class InProcessClient:
    """``ComfyClient``'s three calls on the test host's in-process executor; counts the prompts."""

    def __init__(self, host):
        self.host, self.prompts, self._outputs = host, 0, {}

    def upload(self, name, data):
        import folder_paths

        folder = os.path.join(folder_paths.get_input_directory(), "instantfamily_eval")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        return f"instantfamily_eval/{name}"

    def queue(self, prompt):
        self.prompts += 1
        prompt_id = str(uuid.uuid4())
        self._outputs[prompt_id] = self.host.run_prompt(prompt)
        return prompt_id

    def wait_for_images(self, prompt_id, node_id):
        import folder_paths

        refs = self._outputs.pop(prompt_id).ui[node_id]["images"]
        paths = [os.path.join(folder_paths.get_output_directory(), r["subfolder"], r["filename"]) for r in refs]
        return [open(p, "rb").read() for p in paths]


def check_outputs(result, out):
    assert result["settings"]["encoder"] == "insightface" and result["settings"]["samples"] == 2
    assert sorted(result["summary"]) == ["1", "2", "all"]
    for record in result["samples"]:
        image = np.asarray(Image.open(out / "samples" / record["sample"] / "out.png"))
        assert image.shape == (256, 256, 3) and image.std() > 0  # the toy model's own picture
        assert len(record["verdicts"]) == record["n"] == len(record["own"])
        # the toy scenes hold no disc "faces": every person is missing, and each way of counting says so
        assert (
            record["missing"]
            + record["verdicts"].count("ok")
            + record["verdicts"].count("swapped")
            + record["verdicts"].count("duplicate")
            + record["verdicts"].count("wrong")
            == record["n"]
        )
        if record["faces"] == 0:
            assert record["sim_ref"] is None and record["sim_ref_all"] == 0.0 and not record["count_ok"]
    md = (out / "benchmark.md").read_text()
    assert "face encoder **insightface**" in md and "| 2 | 1 |" in md
    assert Image.open(out / "grid.png").size[1] > 256


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiid")
    write_bench(root)
    return root


def test_benchmark_command_end_to_end(comfy_host, bench, tmp_path):
    benchmark = comfy_host.pack_import("instantfamily_core.evaluation.benchmark")
    out = tmp_path / "run"
    settings = dict(steps=2, cfg=2.0, sampler="euler", scheduler="normal", width=256, height=256)
    if comfy_host.version == "2024":  # in-process
        build_pack(comfy_host.models_dir)
        bench_set = comfy_host.pack_import("instantfamily_core.evaluation.bench_data").read_multiid(str(bench))
        args = benchmark.parse_args(
            [
                "--out",
                str(out),
                "--encoder",
                "insightface",
                "--insightface-pack",
                PACK,
                "--insightface-root",
                str(comfy_host.models_dir / "insightface"),
            ]
        )
        generation = benchmark.GenerationSettings(
            "toy_instantfamily_demo.safetensors", toy_base="toy_base.safetensors", insightface_pack=PACK, **settings
        )
        client = InProcessClient(comfy_host)
        result = benchmark.run(bench_set, benchmark.build_encoder(args), str(out), client, generation, progress=False)
        assert client.prompts == 2
        check_outputs(result, out)
        again = benchmark.run(bench_set, benchmark.build_encoder(args), str(out), client, generation, progress=False)
        assert client.prompts == 2  # resumed: nothing generated twice
        assert again["summary"] == result["summary"]
        return
    from instantfamily_dev.comfy_server import ComfyServer

    base = tmp_path / "server"
    for sub in ("custom_nodes", "input", "output", "user", "models/instantfamily", "models/insightface/models"):
        (base / sub).mkdir(parents=True)
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO_ROOT, target_is_directory=True)
    build_pack(base / "models")
    server = ComfyServer(comfy_host.root, base)
    server.start()
    try:
        argv = [
            "--data",
            str(bench),
            "--out",
            str(out),
            "--server",
            server.url,
            "--toy-base",
            "toy_base.safetensors",
            "--instantfamily",
            "toy_instantfamily_demo.safetensors",
            "--insightface-pack",
            PACK,
            "--encoder",
            "insightface",
            "--insightface-root",
            str(base / "models" / "insightface"),
            "--steps",
            "2",
            "--cfg",
            "2",
            "--sampler",
            "euler",
            "--scheduler",
            "normal",
            "--width",
            "256",
            "--height",
            "256",
            "--no-progress",
            "--timeout",
            "120",
        ]
        assert benchmark.main(argv) == 0
        result = json.loads((out / "benchmark.json").read_text())
        check_outputs(result, out)
        first = {p: p.stat().st_mtime_ns for p in out.glob("samples/*/out.png")}
        assert benchmark.main(argv) == 0  # resumed
        assert {p: p.stat().st_mtime_ns for p in out.glob("samples/*/out.png")} == first
    finally:
        server.stop()
