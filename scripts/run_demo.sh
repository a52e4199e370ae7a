#!/usr/bin/env bash
# The README's main command: set up the environment (venv + ComfyUI test hosts), then run the
# built-in demo -- the pack's real nodes in a real headless ComfyUI prompt, on the bundled toy
# model (toyworld/assets). Arguments go to scripts/run_demo.py (--identities, --caption,
# --seed, --steps, --out). Outputs: output/demo/{control_image,mask_preview,references_*,generated}.png
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INSTANTFAMILY_VENV:-$REPO/.venv}"

bash "$REPO/scripts/setup_env.sh"
if [[ ! -f "$REPO/toyworld/assets/toy_base.safetensors" ]]; then
  echo "[run_demo] the bundled toy model is missing: building it (trains the toy world on this CPU; slow)"
  (cd "$REPO" && "$VENV/bin/python" -m toyworld.build --out "$REPO/output/toyworld" --demo)
fi
# One intra-op thread: tiny models on a few shared cores run far faster without thread contention.
cd "$REPO" && OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" exec "$VENV/bin/python" scripts/run_demo.py "$@"
