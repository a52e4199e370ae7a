"""ComfyUI ``POSE_KEYPOINT`` values: people as 18 COCO body keypoints plus a face box each.

The socket value (written by comfyui_controlnet_aux's OpenPose / DWPose nodes and the pose editors)
is a list of frames::

    [{"people": [{"pose_keypoints_2d": [x, y, c] * 18, "face_keypoints_2d": [x, y, c] * 68 or None, ...}],
      "canvas_width": W, "canvas_height": H}]

Coordinates are normalised to [0, 1] by the preprocessors but in pixels in some editors: a frame
whose keypoints reach beyond 1.5 is read as pixels. A missing point is ``[0, 0, 0]`` (also: zero or
negative confidence, or a negative coordinate, which OpenPose's face detector writes for misses).

Face box of a person, in pixels (so that distances are isotropic):
- from the 68 face landmarks when at least ``MIN_FACE_LANDMARKS`` are present: their bounding box;
- else from the head points (nose, eyes, ears) with the size rule of :func:`face_box_from_head_points`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

# OpenPose COCO-18 order.
BODY_POINT_NAMES = (
    "nose", "neck",
    "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle",
    "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
NOSE, NECK, R_SHOULDER, L_SHOULDER = 0, 1, 2, 5
R_EYE, L_EYE, R_EAR, L_EAR = 14, 15, 16, 17
HEAD_POINTS = (NOSE, R_EYE, L_EYE, R_EAR, L_EAR)

MIN_FACE_LANDMARKS = 5
PIXEL_THRESHOLD = 1.5  # a keypoint coordinate above this means the frame is in pixels

# Head-point size rule: the face width is the largest of these estimates that can be computed.
EAR_DISTANCE_FACTOR = 1.0  # ear to ear
EYE_DISTANCE_FACTOR = 2.2  # eye to eye (a face is about 2.2 inter-ocular distances wide)
NOSE_EAR_FACTOR = 1.6  # nose to the farther visible ear (profiles)
NOSE_NECK_FACTOR = 0.9  # nose to neck (the neck point sits between the shoulders)
SHOULDER_FACTOR = 0.4  # shoulder to shoulder, only when no head distance is available
FACE_ASPECT = 1.25  # face box height / width


@dataclass
class PosePerson:
    """One person of a pose frame.

    body:     (18, 3) float32 COCO-18 keypoints: normalised x, y and confidence; missing rows are 0.
    face_box: (4,) float32 normalised x1, y1, x2, y2, or None when no head point is visible.
    face_source: "face_keypoints", "head_points" or "" (no face box).
    face: (K, 3) float32 face landmarks (normalised x, y, confidence; missing rows 0), K = 0 when none.
    """

    body: np.ndarray
    face_box: np.ndarray | None = None
    face_source: str = ""
    face: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))

    @property
    def visible(self) -> np.ndarray:
        """(18,) bool: which body keypoints are present."""
        return self.body[:, 2] > 0

    @property
    def face_centre(self) -> np.ndarray | None:
        """(2,) normalised x, y of the face box centre."""
        if self.face_box is None:
            return None
        return (self.face_box[:2] + self.face_box[2:]) / 2


@dataclass
class PoseFrame:
    """One frame of a ``POSE_KEYPOINT`` value: all its people and the canvas size in pixels."""

    people: list[PosePerson]
    width: int
    height: int

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.height, self.width

    def bodies(self) -> list[np.ndarray]:
        """Every person's (18, 3) body keypoints, for drawing skeletons."""
        return [person.body for person in self.people]


def _points(values, what: str, expected: int | None = None) -> np.ndarray:
    """A flat [x, y, c, ...] list as (K, 3) float64; an empty or None list gives (0, 3)."""
    if values is None or len(values) == 0:
        return np.zeros((0, 3), np.float64)
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    if flat.size % 3 != 0:
        raise ValueError(f"POSE_KEYPOINT: {what} has {flat.size} numbers; expected x, y, confidence triples")
    array = flat.reshape(-1, 3)  # (K, 3)
    if expected is not None and array.shape[0] != expected:
        raise ValueError(
            f"POSE_KEYPOINT: {what} has {array.shape[0]} points; expected the {expected} COCO-18 body points "
            "of OpenPose/DWPose (other layouts such as BODY_25 are not supported)"
        )
    return array


