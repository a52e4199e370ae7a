"""Build a FaceAnalyzer from an insightface model pack folder, with insightface's own routing."""

from __future__ import annotations

import logging
import os

from .analyzer import FaceAnalyzer
from .model_pack import expected_layout, find_model_pack
from .providers import choose_providers, session_options, spinning_disabled
from .recognizer import OnePassRecognizer

logger = logging.getLogger(__name__)


def _insightface_models(pack_dir: str, root: str, providers: list[str], options):
    """insightface FaceAnalysis restricted to detection + recognition (routing by ONNX shapes)."""
    try:
        from insightface.app import FaceAnalysis
    except ImportError as error:
        raise RuntimeError(f"the face analyzer needs insightface ({error}); pip install insightface") from error
    try:
        # An absolute folder as the pack name: insightface 2.x opens it directly, 0.7.x joins it
        # onto its root (an absolute path wins) and finds it present, so neither downloads.
        return FaceAnalysis(
            name=pack_dir,
            root=root,
            allowed_modules=["detection", "recognition"],
            providers=providers,
            sess_options=options,
        )
    except AssertionError as error:
        raise ValueError(
            f"insightface found no face detector among the .onnx files of {pack_dir} ({error}): it needs an "
            f"SCRFD detector (an ONNX with 6, 9, 10 or 15 outputs).\n{expected_layout(root, os.path.basename(pack_dir))}"
        ) from error
    except Exception as error:  # onnxruntime's own types: InvalidProtobuf, Fail, NoSuchFile, ...
        raise RuntimeError(
            f"could not open the .onnx files of {pack_dir} ({type(error).__name__}: {error}); a file may be "
            "incomplete or damaged: download that pack again"
        ) from error


def load_face_analyzer(
    roots: list[str] | str,
    pack: str = "antelopev2",
    provider: str = "auto",
    det_size: int = 640,
    det_thresh: float = 0.5,
) -> FaceAnalyzer:
    """Load ``<root>/models/<pack>`` (first root that has it) for detection and one-pass features."""
    if int(det_size) < 64 or int(det_size) % 32:
        raise ValueError(f"detection size must be a multiple of 32 and at least 64, got {det_size}")
    if not 0.0 < float(det_thresh) < 1.0:
        raise ValueError(f"detection threshold must be between 0 and 1, got {det_thresh}")
    found = find_model_pack(roots, pack)
    root = os.path.dirname(os.path.dirname(found.directory))
    if os.path.isfile(os.path.join(found.directory, "manifest.json")):
        raise ValueError(
            f"{found.directory} is an insightface 2.x manifest package, which this node pack does not read yet: "
            "use antelopev2 or buffalo_l"
        )
    providers = choose_providers(provider)
    options = session_options()
    analysis = _insightface_models(found.directory, root, providers, options)
    recognizer_model = analysis.models.pop("recognition", None)
    if recognizer_model is None:
        raise ValueError(
            f"no face recognizer among the .onnx files of {found.directory}: it needs an ArcFace-style "
            f"recognizer (one square input of at least 112 px, one output).\n{expected_layout(root, pack)}"
        )
    recognizer_file = recognizer_model.model_file
    del recognizer_model  # its single-output session is replaced by the one-pass session below
    detector = analysis.models["detection"]
    if "CPUExecutionProvider" in providers and not spinning_disabled(detector.session):
        # insightface 0.7.x ignores sess_options: rebuild the detector's session with ours.
        import onnxruntime

        detector.session = onnxruntime.InferenceSession(detector.model_file, sess_options=options, providers=providers)
    analysis.prepare(ctx_id=0, det_thresh=float(det_thresh), det_size=(int(det_size), int(det_size)))
    recognizer = OnePassRecognizer(recognizer_file, providers=providers, sess_options=options, pack=pack)
    logger.info(
        "InstantFamily face analyzer: pack %s (detector %s, recognizer %s), providers %s",
        pack,
        os.path.basename(detector.model_file),
        recognizer.info.file_name,
        providers,
    )
    return FaceAnalyzer(detector, recognizer, det_size=int(det_size), pack=pack, providers=providers)
