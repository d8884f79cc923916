"""FACS-driven synthetic faces: a 2-D vector face whose geometry follows Action Unit intensities.

The built-in data set (the demo configs and the tests run on it) needs images whose pixels carry
the AU and emotion labels, without downloading a face data set. `render` draws a stylised frontal
face with PIL polygons and curves; every rendered AU moves or marks its own facial region the way
the FACS manual describes (Ekman, Friesen & Hager, FACS 2002; the built-in data is described in
docs/METHOD.md 2.5):

    AU1  inner brow ends rise, short forehead wrinkles in the centre
    AU2  outer brow ends rise, the brow arches
    AU4  brows lower and draw together, vertical furrows between them
    AU5  upper lids rise, white shows above the iris
    AU6  cheeks lift (the cheek patch and the furrow under the eye move up), lower lids
         rise a little, crow's feet at the outer eye corners
    AU7  lower lids tighten and rise (straighter, darker lower-lid line), aperture narrows
    AU9  wrinkles across the nose bridge, nostrils lift, brows pulled down slightly
    AU10 upper lip rises, upper teeth show under it
    AU11 the nasolabial furrow deepens and lengthens
    AU12 lip corners pulled up and outward (smile)
    AU14 lip corners pulled inward and tightened, dimple beside each corner
    AU15 lip corners pulled down
    AU16 lower lip pulled down, lower teeth show
    AU17 chin boss pushed up (bulge line, dimpled chin skin), lower lip pushed up
    AU20 lips stretched sideways and thinned
    AU22 lips funnel: mouth narrows into a thick rounded opening
    AU23 lips tighten: thinner red with a sharp border
    AU24 lips pressed together: red nearly hidden, skin bulges above and below
    AU25 lips part
    AU26 jaw drops: mouth opens, chin and jaw outline move down
    AU27 mouth stretched wide open: large opening, chin far down, corners drawn in
    AU43 eyes closed

AU keys: "AU12" acts on both sides; "R12" / "L12" act on one side only (FACS convention: the
subject's right / left side, so "R" appears on the image's LEFT half). Sides are accepted for the
AUs of paired features (`LATERAL_AUS`); midline AUs (nose, lips, jaw) reject them. Intensities lie
in [0, 1] (FACS letters A..E correspond roughly to 0.2 .. 1.0).

Identity (`identity_seed`) fixes face shape, skin, hair colour and style, eye spacing and size,
iris colour, brow thickness, lips, glasses and background. Capture (`pose_seed`) fixes a small
roll, scale and shift, the lighting (direction, strength, brightness, colour cast) and the sensor
noise; `pose_seed=None` gives an upright centred face under even light. `noise=False` turns the
sensor noise off (tests compare renders pixel by pixel). Everything is deterministic for a seed.

`au_region_mask` returns the pixels an AU is allowed to change (its facial region, under the same
identity and pose); the tests check that each AU changes pixels inside its region and nowhere else.

Drawing happens at `SUPERSAMPLE` times the output size and is box-filtered down (anti-aliasing);
about 3.2 ms per 112-px image on one core (~310 images per CPU-second, measured in process CPU
time).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

# The AUs the renderer draws, in numeric order.
RENDERED_AUS: tuple[str, ...] = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU11", "AU12", "AU14",
    "AU15", "AU16", "AU17", "AU20", "AU22", "AU23", "AU24", "AU25", "AU26", "AU27", "AU43",
)  # fmt: skip
# AUs of paired features, which can act on one side ("R12" / "L12").
LATERAL_AUS: frozenset[str] = frozenset(
    {"AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU11", "AU12", "AU14", "AU15", "AU20", "AU43"}
)

# Drawing resolution multiplier; the result is box-filtered down to the requested size.
SUPERSAMPLE = 2

# Facial regions (see `_region_boxes`) each AU may change.
AU_REGIONS: dict[str, tuple[str, ...]] = {
    "AU1": ("brows",),
    "AU2": ("brows",),
    "AU4": ("brows",),
    "AU5": ("eyes",),
    "AU6": ("eyes", "cheeks"),
    "AU7": ("eyes",),
    "AU9": ("nose", "brows"),
    "AU10": ("mouth",),
    "AU11": ("nasolabial",),
    "AU12": ("mouth",),
    "AU14": ("mouth",),
    "AU15": ("mouth",),
    "AU16": ("mouth",),
    "AU17": ("mouth", "chin"),
    "AU20": ("mouth",),
    "AU22": ("mouth",),
    "AU23": ("mouth",),
    "AU24": ("mouth",),
    "AU25": ("mouth",),
    "AU26": ("mouth", "jaw"),
    "AU27": ("mouth", "jaw"),
    "AU43": ("eyes",),
}

_AU_KEY = re.compile(r"(?P<prefix>AU|R|L)(?P<number>[0-9]+)")

# Face coordinates: the face centre is the origin, y points down, one unit is about the distance
# from the face centre to the chin. The face spans roughly x in [-0.7, 0.7], y in [-0.9, 0.9].
_EYE_Y = -0.10
_BROW_Y = -0.29
_MOUTH_Y = 0.43
_UNIT_OF_SIZE = 0.52  # one face unit in image widths (before the pose scale)
_FACE_CENTRE_Y = 0.45  # where the face centre sits, in image heights from the top

_SKIN_TONES = np.array(
    [(255, 226, 200), (243, 200, 166), (228, 178, 138), (205, 146, 104),
     (170, 112, 76), (128, 84, 58), (96, 64, 46)], dtype=np.float64,
)  # fmt: skip
_HAIR_COLOURS = np.array(
    [(28, 24, 22), (62, 42, 30), (104, 70, 44), (196, 160, 98), (138, 66, 34), (150, 150, 150)],
    dtype=np.float64,
)
_IRIS_COLOURS = np.array(
    [(74, 46, 28), (48, 32, 22), (70, 110, 150), (84, 116, 72), (120, 96, 50)], dtype=np.float64
)

_CIRCLE = np.stack(
    [np.cos(np.linspace(0, 2 * np.pi, 28, endpoint=False)),
     np.sin(np.linspace(0, 2 * np.pi, 28, endpoint=False))], axis=1,
)  # fmt: skip
_MOUTH_U = np.linspace(-1.0, 1.0, 21)


@dataclasses.dataclass(frozen=True)
class Identity:
    """Everything about a synthetic person that stays fixed across expressions and captures."""

    face_half_width: float
    face_half_height: float
    jaw_taper: float
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int  # 0 short, 1 long, 2 fringe, 3 receding
    hairline_y: float
    eye_dx: float  # half the distance between the eye centres
    eye_half_width: float
    eye_open: float  # scales the lid heights
    canthal_tilt: float  # outer eye corners higher (> 0) or lower
    iris: tuple[float, float, float]
    brow_thickness: float
    brow_raise: float  # brow height offset (negative = higher)
    nose_y: float
    nose_width: float
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    lip_colour: tuple[float, float, float]
    furrow_depth: float  # resting nasolabial line strength (age)
    glasses: bool
    background: tuple[float, float, float]
    clothes: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class Capture:
    """Pose, lighting and noise of one photograph of a face."""

    roll: float  # radians
    scale: float
    shift_x: float  # in image widths
    shift_y: float
    light_angle: float
    light_strength: float
    brightness: float
    tint: tuple[float, float, float]
    noise_std: float  # in 0..255 units


UPRIGHT = Capture(
    roll=0.0, scale=1.0, shift_x=0.0, shift_y=0.0, light_angle=0.0, light_strength=0.0,
    brightness=1.0, tint=(1.0, 1.0, 1.0), noise_std=2.0,
)  # fmt: skip


def sample_identity(identity_seed: int) -> Identity:
    """The synthetic person with this seed."""
    rng = np.random.default_rng([int(identity_seed), 0x1D])
    skin_index = rng.uniform(0, len(_SKIN_TONES) - 1)
    low = int(skin_index)
    skin = _SKIN_TONES[low] + (skin_index - low) * (_SKIN_TONES[low + 1] - _SKIN_TONES[low])
    skin = np.clip(skin + rng.normal(0, 5, 3), 0, 255)
    hair = _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))] * rng.uniform(0.85, 1.15)
    lip = _mix(skin, np.array([190.0, 70, 80]), rng.uniform(0.35, 0.6)) * rng.uniform(0.85, 1.0)
    background = rng.uniform(60, 230, 3)
    if rng.random() < 0.5:  # grey-ish backgrounds are common in face data
        background = np.full(3, rng.uniform(70, 220)) + rng.normal(0, 8, 3)
    return Identity(
        face_half_width=float(rng.uniform(0.60, 0.72)),
        face_half_height=float(rng.uniform(0.86, 0.95)),
        jaw_taper=float(rng.uniform(0.15, 0.45)),
        skin=_colour(skin),
        hair=_colour(np.clip(hair, 0, 255)),
        hair_style=int(rng.integers(4)),
        hairline_y=float(rng.uniform(-0.64, -0.58)),
        eye_dx=float(rng.uniform(0.22, 0.28)),
        eye_half_width=float(rng.uniform(0.105, 0.122)),
        eye_open=float(rng.uniform(0.9, 1.12)),
        canthal_tilt=float(rng.uniform(-0.008, 0.014)),
        iris=_colour(_IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))]),
        brow_thickness=float(rng.uniform(0.03, 0.05)),
        brow_raise=float(rng.uniform(-0.015, 0.015)),
        nose_y=float(rng.uniform(0.15, 0.19)),
        nose_width=float(rng.uniform(0.9, 1.15)),
        mouth_half_width=float(rng.uniform(0.18, 0.215)),
        upper_lip=float(rng.uniform(0.032, 0.045)),
        lower_lip=float(rng.uniform(0.042, 0.058)),
        lip_colour=_colour(np.clip(lip, 0, 255)),
        furrow_depth=float(rng.uniform(0.04, 0.14)),
        glasses=bool(rng.random() < 0.25),
        background=_colour(np.clip(background, 0, 255)),
        clothes=_colour(rng.uniform(20, 220, 3)),
    )


def sample_capture(pose_seed: int | None) -> Capture:
    """The pose, lighting and noise of a photograph; `UPRIGHT` when `pose_seed` is None."""
    if pose_seed is None:
        return UPRIGHT
    rng = np.random.default_rng([int(pose_seed), 0xCA])
    return Capture(
        roll=float(np.deg2rad(rng.uniform(-6.0, 6.0))),
        scale=float(rng.uniform(0.94, 1.06)),
        shift_x=float(rng.uniform(-0.03, 0.03)),
        shift_y=float(rng.uniform(-0.025, 0.025)),
        light_angle=float(rng.uniform(0, 2 * np.pi)),
        light_strength=float(rng.uniform(0.0, 0.28)),
        brightness=float(rng.uniform(0.85, 1.1)),
        tint=_colour(rng.uniform(0.94, 1.06, 3), scale=1.0),
        noise_std=float(rng.uniform(1.0, 5.0)),
    )


def parse_au_intensities(aus: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """AU keys and intensities -> {"AU12": (right side, left side)} for the rendered AUs.

    Keys "AUn" act on both sides, "Rn"/"Ln" on the subject's right/left side only; when a key
    and a side key name the same AU the larger intensity wins per side. Raises ValueError for an
    unknown key, an AU the renderer does not draw, a side on a midline AU, or an intensity outside
    [0, 1].
    """
    if not isinstance(aus, Mapping):
        raise TypeError(f"aus must be a mapping of AU keys to intensities, got {type(aus).__name__}")
    sides: dict[str, list[float]] = {}
    for key, value in aus.items():
        match = _AU_KEY.fullmatch(str(key))
        if match is None:
            raise ValueError(
                f"AU key {key!r} is not of the form 'AU12', 'R12' or 'L12' (R/L = the subject's "
                "right/left side)"
            )
        au = f"AU{int(match['number'])}"
        if au not in AU_REGIONS:
            raise ValueError(f"AU key {key!r}: {au} is not rendered; rendered AUs: {', '.join(RENDERED_AUS)}")
        if match["prefix"] != "AU" and au not in LATERAL_AUS:
            raise ValueError(
                f"AU key {key!r}: {au} acts on the midline and has no side; use {au!r}"
            )
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise ValueError(f"AU {key!r}: intensity must be a number in [0, 1], got {value!r}")
        intensity = float(value)
        if not 0.0 <= intensity <= 1.0:  # also rejects NaN
            raise ValueError(f"AU {key!r}: intensity {intensity!r} is outside [0, 1]")
        pair = sides.setdefault(au, [0.0, 0.0])
        if match["prefix"] in ("AU", "R"):
            pair[0] = max(pair[0], intensity)
        if match["prefix"] in ("AU", "L"):
            pair[1] = max(pair[1], intensity)
    return {au: (pair[0], pair[1]) for au, pair in sides.items()}


def render(
    aus: Mapping[str, float],
    identity_seed: int,
    size: int = 112,
    *,
    pose_seed: int | None = None,
    noise: bool = True,
) -> Image.Image:
    """A `size` x `size` RGB face of person `identity_seed` showing `aus` (see the module doc)."""
    if not isinstance(size, (int, np.integer)) or size < 16:
        raise ValueError(f"size must be an integer >= 16, got {size!r}")
    _check_seed("identity_seed", identity_seed)
    if pose_seed is not None:
        _check_seed("pose_seed", pose_seed)
    activation = _Activation(parse_au_intensities(aus))
    identity = sample_identity(identity_seed)
    capture = sample_capture(pose_seed)
    painter = _Painter(int(size), identity, capture)
    _draw_face(painter, identity, activation)
    pixels = painter.finish()
    pixels = _apply_lighting(pixels, capture)
    if noise and capture.noise_std > 0:
        entropy = [int(identity_seed), 0x5E] + ([] if pose_seed is None else [int(pose_seed)])
        noise_rng = np.random.default_rng(entropy)
        pixels = pixels + noise_rng.normal(0.0, capture.noise_std, pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8), "RGB")


def au_region_mask(au: str, identity_seed: int, size: int = 112, *, pose_seed: int | None = None) -> np.ndarray:
    """Boolean (size, size) mask of the pixels AU key `au` ("AU4", "R12") may change.

    A unilateral key ("R5") covers only that side's part of the paired regions (eyes, cheeks,
    nasolabial); mouth, chin, jaw, brows and nose are one region each.
    """
    (canonical, (right, left)), = parse_au_intensities({au: 1.0}).items()
    sides = tuple(side for side, on in ((-1, right > 0), (1, left > 0)) if on)
    identity = sample_identity(identity_seed)
    capture = sample_capture(pose_seed)
    transform = _Transform(int(size), capture, supersample=1)
    mask = Image.new("L", (int(size), int(size)), 0)
    draw = ImageDraw.Draw(mask)
    for region in AU_REGIONS[canonical]:
        for box_side, (x0, x1, y0, y1) in _region_boxes(identity, region):
            if box_side != 0 and box_side not in sides:
                continue
            corners = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
            draw.polygon(transform.flat(corners), fill=255)
    return np.asarray(mask) > 0


def _check_seed(name: str, seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")


def _region_boxes(identity: Identity, region: str) -> list[tuple[int, tuple[float, float, float, float]]]:
    """Boxes (side, (x0, x1, y0, y1)) in face coordinates covering everything `region`'s AUs draw.

    side is -1 for the image-left (subject's right) half, +1 for the image-right half, 0 for a
    region on the midline. The margins cover the largest displacement at intensity 1 plus the
    anti-aliasing blur.
    """
    eye_dx, eye_w = identity.eye_dx, identity.eye_half_width
    mouth_w = identity.mouth_half_width
    if region == "brows":
        return [(0, (-(eye_dx + 0.30), eye_dx + 0.30, _BROW_Y - 0.30, _EYE_Y - 0.055))]
    if region == "eyes":
        return [
            (side, (min(side * (eye_dx - eye_w - 0.05), side * (eye_dx + eye_w + 0.12)),
                    max(side * (eye_dx - eye_w - 0.05), side * (eye_dx + eye_w + 0.12)),
                    _EYE_Y - 0.18, _EYE_Y + 0.09))
            for side in (-1, 1)
        ]  # fmt: skip
    if region == "cheeks":
        return [
            (side, (min(side * 0.06, side * (eye_dx + 0.26)), max(side * 0.06, side * (eye_dx + 0.26)),
                    _EYE_Y - 0.01, identity.nose_y + 0.16))
            for side in (-1, 1)
        ]  # fmt: skip
    if region == "nose":
        return [(0, (-0.16, 0.16, _EYE_Y - 0.02, identity.nose_y + 0.09))]
    if region == "nasolabial":
        return [
            (side, (min(side * 0.05, side * (mouth_w + 0.12)), max(side * 0.05, side * (mouth_w + 0.12)),
                    identity.nose_y - 0.04, _MOUTH_Y + 0.12))
            for side in (-1, 1)
        ]  # fmt: skip
    if region == "mouth":
        return [(0, (-(mouth_w + 0.16), mouth_w + 0.16, identity.nose_y + 0.05, _MOUTH_Y + 0.34))]
    if region == "chin":
        return [(0, (-0.42, 0.42, _MOUTH_Y + 0.05, identity.face_half_height + 0.06))]
    if region == "jaw":
        width = identity.face_half_width + 0.08
        return [(0, (-width, width, 0.05, identity.face_half_height + 0.30))]
    raise ValueError(f"unknown facial region {region!r}")


# --------------------------------------------------------------------------------------------
# drawing


class _Activation:
    """Per-side AU intensities with zero for AUs that are absent."""

    def __init__(self, sides: dict[str, tuple[float, float]]):
        self._sides = sides

    def side(self, au: str, side: int) -> float:
        """Intensity of `au` on image side -1 (subject's right) or +1 (subject's left)."""
        pair = self._sides.get(au)
        return 0.0 if pair is None else pair[0 if side < 0 else 1]

    def mean(self, au: str) -> float:
        pair = self._sides.get(au)
        return 0.0 if pair is None else 0.5 * (pair[0] + pair[1])


class _Transform:
    """Face coordinates -> pixel coordinates under a capture's roll, scale and shift."""

    def __init__(self, size: int, capture: Capture, supersample: int):
        canvas = size * supersample
        unit = canvas * _UNIT_OF_SIZE * capture.scale
        cos, sin = math.cos(capture.roll), math.sin(capture.roll)
        self.unit = unit
        self.matrix_t = np.array([[cos, sin], [-sin, cos]]) * unit  # row vectors @ matrix_t
        self.offset = np.array(
            [canvas * (0.5 + capture.shift_x), canvas * (_FACE_CENTRE_Y + capture.shift_y)]
        )

    def flat(self, points: np.ndarray) -> list[float]:
        return (points @ self.matrix_t + self.offset).ravel().tolist()


class _Painter:
    """Draws face-coordinate shapes onto a supersampled canvas."""

    def __init__(self, size: int, identity: Identity, capture: Capture):
        self.size = size
        self.transform = _Transform(size, capture, SUPERSAMPLE)
        canvas = size * SUPERSAMPLE
        self.image = Image.new("RGB", (canvas, canvas), identity.background)
        self.draw = ImageDraw.Draw(self.image)

    def polygon(self, points: np.ndarray, colour) -> None:
        self.draw.polygon(self.transform.flat(points), fill=colour)

    def line(self, points: np.ndarray, colour, width: float) -> None:
        pixels = max(1, int(round(width * self.transform.unit)))
        self.draw.line(self.transform.flat(points), fill=colour, width=pixels, joint="curve")

    def ellipse(self, centre, radius_x: float, radius_y: float, colour) -> None:
        self.polygon(np.asarray(centre) + _CIRCLE * (radius_x, radius_y), colour)

    def finish(self) -> np.ndarray:
        """The canvas box-filtered to the output size, as float32 (H, W, 3)."""
        small = self.image.reduce(SUPERSAMPLE)
        return np.asarray(small, dtype=np.float32)


def _apply_lighting(pixels: np.ndarray, capture: Capture) -> np.ndarray:
    """A directional brightness ramp, global brightness and colour cast."""
    gain = np.asarray(capture.tint, dtype=np.float32) * np.float32(capture.brightness)
    if capture.light_strength > 0:
        size = pixels.shape[0]
        ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
        field = (
            math.cos(capture.light_angle) * ramp[None, :] + math.sin(capture.light_angle) * ramp[:, None]
        )
        shading = 1.0 + np.float32(capture.light_strength) * field
        return pixels * shading[:, :, None] * gain
    return pixels * gain


def _draw_face(painter: _Painter, identity: Identity, act: _Activation) -> None:
    skin = np.asarray(identity.skin)
    shade = skin * 0.78
    jaw_drop = 0.13 * act.mean("AU26") + 0.2 * act.mean("AU27")

    _draw_body(painter, identity, skin)
    if identity.hair_style == 1:  # long hair falls behind the head and shoulders
        painter.polygon(_long_hair_outline(identity), _colour(np.asarray(identity.hair) * 0.9))
    for side in (-1, 1):
        painter.ellipse((side * identity.face_half_width * 0.98, -0.02), 0.085, 0.15, _colour(shade))
    painter.polygon(_face_outline(identity, jaw_drop), identity.skin)
    _draw_cheeks(painter, identity, act, skin)
    _draw_hair(painter, identity)
    _draw_forehead(painter, identity, act, skin)
    for side in (-1, 1):
        _draw_brow(painter, identity, act, side)
    _draw_brow_furrows(painter, act, skin)
    for side in (-1, 1):
        _draw_eye(painter, identity, act, side, skin)
    _draw_nose(painter, identity, act, skin)
    _draw_nasolabial(painter, identity, act, skin)
    _draw_mouth(painter, identity, act, skin, jaw_drop)
    _draw_chin(painter, identity, act, skin, jaw_drop)
    if identity.glasses:
        _draw_glasses(painter, identity)


def _draw_body(painter: _Painter, identity: Identity, skin: np.ndarray) -> None:
    painter.ellipse((0.0, 1.62), 1.25, 0.62, identity.clothes)
    neck = np.array([(-0.27, 0.3), (0.27, 0.3), (0.30, 1.15), (-0.30, 1.15)])
    painter.polygon(neck, _colour(skin * 0.82))


def _face_outline(identity: Identity, jaw_drop: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 56, endpoint=False)
    x = identity.face_half_width * np.cos(t)
    y = identity.face_half_height * np.sin(t)
    lower = np.clip(y / identity.face_half_height, 0.0, 1.0)
    x = x * (1.0 - identity.jaw_taper * lower**1.6)
    if jaw_drop:
        y = y + jaw_drop * np.clip((y - 0.2) / (identity.face_half_height - 0.2), 0.0, 1.0)
    return np.stack([x, y], axis=1)


def _long_hair_outline(identity: Identity) -> np.ndarray:
    w, h = identity.face_half_width, identity.face_half_height
    return np.array(
        [(-w - 0.12, -0.3), (-w - 0.05, -h + 0.05), (0, -h - 0.12), (w + 0.05, -h + 0.05),
         (w + 0.12, -0.3), (w + 0.2, 0.8), (w - 0.05, 0.95), (-w + 0.05, 0.95), (-w - 0.2, 0.8)]
    )  # fmt: skip


def _draw_hair(painter: _Painter, identity: Identity) -> None:
    w, h = identity.face_half_width, identity.face_half_height
    style = identity.hair_style
    top = np.linspace(np.pi * 1.06, np.pi * 1.94, 15)
    volume = 0.1 if style != 3 else 0.04
    cap = np.stack([(w + volume) * np.cos(top), (h + volume) * np.sin(top) - 0.02], axis=1)
    hairline_y = identity.hairline_y - (0.1 if style == 3 else 0.0)
    if style == 2:  # fringe: a straight-ish edge low on the forehead
        edge_x = np.linspace(w * 0.98, -w * 0.98, 9)
        edge_y = hairline_y + 0.05 + 0.02 * np.cos(edge_x * 9)
    else:  # a curved hairline, higher at the temples, with a slight side parting
        edge_x = np.linspace(w * 0.98, -w * 0.98, 9)
        edge_y = hairline_y + 0.16 * (edge_x / w) ** 2 - 0.03 * np.clip(edge_x, 0, None)
    edge_y = np.where(np.abs(edge_x) > w * 0.9, -0.28, edge_y)  # sideburns
    edge = np.stack([edge_x, edge_y], axis=1)
    painter.polygon(np.concatenate([cap, edge]), identity.hair)


def _draw_forehead(painter: _Painter, identity: Identity, act: _Activation, skin: np.ndarray) -> None:
    """AU1's short horizontal wrinkles in the centre of the forehead."""
    inner_raise = max(act.side("AU1", -1), act.side("AU1", 1))
    if inner_raise <= 0:
        return
    colour = _colour(_mix(skin, skin * 0.55, _mark_alpha(inner_raise)))
    x = np.linspace(-0.16, 0.16, 7)
    for row, y0 in enumerate((-0.46, -0.515)):
        half = 1.0 - 0.25 * row
        y = y0 - 0.012 * np.cos(x / 0.16 * np.pi / 2) * inner_raise
        painter.line(np.stack([x * half, y], axis=1), colour, 0.016)


def _brow_control_points(identity: Identity, act: _Activation, side: int) -> np.ndarray:
    """Inner end, peak and outer end of one brow (face coordinates)."""
    dx = identity.eye_dx
    base_y = _BROW_Y + identity.brow_raise
    inner = np.array([side * (dx - 0.145), base_y + 0.012])
    peak = np.array([side * (dx + 0.01), base_y - 0.045])
    outer = np.array([side * (dx + 0.165), base_y + 0.01])
    au1, au2, au4 = act.side("AU1", side), act.side("AU2", side), act.side("AU4", side)
    au9 = act.mean("AU9")
    inner[1] -= 0.095 * au1
    peak[1] -= 0.025 * au1 + 0.065 * au2
    outer[1] -= 0.085 * au2
    lowered = 0.055 * au4 + 0.03 * au9
    inner += (-side * (0.045 * au4 + 0.012 * au9), lowered + 0.02 * au4)
    peak[1] += lowered
    outer[1] += lowered * 0.7
    return np.stack([inner, peak, outer])


def _draw_brow(painter: _Painter, identity: Identity, act: _Activation, side: int) -> None:
    inner, peak, outer = _brow_control_points(identity, act, side)
    control = 2 * peak - 0.5 * (inner + outer)  # the quadratic Bezier then passes through peak
    t = np.linspace(0, 1, 11)[:, None]
    centre = (1 - t) ** 2 * inner + 2 * (1 - t) * t * control + t**2 * outer
    tangent = np.gradient(centre, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    half = identity.brow_thickness * (1.0 - 0.5 * t) * 0.5
    outline = np.concatenate([centre + normal * half, (centre - normal * half)[::-1]])
    painter.polygon(outline, _colour(np.asarray(identity.hair) * 0.6))


def _draw_brow_furrows(painter: _Painter, act: _Activation, skin: np.ndarray) -> None:
    """AU4's vertical furrows between the brows."""
    lowering = max(act.side("AU4", -1), act.side("AU4", 1))
    if lowering <= 0:
        return
    colour = _colour(_mix(skin, skin * 0.5, _mark_alpha(lowering)))
    for x in (-0.028, 0.028):
        painter.line(np.array([(x, _BROW_Y - 0.03), (x * 0.8, _BROW_Y + 0.08)]), colour, 0.016)


def _eye_lids(identity: Identity, act: _Activation, side: int):
    """Functions u -> upper / lower lid y (u = -1..1 across the eye, image left to right)."""
    cy = _EYE_Y
    au5, au6, au7, au43 = (act.side(au, side) for au in ("AU5", "AU6", "AU7", "AU43"))
    upper = 0.052 * identity.eye_open * (1.0 + 0.95 * au5 - 0.3 * au7 - 0.15 * au6)
    lower = 0.038 * identity.eye_open * (1.0 - 0.75 * au7 - 0.45 * au6)
    upper = upper * (1.0 - au43) - 0.8 * lower * au43  # closing brings the upper lid down
    tilt = identity.canthal_tilt

    def upper_y(u):
        return cy - tilt * u * side - upper * (1 - u**2) ** 0.75

    def lower_y(u):
        return cy - tilt * u * side + lower * (1 - u**2)

    return upper_y, lower_y


def _clip_disc_to_eye(centre, radius, eye_x, eye_w, upper_y, lower_y):
    """Polygon of a disc intersected with the eye opening (None when nothing is visible)."""
    x = centre[0] + radius * np.linspace(-1, 1, 11)
    u = np.clip((x - eye_x) / eye_w, -1, 1)
    half = np.sqrt(np.maximum(radius**2 - (x - centre[0]) ** 2, 0.0))
    top = np.maximum(centre[1] - half, upper_y(u))
    bottom = np.minimum(centre[1] + half, lower_y(u))
    visible = bottom > top
    if not visible.any():
        return None
    middle = 0.5 * (top + bottom)
    top = np.where(visible, top, middle)
    bottom = np.where(visible, bottom, middle)
    return np.concatenate([np.stack([x, top], 1), np.stack([x, bottom], 1)[::-1]])


def _draw_eye(painter: _Painter, identity: Identity, act: _Activation, side: int, skin: np.ndarray) -> None:
    eye_x, eye_w = side * identity.eye_dx, identity.eye_half_width
    upper_y, lower_y = _eye_lids(identity, act, side)
    u = np.linspace(-1, 1, 15)
    x = eye_x + eye_w * u
    top, bottom = upper_y(u), lower_y(u)
    top = np.minimum(top, bottom - 1e-4)
    lid_dark = _colour(_mix(np.asarray(identity.hair), np.zeros(3), 0.55))

    # Lid crease above the upper lid follows the lid as it opens (AU5) or closes (AU43).
    crease = np.stack([x, top - 0.028 * (1 - u**2) ** 0.5 - 0.004], axis=1)[2:-2]
    painter.line(crease, _colour(skin * 0.8), 0.009)

    opening = bottom - top
    if opening.max() > 0.004:
        painter.polygon(np.concatenate([np.stack([x, top], 1), np.stack([x, bottom], 1)[::-1]]), (238, 236, 230))
        iris_centre = (eye_x - side * 0.004, _EYE_Y + 0.004)
        radius = 0.052 * min(1.0, identity.eye_half_width / 0.11)
        iris = _clip_disc_to_eye(iris_centre, radius, eye_x, eye_w, upper_y, lower_y)
        if iris is not None:
            painter.polygon(iris, identity.iris)
            pupil = _clip_disc_to_eye(iris_centre, radius * 0.45, eye_x, eye_w, upper_y, lower_y)
            if pupil is not None:
                painter.polygon(pupil, (12, 10, 10))
            glint = _clip_disc_to_eye(
                (iris_centre[0] + 0.014, iris_centre[1] - 0.014), 0.009, eye_x, eye_w, upper_y, lower_y
            )
            if glint is not None:
                painter.polygon(glint, (250, 250, 250))

    # Lower lid: AU7 tightens it into a straighter, darker line; AU6 bunches it up a little.
    tension = act.side("AU7", side)
    lower_colour = _colour(_mix(skin * 0.72, skin * 0.45, tension))
    painter.line(np.stack([x, bottom], 1)[1:-1], lower_colour, 0.008 + 0.016 * tension)
    # Upper lid with lashes.
    painter.line(np.stack([x, top], 1), lid_dark, 0.016)

    cheek_raise = act.side("AU6", side)
    if cheek_raise > 0:  # crow's feet fanning out from the outer corner
        colour = _colour(_mix(skin, skin * 0.5, _mark_alpha(cheek_raise)))
        corner = np.array([side * (identity.eye_dx + eye_w + 0.02), _EYE_Y])
        for angle in (-0.45, 0.0, 0.45):
            direction = np.array([side * math.cos(angle), math.sin(angle)])
            painter.line(np.stack([corner, corner + 0.08 * direction]), colour, 0.012)


def _draw_cheeks(painter: _Painter, identity: Identity, act: _Activation, skin: np.ndarray) -> None:
    """Cheek patch and the furrow under each eye; AU6 lifts both."""
    blush = _colour(_mix(skin, np.asarray(identity.lip_colour), 0.22))
    for side in (-1, 1):
        lift = act.side("AU6", side)
        centre = (side * (identity.eye_dx + 0.04), 0.15 - 0.09 * lift)
        painter.ellipse(centre, 0.11 + 0.015 * lift, 0.075 + 0.01 * lift, blush)
        if lift > 0:
            colour = _colour(_mix(skin, skin * 0.6, _mark_alpha(lift)))
            t = np.linspace(-1, 1, 7)
            x = side * identity.eye_dx + 0.09 * t
            y = _EYE_Y + 0.105 - 0.04 * lift + 0.02 * t**2
            painter.line(np.stack([x, y], 1), colour, 0.011)


def _draw_nose(painter: _Painter, identity: Identity, act: _Activation, skin: np.ndarray) -> None:
    wrinkle = act.mean("AU9")
    tip_y = identity.nose_y
    width = identity.nose_width
    shadow = _colour(skin * 0.84)
    for side in (-1, 1):  # the sides of the bridge
        painter.line(np.array([(side * 0.045, _EYE_Y + 0.02), (side * 0.052 * width, tip_y - 0.03)]), shadow, 0.012)
    lift = 0.03 * wrinkle
    painter.ellipse((0, tip_y - 0.005 - 0.5 * lift), 0.04 * width, 0.032, _colour(skin * 1.04))
    for side in (-1, 1):
        wing_centre = np.array([side * 0.068 * width * (1 + 0.12 * wrinkle), tip_y + 0.01 - lift])
        angles = np.linspace(-0.5 * np.pi, 0.6 * np.pi, 8)
        wing = wing_centre + np.stack([side * np.cos(angles) * 0.03, np.sin(angles) * 0.03], 1)
        painter.line(wing, _colour(skin * 0.66), 0.011)
        painter.ellipse((side * 0.036 * width, tip_y + 0.032 - lift), 0.022, 0.011, _colour(skin * 0.4))
    if wrinkle > 0:
        colour = _colour(_mix(skin, skin * 0.5, _mark_alpha(wrinkle)))
        x = np.linspace(-0.05, 0.05, 5)
        for y0 in (-0.03, 0.01, 0.05):
            painter.line(np.stack([x, y0 - 0.012 * (1 - (x / 0.05) ** 2)], 1), colour, 0.011)


def _draw_nasolabial(painter: _Painter, identity: Identity, act: _Activation, skin: np.ndarray) -> None:
    """Line from the nose wing to beside the mouth corner; resting depth from age, AU11 deepens."""
    for side in (-1, 1):
        deepen = act.side("AU11", side)
        strength = identity.furrow_depth + 0.8 * deepen
        length = 0.55 + 0.45 * deepen
        t = np.linspace(0, length, 8)
        x = side * (0.1 * identity.nose_width + (identity.mouth_half_width - 0.02) * t**0.8)
        y = identity.nose_y + 0.015 + (_MOUTH_Y + 0.03 - identity.nose_y) * t
        colour = _colour(_mix(skin, skin * 0.55, strength))
        painter.line(np.stack([x, y], 1), colour, 0.011 + 0.012 * deepen)


def _draw_mouth(painter: _Painter, identity: Identity, act: _Activation, skin: np.ndarray, jaw_drop: float) -> None:
    u = _MOUTH_U
    mean = act.mean
    au22, au23, au24, au27 = mean("AU22"), mean("AU23"), mean("AU24"), mean("AU27")

    def per_side(fn):
        return np.where(u < 0, fn(-1), fn(1))

    corner_x = per_side(
        lambda s: identity.mouth_half_width + 0.06 * act.side("AU12", s) - 0.045 * act.side("AU14", s)
        + 0.09 * act.side("AU20", s) - 0.075 * au22 - 0.02 * au23 - 0.012 * au24 - 0.06 * au27
    )  # fmt: skip
    corner_y = per_side(
        lambda s: -0.11 * act.side("AU12", s) - 0.02 * act.side("AU14", s)
        + 0.1 * act.side("AU15", s) + 0.012 * act.side("AU20", s)
    )  # fmt: skip
    # Stretching (AU20) thins the lips on its own side only; the other AUs act on the whole mouth.
    image_right_weight = np.clip(u + 0.5, 0.0, 1.0)  # blends the two sides smoothly across the middle
    stretch = act.side("AU20", -1) * (1 - image_right_weight) + act.side("AU20", 1) * image_right_weight
    thinning = 0.45 * stretch + 0.5 * au23 + min(1.0, 1.4 * au24) + 0.3 * au27
    upper_thick = identity.upper_lip * np.maximum(0.12, 1.0 - thinning + 0.55 * au22)
    lower_thick = identity.lower_lip * np.maximum(0.12, 1.0 - thinning + 0.55 * au22 + 0.25 * mean("AU17"))
    open_upper = 0.028 * mean("AU25") + 0.018 * mean("AU26") + 0.035 * au27 + 0.012 * au22
    open_lower = (
        0.045 * mean("AU25") + 0.085 * mean("AU26") + 0.14 * au27 + 0.06 * mean("AU16") + 0.016 * au22
    )
    open_lower += jaw_drop * 0.4  # the lower lip rides on the jaw
    upper_raise = 0.055 * mean("AU10")
    bow = -0.028 * mean("AU17")  # the chin raiser pushes the lower lip, and the lip line, up

    x = u * corner_x
    envelope = (1 - u**2) ** 0.7
    rounded = (1 - u**2) ** 0.5
    line_y = _MOUTH_Y + corner_y * np.abs(u) ** 2.2 + bow * (1 - u**2)
    upper_inner = line_y - open_upper * envelope - upper_raise * rounded
    cupid = 1 - 0.3 * np.exp(-((u / 0.14) ** 2))
    upper_outer = upper_inner - upper_thick * rounded ** 0.6 * cupid
    lower_inner = line_y + open_lower * envelope
    lower_outer = lower_inner + lower_thick * rounded ** 0.8

    lip = np.asarray(identity.lip_colour)
    if au24 > 0:  # skin bulges above and below pressed lips
        colour = _colour(_mix(skin, skin * 0.5, _mark_alpha(au24)))
        inner = np.abs(u) < 0.65
        painter.line(np.stack([x, upper_outer - 0.035], 1)[inner], colour, 0.02)
        painter.line(np.stack([x, lower_outer + 0.035], 1)[inner], colour, 0.02)

    gap = lower_inner - upper_inner
    if gap.max() > 0.006:
        cavity = np.concatenate([np.stack([x, upper_inner], 1), np.stack([x, lower_inner], 1)[::-1]])
        painter.polygon(cavity, (58, 22, 26))
        teeth_colour = (236, 232, 218)
        front = np.abs(u) < 0.72
        upper_teeth = np.minimum(gap, 0.032 + 0.3 * upper_raise) * (1 - u**2) ** 0.3
        if front.sum() > 2:
            xs = x[front]
            tooth_top = upper_inner[front]
            painter.polygon(
                np.concatenate([np.stack([xs, tooth_top], 1), np.stack([xs, tooth_top + upper_teeth[front]], 1)[::-1]]),
                teeth_colour,
            )
        lower_show = 0.6 * mean("AU16") + 0.5 * mean("AU26") + 0.4 * au27
        if lower_show > 0:
            narrow = np.abs(u) < 0.55
            xs = x[narrow]
            bottom = lower_inner[narrow]
            height = np.minimum(gap[narrow] * 0.4, 0.03 * lower_show)
            painter.polygon(
                np.concatenate([np.stack([xs, bottom - height], 1), np.stack([xs, bottom], 1)[::-1]]),
                teeth_colour,
            )

    upper_lip = np.concatenate([np.stack([x, upper_outer], 1), np.stack([x, upper_inner], 1)[::-1]])
    lower_lip = np.concatenate([np.stack([x, lower_inner], 1), np.stack([x, lower_outer], 1)[::-1]])
    painter.polygon(upper_lip, _colour(lip * 0.92))
    painter.polygon(lower_lip, _colour(lip))
    line_colour = _colour(_mix(lip * 0.55, np.zeros(3), 0.6 * au24 + 0.2 * au23))
    if gap.max() <= 0.006:
        painter.line(np.stack([x, 0.5 * (upper_inner + lower_inner)], 1), line_colour, 0.011 + 0.012 * au24)
    if au23 > 0:  # a tightened lip has a sharp border
        border = _colour(_mix(lip, lip * 0.5, _mark_alpha(au23)))
        painter.line(np.stack([x, upper_outer], 1), border, 0.012)
        painter.line(np.stack([x, lower_outer], 1), border, 0.012)

    for s in (-1, 1):  # AU14's dimple beside each tightened corner
        dimple = act.side("AU14", s)
        if dimple > 0:
            index = 0 if s < 0 else -1
            cx, cy = x[index] + s * 0.035, line_y[index]
            colour = _colour(_mix(skin, skin * 0.45, _mark_alpha(dimple)))
            t = np.linspace(-1, 1, 5)
            arc = np.stack([cx + s * 0.014 * (1 - t**2), cy + 0.04 * t], 1)
            painter.line(arc, colour, 0.016)


def _draw_chin(painter: _Painter, identity: Identity, act: _Activation, skin: np.ndarray, jaw_drop: float) -> None:
    """AU17: the chin boss bulges up (a curved shadow) and its skin dimples."""
    raise_ = act.mean("AU17")
    if raise_ <= 0:
        return
    chin_y = identity.face_half_height + jaw_drop
    colour = _colour(_mix(skin, skin * 0.55, _mark_alpha(raise_)))
    t = np.linspace(-1, 1, 9)
    boss_y = chin_y - 0.2 - 0.04 * raise_
    painter.line(np.stack([0.15 * t, boss_y + 0.03 * t**2], 1), colour, 0.012)
    dots = np.array([(-0.06, 0.05), (0.0, 0.07), (0.06, 0.05), (-0.03, 0.1), (0.03, 0.1)])
    for dx, dy in dots:
        painter.ellipse((dx, boss_y + dy), 0.009, 0.009, colour)


def _draw_glasses(painter: _Painter, identity: Identity) -> None:
    frame = (30, 30, 34)
    for side in (-1, 1):
        centre = np.array([side * identity.eye_dx, _EYE_Y + 0.01])
        ring = centre + _CIRCLE * (identity.eye_half_width + 0.05, 0.085)
        painter.line(np.concatenate([ring, ring[:1]]), frame, 0.014)
    bridge_x = identity.eye_dx - identity.eye_half_width - 0.05
    painter.line(np.array([(-bridge_x, _EYE_Y - 0.01), (0, _EYE_Y - 0.025), (bridge_x, _EYE_Y - 0.01)]), frame, 0.014)


def _mark_alpha(intensity: float) -> float:
    """How dark an AU's wrinkle or furrow mark is drawn: proportional to the intensity, so a
    sub-threshold trace stays faint next to a labelled AU."""
    return min(1.0, 0.05 + 1.1 * intensity)


def _mix(a, b, t: float) -> np.ndarray:
    t = min(max(float(t), 0.0), 1.0)
    return np.asarray(a, dtype=np.float64) * (1 - t) + np.asarray(b, dtype=np.float64) * t


def _colour(rgb, scale: float | None = None) -> tuple:
    """An RGB tuple of ints for PIL (or of floats when `scale` is given, for gains)."""
    if scale is not None:
        return tuple(float(v) * scale for v in rgb)
    return tuple(int(round(min(max(float(v), 0.0), 255.0))) for v in rgb)