def _present(points: np.ndarray) -> np.ndarray:
    """(K,) bool: confidence > 0, coordinates not negative and not exactly (0, 0)."""
    x, y, c = points[:, 0], points[:, 1], points[:, 2]
    return (c > 0) & (x >= 0) & (y >= 0) & ~((x == 0) & (y == 0))


def face_box_from_landmarks(points_px: np.ndarray) -> np.ndarray | None:
    """Bounding box (x1, y1, x2, y2) in pixels of the present face landmarks, or None if too few.

    points_px: (K, 3) x, y in pixels and confidence (rows already filtered or with 0 confidence).
    """
    present = points_px[_present(points_px)]
    if present.shape[0] < MIN_FACE_LANDMARKS:
        return None
    x1, y1 = present[:, 0].min(), present[:, 1].min()
    x2, y2 = present[:, 0].max(), present[:, 1].max()
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return np.array([x1, y1, x2, y2], np.float64)


def face_box_from_head_points(body_px: np.ndarray) -> np.ndarray | None:
    """Face box (x1, y1, x2, y2) in pixels estimated from nose, eyes, ears (and neck/shoulders).

    Centre: the mean of the present head points. Width: the largest present estimate among
    1.0 x ear-to-ear, 2.2 x eye-to-eye, 1.6 x nose-to-farther-ear, 0.9 x nose-to-neck distance;
    if none of those exists, 0.4 x shoulder-to-shoulder. Height: 1.25 x width. None when no head
    point is present or no size can be estimated.
    body_px: (18, 3) x, y in pixels and confidence.
    """
    present = _present(body_px)
    head = [i for i in HEAD_POINTS if present[i]]
    if not head:
        return None
    xy = body_px[:, :2]

    def dist(a: int, b: int) -> float | None:
        return float(np.linalg.norm(xy[a] - xy[b])) if present[a] and present[b] else None

    estimates = []
    for a, b, factor in (
        (R_EAR, L_EAR, EAR_DISTANCE_FACTOR),
        (R_EYE, L_EYE, EYE_DISTANCE_FACTOR),
        (NOSE, R_EAR, NOSE_EAR_FACTOR),
        (NOSE, L_EAR, NOSE_EAR_FACTOR),
        (NOSE, NECK, NOSE_NECK_FACTOR),
    ):
        d = dist(a, b)
        if d is not None and d > 0:
            estimates.append(factor * d)
    if not estimates:
        d = dist(R_SHOULDER, L_SHOULDER)
        if d is None or d <= 0:
            return None
        estimates.append(SHOULDER_FACTOR * d)
    width = max(estimates)
    height = FACE_ASPECT * width
    cx, cy = xy[head].mean(axis=0)
    return np.array([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], np.float64)


def _frame_dict(data, frame: int) -> dict:
    if isinstance(data, (str, bytes)):
        data = json.loads(data)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, (list, tuple)) or not data:
        raise ValueError(
            "POSE_KEYPOINT is empty or not a list of frames; connect the POSE_KEYPOINT output of an "
            "OpenPose/DWPose preprocessor node"
        )
    if not 0 <= frame < len(data):
        raise ValueError(f"POSE_KEYPOINT has {len(data)} frame(s); frame {frame} does not exist")
    item = data[frame]
    if not isinstance(item, dict) or "people" not in item:
        raise ValueError("POSE_KEYPOINT frame has no 'people' list; is this an OpenPose JSON value?")
    return item


