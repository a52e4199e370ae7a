"""Evaluation: identity metrics, face encoders, benchmark folders and reports (no ComfyUI imports).

- ``metrics``: SingleSim, MultiSim (paper eq. 10, 11) and its N-identity form, Hungarian matching.
- ``positions``: position-aware scores: is the right person in the right place (slot accuracy, swaps).
- ``field_metrics``: what other papers report: MultiID-Bench, MultiHuman-Testbench, UMO.
- ``encoders``: dlib / FaceNet / the pack's insightface analyzer behind one interface; CLIP TextSim.
- ``fastcomposer``: FastComposer-layout folders (manifest, references, generated images).
- ``bench_data``: MultiID-Bench-style folders; ``benchmark``: the command that generates through
  ComfyUI (``graph``: the pack's generation graph; ``comfy_client``: its HTTP API) and scores.
- ``report``: the Identity Report node's text, verdict drawing and confusion matrix.
- ``heatmap``: the confusion-matrix image.
"""
