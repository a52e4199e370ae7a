"""Report, and with --repair fix, which ONNX Runtime build owns the shared `onnxruntime` folder.

insightface depends on plain `onnxruntime`, so installing the requirements leaves both
`onnxruntime` and `onnxruntime-gpu` installed; whichever pip wrote last wins. Wanted: the GPU
build when torch sees CUDA, else the CPU build (the GPU build on a CPU machine logs CUDA errors
on every session). --repair reinstalls the wanted build's files over the other (--no-deps).
"""

import argparse
import subprocess
import sys
from importlib import metadata


def installed(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def active_build():
    """'gpu' or 'cpu': the build whose files are in effect, judged in a fresh interpreter."""
    code = "import onnxruntime as o; print('CUDAExecutionProvider' in o.get_available_providers())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return "gpu" if out.stdout.strip().endswith("True") else "cpu"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repair", action="store_true", help="reinstall the wanted build")
    args = parser.parse_args()

    import torch

    cpu_version, gpu_version = installed("onnxruntime"), installed("onnxruntime-gpu")
    want = "gpu" if torch.cuda.is_available() and gpu_version else "cpu"
    have = active_build()
    print(
        f"[onnxruntime] installed: onnxruntime={cpu_version} onnxruntime-gpu={gpu_version}; "
        f"active build: {have}; wanted: {want}"
    )
    if have == want or not args.repair:
        return 0 if have == want else 1
    dist = f"onnxruntime-gpu=={gpu_version}" if want == "gpu" else f"onnxruntime=={cpu_version}"
    if want == "cpu" and cpu_version is None:
        dist = f"onnxruntime=={gpu_version}"
    print(f"[onnxruntime] reinstalling {dist} so the {want.upper()} build is the one imported")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--force-reinstall", "--no-deps", dist], check=True
    )
    have = active_build()
    print(f"[onnxruntime] active build now: {have}")
    return 0 if have == want else 1


if __name__ == "__main__":
    sys.exit(main())
