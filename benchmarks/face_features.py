"""Per-face time of the pack's face analysis (detection + ONE recognizer pass giving global AND local
features) against insightface's ``FaceAnalysis.get`` (detection + global embedding only), same photos,
same process, interleaved rounds. Target: ratio <= 1.05.

    python benchmarks/face_features.py                      # tiny exported models (built in a temp dir)
    python benchmarks/face_features.py --root ~/ComfyUI/models/insightface --pack antelopev2

With a real pack the photos are insightface's t1.jpg, skimage's astronaut and matplotlib's Grace
Hopper; with the tiny models (whose toy detector only sees bright discs) synthetic disc scenes.
Also times recognition alone (aligned crop + network) both ways on the same detected faces, and
the network alone (the one-pass session with its extra output vs insightface's single-output one).
On a loaded 2-core machine single runs vary by +-15 %: compare the medians of many rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _face_fixtures():
    from instantfamily_dev import face_fixtures  # the development harness's tiny face models

    return face_fixtures


def photos(real: bool, fixtures) -> list[np.ndarray]:
    if real:
        return [fixtures.group_photo(), fixtures.astronaut(), fixtures.grace_hopper()]
    return [
        fixtures.disc_image(centres=((96, 320), (320, 320), (544, 320))),
        fixtures.disc_image(centres=((160, 160), (480, 480))),
        fixtures.disc_image(size=(480, 640), centres=((320, 224),)),
    ]


def insightface_app(pack_dir: str, root: str, det_size: int):
    import onnxruntime
    from insightface.app import FaceAnalysis

    from instantfamily_core.faces.providers import session_options, spinning_disabled

    app = FaceAnalysis(
        name=pack_dir,
        root=root,
        allowed_modules=["detection", "recognition"],
        providers=["CPUExecutionProvider"],
        sess_options=session_options(),
    )
    for model in app.models.values():  # insightface 0.7.x ignores sess_options: same settings as ours
        if not spinning_disabled(model.session):
            model.session = onnxruntime.InferenceSession(
                model.model_file, sess_options=session_options(), providers=["CPUExecutionProvider"]
            )
    app.prepare(ctx_id=0, det_thresh=0.5, det_size=(det_size, det_size))
    return app


def timed(fn, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", help="an insightface root holding models/<pack>/ (default: tiny models)")
    parser.add_argument("--pack", default="antelopev2")
    parser.add_argument("--det-size", type=int, default=640)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    # insightface 2.1's norm_crop emits a scikit-image deprecation notice per call: keep it out of the timings
    warnings.simplefilter("ignore", FutureWarning)

    from instantfamily_core.faces import align_crop, load_face_analyzer
    from instantfamily_core.faces.model_pack import find_model_pack

    fixtures = _face_fixtures()
    temp = None
    if args.root:
        root, pack = os.path.expanduser(args.root), args.pack
    else:
        temp = tempfile.TemporaryDirectory()
        root, pack = temp.name, "tinypack"
        fixtures.build_tiny_pack(root, pack)
    pack_dir = find_model_pack(root, pack).directory
    ours = load_face_analyzer(root, pack, provider="CPU", det_size=args.det_size)
    theirs = insightface_app(pack_dir, root, args.det_size)
    images = photos(bool(args.root), fixtures)
    bgr = [np.ascontiguousarray(img[:, :, ::-1]) for img in images]
    n_ours = sum(len(ours.analyze(img)) for img in images)  # also warms up every session size
    n_theirs = sum(len(theirs.get(img)) for img in bgr)
    if n_ours != n_theirs or n_ours == 0:
        raise SystemExit(f"face counts differ (ours {n_ours}, insightface {n_theirs}): not comparable")

    # recognition alone, on the same detected faces
    detected = [(img, im_bgr, theirs.get(im_bgr)) for img, im_bgr in zip(images, bgr)]
    recognizer = theirs.models["recognition"]

    def ours_recognition():
        for img, _, faces in detected:
            ours.recognizer.features(np.stack([align_crop(img, f.kps) for f in faces]))

    def theirs_recognition():
        for _, im_bgr, faces in detected:
            for f in faces:
                recognizer.get(im_bgr, f)

    def ours_recognition_single():  # one crop per run, like insightface: isolates the extra output's cost
        for img, _, faces in detected:
            for f in faces:
                ours.recognizer.features(align_crop(img, f.kps)[None])

    blob = ours.recognizer.blob(np.stack([align_crop(img, f.kps) for img, _, faces in detected for f in faces])[:1])

    def ours_network():  # the network alone, one crop, both outputs
        ours.recognizer.session.run(
            [ours.recognizer.global_name, ours.recognizer.map_name], {ours.recognizer.input_name: blob}
        )

    def theirs_network():  # the network alone, one crop, insightface's single-output session
        recognizer.session.run(recognizer.output_names, {recognizer.input_name: blob})

    def ours_full():
        for img in images:
            ours.analyze(img)

    def theirs_full():
        for im_bgr in bgr:
            theirs.get(im_bgr)

    results = {
        name: []
        for name in ("ours_full", "theirs_full", "ours_rec", "theirs_rec", "ours_rec1", "ours_net", "theirs_net")
    }
    for _ in range(args.rounds):  # interleaved so drift hits both sides alike
        results["ours_full"] += timed(ours_full, 1)
        results["theirs_full"] += timed(theirs_full, 1)
        results["ours_rec"] += timed(ours_recognition, 1)
        results["theirs_rec"] += timed(theirs_recognition, 1)
        results["ours_rec1"] += timed(ours_recognition_single, 1)
        for _ in range(n_ours):  # finely interleaved: the two sessions differ by one extra output only
            results["ours_net"] += [t * n_ours for t in timed(ours_network, 1)]
            results["theirs_net"] += [t * n_ours for t in timed(theirs_network, 1)]
    per_face = {k: statistics.median(v) / n_ours * 1000 for k, v in results.items()}

    print(
        f"pack: {pack} ({'real' if args.root else 'tiny exported models'}), recognizer {ours.info.file_name}, "
        f"{len(images)} photos, {n_ours} faces, det_size {args.det_size}, {args.rounds} rounds, CPU provider"
    )
    print(f"  insightface FaceAnalysis.get (global only)    : {per_face['theirs_full']:8.2f} ms/face")
    print(f"  InstantFamily analyze (global + local, 1 pass): {per_face['ours_full']:8.2f} ms/face")
    print(f"  ratio full pipeline                           : {per_face['ours_full'] / per_face['theirs_full']:8.3f}x")
    print(f"  recognition only, insightface ArcFaceONNX.get  : {per_face['theirs_rec']:8.2f} ms/face")
    print(f"  recognition only, one-pass global + local      : {per_face['ours_rec']:8.2f} ms/face")
    print(f"  ratio recognition only                        : {per_face['ours_rec'] / per_face['theirs_rec']:8.3f}x")
    print(f"  recognition only, one-pass, one face per run   : {per_face['ours_rec1']:8.2f} ms/face")
    print(f"  ratio recognition only, one face per run      : {per_face['ours_rec1'] / per_face['theirs_rec']:8.3f}x")
    print(f"  network only, insightface session (1 output)   : {per_face['theirs_net']:8.2f} ms/face")
    print(f"  network only, one-pass session (2 outputs)     : {per_face['ours_net']:8.2f} ms/face")
    print(f"  ratio network only                            : {per_face['ours_net'] / per_face['theirs_net']:8.3f}x")
    if temp is not None:
        temp.cleanup()


if __name__ == "__main__":
    main()
