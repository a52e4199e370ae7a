"""The InstantFamily engine: pure torch/numpy, no ComfyUI imports at module level."""
