"""The toy world: InstantFamily trained and measured end to end on a CPU, and the built-in demo model.

    python -m toyworld.build --out output/toyworld [--size smoke|default|full] [--demo]
    python benchmarks/toy_world.py [--smoke]

identities.py / sprites.py / world.py   procedural identities, portraits and 1-6 person scenes
crops.py, encoder.py                     the toy ArcFace (metric learning -> ONNX, 512 + 512x7x7)
judge.py                                 an independent judge for evaluation
base_model.py, pretrain.py               the toy "SD1.5": tiny UNet, caption table, scene-as-latent
data.py                                  scene bank -> the trainer's shards (features via the pack)
toy_training.py                          the REAL trainer (train.train) on the toy base
evaluation.py                            generation + judge scores (benchmarks/toy_world.py)
"""
