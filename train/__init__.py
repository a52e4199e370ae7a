"""The bundled InstantFamily trainer (standalone: never imports ComfyUI).

    python -m train.prepare   images/shards -> WebDataset shards with faces, pose, captions, latents
    python -m train.train     ControlNet + projector (+ UNet attn2 K/V) under `accelerate launch`
    python -m train.export    training checkpoint -> models/instantfamily/<name>.safetensors

Everything runs offline: base weights come from a local SD1.5 folder or single file, configs from
train/configs/, and every Hugging Face load passes ``local_files_only=True``. Importing ``train``
changes no environment variable (the demo nodes import the toy world inside ComfyUI's process).
"""
