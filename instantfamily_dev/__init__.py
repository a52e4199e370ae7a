"""The development harness: what the tests, the benchmarks and the demo share, importable by name.

    comfy_host      a real ComfyUI (one of the two vendored hosts, or COMFYUI_PATH) started in this
                    process with the pack and the fixture nodes loaded through ComfyUI's own loader
    comfy_server    the same ComfyUI as a real HTTP server in a subprocess (the UI's path)
    workflow_api    the frontend's UI-workflow -> API-prompt conversion, for the example workflows
    fixture_nodes   a tiny node pack the tests load beside ours (tiny models, probes)
    face_fixtures   tiny insightface-shaped ONNX face models built at run time, disc images, real photos

Not part of the node pack: ComfyUI never imports it, and the pack never imports it either.
"""