def parse_pose_keypoint(data, frame: int = 0) -> PoseFrame:
    """Parse one frame of a ComfyUI ``POSE_KEYPOINT`` value (list of frames, one frame dict, or JSON text).

    Returns people with normalised body keypoints (missing = 0 rows) and normalised face boxes.
    """
    item = _frame_dict(data, frame)
    width, height = item.get("canvas_width"), item.get("canvas_height")
    if not width or not height or int(width) <= 0 or int(height) <= 0:
        raise ValueError("POSE_KEYPOINT frame has no positive canvas_width / canvas_height")
    width, height = int(width), int(height)

    raw = []
    for index, person in enumerate(item["people"] or []):
        values = person.get("pose_keypoints_2d")
        if values is None or len(values) == 0:
            body = np.zeros((18, 3), np.float64)
        else:
            body = _points(values, f"person {index} pose_keypoints_2d", expected=18)
        face = _points(person.get("face_keypoints_2d"), f"person {index} face_keypoints_2d")
        raw.append((body, face))

    present = [pts[_present(pts), :2] for pair in raw for pts in pair]
    coords = np.concatenate(present) if present else np.zeros((0, 2))
    in_pixels = coords.size > 0 and float(coords.max()) > PIXEL_THRESHOLD
    to_px = np.array([1.0, 1.0]) if in_pixels else np.array([width, height], np.float64)

    people = []
    for body, face in raw:
        body_present, face_present = _present(body), _present(face)
        body_px = body.copy()
        body_px[:, :2] *= to_px
        body_px[~body_present] = 0
        face_px = face.copy()
        face_px[:, :2] *= to_px
        face_px[~face_present] = 0
        box, source = face_box_from_landmarks(face_px), "face_keypoints"
        if box is None:
            box, source = face_box_from_head_points(body_px), "head_points"
        if box is None:
            source = ""
        to_unit = np.array([width, height, 1.0])
        face_box = None
        if box is not None:
            face_box = (box / np.array([width, height, width, height])).astype(np.float32)
        people.append(
            PosePerson(
                body=(body_px / to_unit).astype(np.float32),
                face_box=face_box,
                face_source=source,
                face=(face_px / to_unit).astype(np.float32),
            )
        )
    return PoseFrame(people=people, width=width, height=height)


def encode_pose_keypoint(bodies, width: int, height: int, faces=None) -> list[dict]:
    """One-frame ``POSE_KEYPOINT`` value (normalised coordinates) from (18, 3) bodies.

    bodies: per person (18, 3) normalised x, y, confidence (confidence <= 0: missing, written as 0, 0, 0).
    faces: optional per person (68, 3) face landmarks in the same form, or None entries.
    """

    def flat(points) -> list[float] | None:
        if points is None:
            return None
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        out = points.copy()
        out[~_present(points)] = 0
        return [float(v) for v in out.reshape(-1)]

    faces = list(faces) if faces is not None else [None] * len(bodies)
    if len(faces) != len(bodies):
        raise ValueError(f"{len(bodies)} bodies but {len(faces)} face landmark sets")
    people = [
        {"pose_keypoints_2d": flat(body), "face_keypoints_2d": flat(face),
         "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}
        for body, face in zip(bodies, faces)
    ]  # fmt: skip
    return [{"people": people, "canvas_width": int(width), "canvas_height": int(height)}]


def crop_pose(frame: PoseFrame, window, size: tuple[int, int]) -> list[dict]:
    """The ``POSE_KEYPOINT`` value of a crop of ``frame``: what a pose detector run on the cropped image gives.

    window: (x1, y1, x2, y2) of the crop, normalised to the frame. size: (height, width) of the crop's canvas.
    Body and face points outside the window become missing (0, 0, 0).
    """
    x1, y1, x2, y2 = (float(v) for v in window)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"crop window {window} is empty")

    def moved(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, np.float64).copy()  # (K, 3)
        x = (points[:, 0] - x1) / (x2 - x1)
        y = (points[:, 1] - y1) / (y2 - y1)
        inside = _present(points) & (x >= 0) & (x < 1) & (y >= 0) & (y < 1)
        points[:, 0], points[:, 1], points[:, 2] = x, y, np.where(inside, points[:, 2], 0)
        points[~inside] = 0
        return points

    bodies = [moved(person.body) for person in frame.people]
    faces = [moved(person.face) if len(person.face) else None for person in frame.people]
    return encode_pose_keypoint(bodies, size[1], size[0], faces)
