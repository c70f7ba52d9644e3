"""Procedurally drawn gym photos with activated-muscle masks (for tests and the demo model;
development tooling, not part of the installed package).

No labelled gym photos ship with the project, so this module draws them: a gym background
(wall, floor, mirrors, racks, plates, benches) and one or two people in side or front view
with skin tones, short sleeves and shorts, in varied poses, sizes and positions. Each biceps,
triceps and calf is either *activated* (a flexed, bulging muscle belly with highlight and
shadow lines, e.g. a curl with the elbow bent or a heel raise) or *relaxed* (a slim contour);
only activated muscles are labelled, so a model has to judge the shape of a limb, not
find skin. Poses are sampled so that joint angles alone do not give the answer away
(a relaxed arm may be bent, an activated triceps may hang down).

Shapes: ``make_photo`` returns ``image`` (H, W, 3) uint8 RGB and ``mask`` (H, W) uint8 with
values in ``CLASS_NAMES`` order. Drawing happens at twice the size and is downsampled (image:
Lanczos, mask: nearest neighbour) so that edges look anti-aliased while the mask stays
categorical.

Command line: ``python -m tools.photo_synthetic OUT --train 600 --val 60 --test 100``
writes a dataset in the seed layout (``--layout roboflow`` for a Roboflow export).
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from muscle_pipeline.photo import CLASS_NAMES

BICEPS, TRICEPS, CALF = 1, 2, 3
_SUPERSAMPLE = 2

# Skin tones from light to dark (RGB), jittered per person.
_SKIN_TONES = np.array(
    [(255, 224, 196), (241, 194, 125), (224, 172, 105), (198, 134, 66), (168, 112, 64),
     (141, 85, 36), (110, 70, 40), (80, 52, 34)],
    dtype=float,
)
_WALL_COLOURS = np.array(
    [(200, 200, 200), (225, 215, 195), (170, 185, 200), (90, 90, 95), (60, 62, 70), (235, 235, 230),
     (150, 60, 50), (40, 40, 45)],
    dtype=float,
)
_FLOOR_COLOURS = np.array(
    [(40, 40, 40), (25, 25, 30), (60, 60, 70), (150, 110, 70), (30, 60, 110), (100, 100, 100)], dtype=float
)


def _jitter(rng: np.random.Generator, colour, amount: float = 12.0) -> tuple[int, int, int]:
    c = np.asarray(colour, dtype=float) + rng.uniform(-amount, amount, 3)
    return tuple(int(v) for v in np.clip(c, 0, 255))


def _shade(colour, factor: float) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(colour, dtype=float) * factor, 0, 255))


def _direction(angle_deg: float, facing: int) -> np.ndarray:
    """Unit vector at ``angle_deg`` from straight down, turned towards ``facing`` (+1 right, -1 left)."""
    a = math.radians(angle_deg)
    return np.array([facing * math.sin(a), math.cos(a)])


@dataclass
class Bulge:
    """A muscle belly on one side of a limb segment.

    ``normal`` points from the limb axis to the muscle's side; ``t0``..``t1`` is its extent
    along the segment (0 = proximal joint, 1 = distal joint); ``amplitude`` is the bulge height
    as a fraction of the local half-width; ``label`` is the class index when activated, 0 when
    relaxed (drawn but not labelled); ``defined`` draws highlight and shadow lines.
    """

    normal: np.ndarray
    t0: float
    t1: float
    amplitude: float
    label: int
    defined: bool
    pattern: str = ""  # flexed look: "peak" (biceps), "horseshoe" (triceps), "diamond" (calf)


class _Canvas:
    """Paints the photo and its mask together, in the same z-order (later parts occlude earlier).

    Drawing calls take *scene* coordinates; the canvas shows the scene window whose top-left
    corner is ``origin``, magnified by ``scale`` (canvas pixels per scene unit), so one scene can
    be drawn as a thumbnail (to choose where to look) and again as a close-up of any part of it.
    ``bellies`` collects (scene point, class or 0) for every muscle belly drawn.
    """

    def __init__(self, height: int, width: int, scale: float, origin=(0.0, 0.0)):
        self.scale = float(scale)
        self.origin = (float(origin[0]), float(origin[1]))
        self.image = Image.new("RGB", (width, height))
        self.mask = Image.new("L", (width, height), 0)
        self.draw = ImageDraw.Draw(self.image)
        self.mask_draw = ImageDraw.Draw(self.mask)
        self.bellies: list[tuple[np.ndarray, int]] = []

    def _pts(self, points) -> list[tuple[float, float]]:
        (ox, oy), s = self.origin, self.scale
        return [((float(x) - ox) * s, (float(y) - oy) * s) for x, y in points]

    def polygon(self, points, colour, label: int | None = 0) -> None:
        pts = self._pts(points)
        self.draw.polygon(pts, fill=colour)
        if label is not None:
            self.mask_draw.polygon(pts, fill=label)

    def ellipse(self, centre, radius_x, radius_y, colour, label: int | None = 0) -> None:
        (cx, cy), s, (ox, oy) = centre, self.scale, self.origin
        box = [(cx - radius_x - ox) * s, (cy - radius_y - oy) * s, (cx + radius_x - ox) * s, (cy + radius_y - oy) * s]
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:  # PIL refuses boxes under a pixel
            return
        self.draw.ellipse(box, fill=colour)
        if label is not None:
            self.mask_draw.ellipse(box, fill=label)

    def rectangle(self, x0, y0, x1, y1, colour, label: int | None = None) -> None:
        (ox, oy), s = self.origin, self.scale
        box = [(x0 - ox) * s, (y0 - oy) * s, (x1 - ox) * s, (y1 - oy) * s]
        self.draw.rectangle(box, fill=colour)
        if label is not None:
            self.mask_draw.rectangle(box, fill=label)

    def line(self, points, colour, width: float) -> None:
        self.draw.line(self._pts(points), fill=colour, width=max(1, int(round(width * self.scale))), joint="curve")


def _limb(canvas: _Canvas, start, end, half_width_start: float, half_width_end: float, colour,
          bulges: tuple[Bulge, ...] = (), n: int = 24) -> None:
    """Draw a tapered limb segment with muscle bulges; label activated bellies in the mask."""
    start, end = np.asarray(start, float), np.asarray(end, float)
    axis = end - start
    length = float(np.linalg.norm(axis)) or 1.0
    along = axis / length
    left = np.array([along[1], -along[0]])  # one normal; bulges choose their own side
    ts = np.linspace(0.0, 1.0, n)
    half_width = half_width_start + (half_width_end - half_width_start) * ts
    extra_left = np.zeros(n)
    extra_right = np.zeros(n)
    for b in bulges:
        u = np.clip((ts - b.t0) / (b.t1 - b.t0), 0.0, 1.0)
        profile = b.amplitude * half_width * np.sin(np.pi * u ** 0.85) ** 1.4
        if float(np.dot(b.normal, left)) >= 0:
            extra_left = np.maximum(extra_left, profile)
        else:
            extra_right = np.maximum(extra_right, profile)
    centre = start[None, :] + ts[:, None] * axis[None, :]
    side_l = centre + left[None, :] * (half_width + extra_left)[:, None]
    side_r = centre - left[None, :] * (half_width + extra_right)[:, None]
    outline = np.concatenate([side_l, side_r[::-1]])
    canvas.polygon(outline, colour, label=0)
    # Round joints so that segments join without notches.
    canvas.ellipse(start, half_width_start, half_width_start, colour, label=0)
    canvas.ellipse(end, half_width_end, half_width_end, colour, label=0)

    for b in bulges:
        sign = 1.0 if float(np.dot(b.normal, left)) >= 0 else -1.0
        normal = left * sign
        tb = np.linspace(b.t0, b.t1, 16)
        u = (tb - b.t0) / (b.t1 - b.t0)
        hw = half_width_start + (half_width_end - half_width_start) * tb
        bump = b.amplitude * hw * np.sin(np.pi * u ** 0.85) ** 1.4
        c = start[None, :] + tb[:, None] * axis[None, :]
        outer = c + normal[None, :] * (hw + bump)[:, None]
        # The belly reaches from the outer contour towards the axis, deepest at mid-belly.
        depth = np.sin(np.pi * u) ** 0.7
        inner = c + normal[None, :] * (hw * (1.0 - 1.3 * depth))[:, None]
        if b.pattern:
            canvas.bellies.append((c[8] + normal * hw[8], b.label))
        if b.label:
            canvas.mask_draw.polygon(canvas._pts(np.concatenate([outer, inner[::-1]])), fill=b.label)
        if b.defined and b.label:
            _definition(canvas, b, c, normal, hw, bump, inner, colour)
        elif b.defined:  # a relaxed muscle may show a faint contour, never the flexed pattern
            canvas.line(inner[3:13], _shade(colour, 0.85), width=max(0.5, 0.08 * float(hw.mean())))


def _definition(canvas: _Canvas, b: Bulge, c, normal, hw, bump, inner, colour) -> None:
    """Highlight, outline and the muscle's own flexed pattern (biceps peak with veins, triceps
    horseshoe, calf diamond): what makes a flexed muscle look flexed in a photo."""
    mid = slice(3, 13)
    hl_in = c[mid] + normal[None, :] * (hw[mid] + 0.2 * bump[mid])[:, None]
    hl_out = c[mid] + normal[None, :] * (hw[mid] + 0.8 * bump[mid])[:, None]
    canvas.polygon(np.concatenate([hl_out, hl_in[::-1]]), _shade(colour, 1.2), label=None)
    width = max(0.6, 0.14 * float(hw.mean()))
    dark = _shade(colour, 0.58)
    canvas.line(inner[2:14], dark, width=width)
    if b.pattern == "peak":  # split line at the peak and two veins along the belly
        k = int(np.argmax(bump))
        canvas.line([c[k] + normal * (hw[k] + 0.85 * bump[k]), c[k] + normal * (hw[k] * 0.2)], dark, width * 0.8)
        vein = tuple(int(v) for v in np.clip(np.asarray(colour) * np.array([0.7, 0.76, 0.92]), 0, 255))
        for frac in (0.45, 0.7):
            canvas.line(c[2:14] + normal[None, :] * (frac * (hw[2:14] + bump[2:14]))[:, None], vein, width * 0.6)
    elif b.pattern == "horseshoe":  # U-shaped shadow in the distal half, opening towards the shoulder
        k0, k1 = 7, 14
        outer_arm = c[k0:k1] + normal[None, :] * ((hw[k0:k1] + bump[k0:k1]) * 0.85)[:, None]
        bottom = c[k1] + normal * (hw[k1] * 0.4)
        inner_arm = c[k0:k1]
        canvas.line(np.concatenate([outer_arm, bottom[None, :], inner_arm[::-1]]), dark, width)
    elif b.pattern == "diamond":  # central line between the two gastrocnemius heads, and the heads' lower edge
        canvas.line(c[3:12] + normal[None, :] * (hw[3:12] * 0.55)[:, None], dark, width * 0.8)
        k = 12
        canvas.line([c[k] + normal * (hw[k] + bump[k]) * 0.95, c[k] + normal * hw[k] * 0.55,
                     c[k] - normal * hw[k] * 0.2], dark, width * 0.8)


@dataclass
class _Person:
    height: float  # pixels from the top of the head to the soles when standing
    skin: tuple[int, int, int]
    shirt: tuple[int, int, int]
    shorts: tuple[int, int, int]
    shoes: tuple[int, int, int]
    hair: tuple[int, int, int]
    sleeve: float  # fraction of the upper arm covered by the sleeve (0: tank top)
    shorts_length: float  # fraction of the thigh covered


def _random_person(rng: np.random.Generator, height: float) -> _Person:
    skin = _jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 10)
    return _Person(
        height=height,
        skin=skin,
        shirt=_jitter(rng, rng.integers(0, 256, 3), 0),
        shorts=_jitter(rng, rng.integers(0, 200, 3), 0),
        shoes=_jitter(rng, rng.choice([(20, 20, 20), (240, 240, 240), (200, 40, 40), (40, 60, 160)]), 15),
        hair=_jitter(rng, rng.choice([(20, 15, 10), (60, 40, 20), (120, 80, 40), (200, 170, 110)]), 10),
        sleeve=float(rng.choice([0.0, rng.uniform(0.12, 0.3)])),
        shorts_length=float(rng.uniform(0.45, 0.9)),
    )


def _arm_state(rng: np.random.Generator, view: str) -> dict:
    """Pose and activation of one arm. Angles in degrees (see ``_direction``)."""
    if view == "front":
        if rng.random() < 0.55:  # double-biceps pose: arm abducted, elbow flexed upwards
            biceps = rng.random() < 0.75
            return dict(shoulder=rng.uniform(70, 110), elbow=rng.uniform(70, 130) if biceps else rng.uniform(0, 60),
                        biceps=biceps, triceps=False)
        return dict(shoulder=rng.uniform(5, 30), elbow=rng.uniform(0, 40), biceps=False, triceps=False)
    r = rng.random()
    if r < 0.4:  # curl-like: elbow bent, biceps flexed
        return dict(shoulder=rng.uniform(-10, 100), elbow=rng.uniform(75, 150), biceps=True, triceps=False)
    if r < 0.7:  # pushdown / overhead extension / kickback with the elbow locked out: triceps working
        shoulder = float(rng.choice([rng.uniform(-15, 10), rng.uniform(150, 175), rng.uniform(-100, -70)]))
        return dict(shoulder=shoulder, elbow=rng.uniform(0, 25), biceps=False, triceps=True)
    # Relaxed arm in any pose, bent or straight.
    return dict(shoulder=rng.uniform(-60, 170), elbow=rng.uniform(0, 140), biceps=False, triceps=False)


def _arm_bulges(rng, state: dict, shoulder_angle: float, facing: int) -> tuple[Bulge, ...]:
    biceps_normal = _direction(shoulder_angle + 90, facing)
    bulges = []
    amp_b = rng.uniform(0.65, 1.05) if state["biceps"] else rng.uniform(0.0, 0.25)
    bulges.append(Bulge(biceps_normal, 0.3, 0.92, amp_b, BICEPS if state["biceps"] else 0,
                        defined=(rng.random() < 0.95) if state["biceps"] else (rng.random() < 0.15), pattern="peak"))
    amp_t = rng.uniform(0.55, 0.9) if state["triceps"] else rng.uniform(0.0, 0.2)
    bulges.append(Bulge(-biceps_normal, 0.3, 0.85, amp_t, TRICEPS if state["triceps"] else 0,
                        defined=(rng.random() < 0.95) if state["triceps"] else (rng.random() < 0.15), pattern="horseshoe"))
    return tuple(bulges)


def _draw_arm(canvas, rng, person: _Person, shoulder, state: dict, facing: int, shade: float,
              label: bool) -> None:
    h = person.height
    skin = _shade(person.skin, shade)
    upper, fore = 0.175 * h, 0.15 * h
    elbow = shoulder + upper * _direction(state["shoulder"], facing)
    wrist = elbow + fore * _direction(state["shoulder"] + state["elbow"], facing)
    bulges = _arm_bulges(rng, state, state["shoulder"], facing)
    _limb(canvas, shoulder, elbow, 0.038 * h, 0.028 * h, skin, bulges)
    _limb(canvas, elbow, wrist, 0.029 * h, 0.02 * h, skin,
          (Bulge(_direction(state["shoulder"] + state["elbow"] + 90, facing), 0.05, 0.5, 0.35, 0, False),))
    canvas.ellipse(wrist + 0.03 * h * _direction(state["shoulder"] + state["elbow"], facing),
                   0.024 * h, 0.024 * h, skin)
    if person.sleeve > 0:
        sleeve_end = shoulder + person.sleeve * upper * _direction(state["shoulder"], facing)
        _limb(canvas, shoulder, sleeve_end, 0.05 * h, 0.046 * h, _shade(person.shirt, shade))
    if rng.random() < 0.45:  # a dumbbell in the hand
        hand = wrist + 0.03 * h * _direction(state["shoulder"] + state["elbow"], facing)
        axis = _direction(state["shoulder"] + state["elbow"] + 90, facing)
        colour = _jitter(rng, (35, 35, 38), 10)
        canvas.line([hand - axis * 0.06 * h, hand + axis * 0.06 * h], colour, 0.012 * h)
        for end in (-1, 1):
            canvas.ellipse(hand + end * axis * 0.06 * h, 0.03 * h, 0.03 * h, colour, label=0)


def _draw_leg(canvas, rng, person: _Person, hip, thigh_angle: float, knee_flexion: float,
              calf_active: bool, facing: int, shade: float, label: bool, view: str) -> None:
    h = person.height
    skin = _shade(person.skin, shade)
    knee = hip + 0.245 * h * _direction(thigh_angle, facing)
    shin_angle = thigh_angle - knee_flexion
    ankle = knee + 0.235 * h * _direction(shin_angle, facing)
    _limb(canvas, hip, knee, 0.06 * h, 0.04 * h, skin)
    if view == "side":
        calf_normal = _direction(shin_angle - 90, facing)
        amp = rng.uniform(0.7, 1.1) if calf_active else rng.uniform(0.1, 0.35)
        defined = (rng.random() < 0.95) if calf_active else (rng.random() < 0.15)
        bulges = (Bulge(calf_normal, 0.06, 0.62, amp, CALF if (calf_active and label) else 0, defined, pattern="diamond"),)
    else:  # front view: gastrocnemius heads show on both sides, calves relaxed
        n = _direction(shin_angle + 90, facing)
        bulges = (Bulge(n, 0.08, 0.55, 0.2, 0, False), Bulge(-n, 0.08, 0.55, 0.25, 0, False))
    _limb(canvas, knee, ankle, 0.042 * h, 0.023 * h, skin, bulges)
    shorts_end = hip + person.shorts_length * 0.245 * h * _direction(thigh_angle, facing)
    _limb(canvas, hip, shorts_end, 0.068 * h, 0.062 * h, _shade(person.shorts, shade))
    shoes = _shade(person.shoes, shade)
    if view == "side":
        plantar = rng.uniform(28, 48) if calf_active else rng.uniform(-5, 5)
        foot_dir = _direction(shin_angle + 90 - plantar, facing)
        heel = ankle - 0.03 * h * foot_dir + 0.01 * h * _direction(shin_angle, facing)
        toe = ankle + 0.11 * h * foot_dir
        _limb(canvas, heel, toe, 0.024 * h, 0.018 * h, shoes)
    else:
        canvas.ellipse(ankle + np.array([0, 0.02 * h]), 0.035 * h, 0.022 * h, shoes)


def _draw_person(canvas: _Canvas, rng: np.random.Generator, person: _Person, feet_x: float, floor_y: float,
                 view: str) -> None:
    h = person.height
    facing = int(rng.choice([-1, 1]))
    lean = rng.uniform(-8, 8)
    arms = [_arm_state(rng, view)]
    arms.append(dict(arms[0]) if (view == "side" and rng.random() < 0.6) else _arm_state(rng, view))

    if view == "side":
        calf_active = bool(rng.random() < 0.4)
        if calf_active or rng.random() < 0.6:  # standing (or heel raise)
            thigh, knee = rng.uniform(-8, 12), rng.uniform(0, 10)
        else:  # squat / lunge with flat feet
            thigh, knee = rng.uniform(10, 70), rng.uniform(20, 90)
        legs = [(thigh, knee), (thigh + rng.uniform(-25, 25), knee + rng.uniform(0, 20))]
        lift = 0.05 * h if calf_active else 0.0
    else:
        calf_active = False
        legs = [(rng.uniform(2, 10), 0.0), (rng.uniform(2, 10), 0.0)]
        lift = 0.0
    # Hip height so that the lower foot touches the floor.
    shin_drop = max(0.245 * math.cos(math.radians(t)) + 0.235 * math.cos(math.radians(t - k)) for t, k in legs)
    hip = np.array([feet_x, floor_y - (shin_drop + 0.03) * h - lift])
    shoulder = hip + 0.3 * h * _direction(180 + lean, facing)
    head = shoulder + 0.12 * h * _direction(180 + lean, facing)

    if view == "side":
        far_shift = np.array([-facing * 0.03 * h, -0.005 * h])
        _draw_leg(canvas, rng, person, hip + far_shift, *legs[1], calf_active, facing, 0.82, label=True, view=view)
        _draw_arm(canvas, rng, person, shoulder + far_shift, arms[1], facing, 0.82, label=True)
        torso_half = (0.085 * h, 0.075 * h)
    else:
        torso_half = (0.13 * h, 0.1 * h)
    # Torso as a tapered quadrilateral in the shirt colour, then neck and head.
    up = (shoulder - hip) / np.linalg.norm(shoulder - hip)
    side = np.array([-up[1], up[0]])
    torso = [hip + side * torso_half[1], shoulder + side * torso_half[0],
             shoulder - side * torso_half[0], hip - side * torso_half[1]]
    canvas.polygon(torso, person.shirt)
    canvas.ellipse(shoulder + up * 0.02 * h, torso_half[0] * 0.85, 0.04 * h, person.shirt)
    canvas.polygon([hip + side * torso_half[1] * 1.05, hip - side * torso_half[1] * 1.05,
                    hip - side * torso_half[1] * 1.05 - up * 0.06 * h, hip + side * torso_half[1] * 1.05 - up * 0.06 * h],
                   person.shorts)
    _limb(canvas, shoulder, head, 0.028 * h, 0.028 * h, person.skin)
    canvas.ellipse(head, 0.06 * h, 0.068 * h, person.skin)
    hair_offset = -facing * 0.015 * h if view == "side" else 0.0
    canvas.ellipse(head + np.array([hair_offset, -0.03 * h]), 0.055 * h, 0.04 * h, person.hair)

    if view == "side":
        _draw_leg(canvas, rng, person, hip, *legs[0], calf_active, facing, 1.0, label=True, view=view)
        _draw_arm(canvas, rng, person, shoulder, arms[0], facing, 1.0, label=True)
    else:
        for k, side_sign in enumerate((-1, 1)):
            _draw_leg(canvas, rng, person, hip + np.array([side_sign * 0.055 * h, 0]), *legs[k], False,
                      side_sign, 1.0, label=False, view=view)
        for k, side_sign in enumerate((-1, 1)):
            _draw_arm(canvas, rng, person, shoulder + np.array([side_sign * torso_half[0] * 0.95, 0.02 * h]),
                      arms[k], side_sign, 1.0, label=True)


def _draw_gym(canvas: _Canvas, rng: np.random.Generator, height: int, width: int) -> float:
    """Wall, floor and equipment; returns the y of the floor line (pixels)."""
    floor_y = height * rng.uniform(0.62, 0.9)
    wall = _jitter(rng, _WALL_COLOURS[rng.integers(len(_WALL_COLOURS))], 15)
    band = max(2.0, height / 128)
    for y in np.arange(0.0, floor_y + band, band):  # vertical light gradient on the wall
        canvas.rectangle(0, y, width, y + band, _shade(wall, 1.08 - 0.2 * y / max(floor_y, 1)))
    if rng.random() < 0.5:  # painted stripe
        y0 = rng.uniform(0.2, 0.6) * floor_y
        canvas.rectangle(0, y0, width, y0 + rng.uniform(0.02, 0.06) * height, _jitter(rng, rng.integers(0, 256, 3), 0))
    for _ in range(rng.integers(0, 3)):  # mirrors
        x0 = rng.uniform(-0.2, 0.9) * width
        w = rng.uniform(0.2, 0.5) * width
        canvas.rectangle(x0, 0.1 * floor_y, x0 + w, 0.95 * floor_y, _jitter(rng, (205, 215, 220), 15))
        canvas.rectangle(x0, 0.1 * floor_y, x0 + 0.01 * width, 0.95 * floor_y, (60, 60, 60))
    floor = _jitter(rng, _FLOOR_COLOURS[rng.integers(len(_FLOOR_COLOURS))], 12)
    canvas.rectangle(0, floor_y, width, height, floor)
    for _ in range(rng.integers(0, 4)):  # floor seams
        y = rng.uniform(floor_y, height)
        canvas.line([(0, y), (width, y + rng.uniform(-5, 5))], _shade(floor, 0.8), 1)
    for _ in range(rng.integers(1, 6)):
        kind = rng.integers(4)
        x = rng.uniform(0, width)
        colour = _jitter(rng, rng.choice([(30, 30, 30), (60, 60, 65), (150, 30, 30), (30, 60, 150), (170, 120, 70)]), 10)
        if kind == 0:  # weight plate standing on the floor
            r = rng.uniform(0.05, 0.14) * height
            canvas.ellipse((x, floor_y - r * 0.9), r, r, colour, label=None)
            canvas.ellipse((x, floor_y - r * 0.9), r * 0.2, r * 0.2, _shade(colour, 1.6), label=None)
        elif kind == 1:  # dumbbell rack
            y = floor_y - rng.uniform(0.1, 0.3) * height
            w = rng.uniform(0.2, 0.5) * width
            canvas.rectangle(x, y, x + w, y + 0.02 * height, (90, 90, 95))
            for k in range(int(rng.integers(3, 7))):
                cx = x + (k + 0.5) * w / 6
                canvas.ellipse((cx, y - 0.02 * height), 0.02 * height, 0.025 * height, colour, label=None)
        elif kind == 2:  # bench
            y = floor_y - rng.uniform(0.1, 0.2) * height
            w = rng.uniform(0.2, 0.45) * width
            canvas.rectangle(x, y, x + w, y + 0.04 * height, colour)
            canvas.rectangle(x + 0.1 * w, y, x + 0.14 * w, floor_y, (80, 80, 80))
            canvas.rectangle(x + 0.86 * w, y, x + 0.9 * w, floor_y, (80, 80, 80))
        else:  # barbell on a rack
            y = rng.uniform(0.3, 0.7) * floor_y
            canvas.line([(x - 0.4 * width, y), (x + 0.4 * width, y)], (150, 150, 155), 0.012 * height)
            for end in (-0.35, 0.35):
                canvas.rectangle(x + end * width - 0.015 * width, y - 0.08 * height,
                                 x + end * width + 0.015 * width, y + 0.08 * height, colour)
    return floor_y


def _camera(rng: np.random.Generator, image: Image.Image) -> Image.Image:
    """Exposure, colour cast, vignetting, blur, sensor noise and JPEG compression."""
    arr = np.asarray(image, dtype=np.float32)
    arr = arr * rng.uniform(0.7, 1.25) + rng.uniform(-25, 25)
    arr *= rng.uniform(0.9, 1.1, 3)[None, None, :]
    h, w = arr.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2
    arr *= (1.0 - rng.uniform(0, 0.6) * r2)[..., None]
    arr += rng.normal(0, rng.uniform(0, 6), arr.shape)
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        out = out.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.9)))
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=int(rng.integers(55, 95)))
        out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return out


def _draw_scene(canvas: _Canvas, rng: np.random.Generator, scene: tuple[float, float]) -> float:
    """Gym and one or two people in scene units; returns the main person's height."""
    scene_h, scene_w = scene
    floor_y = _draw_gym(canvas, rng, scene_h, scene_w)
    n_people = 1 if rng.random() < 0.7 else 2
    main_x = rng.uniform(0.3, 0.7) * scene_w
    for k in range(n_people):
        feet_y = floor_y + rng.uniform(0.0, 0.08) * scene_h
        if k < n_people - 1:  # someone beside or behind the main person, drawn first
            person_height = min(rng.uniform(0.45, 0.9) * scene_h, 0.95 * feet_y)
            feet_x = main_x + rng.choice([-1, 1]) * rng.uniform(0.12, 0.35) * scene_w
        else:
            person_height = min(rng.uniform(0.6, 0.95) * scene_h, 0.95 * feet_y)
            feet_x = main_x
        view = "side" if rng.random() < 0.7 else "front"
        _draw_person(canvas, rng, _random_person(rng, person_height), feet_x, feet_y, view)
    return person_height


def _choose_window(rng: np.random.Generator, preview: _Canvas, person_height: float,
                   scene: tuple[float, float], aspect: float) -> tuple[float, float, float]:
    """Scene window (x0, y0, height) of the photo: mostly a close-up of one muscle.

    85 % of close-ups centre on an activated muscle (each class present equally likely), the
    rest on a relaxed one, so a model sees flexed and relaxed limbs at the same scale; 10 % of
    photos show the whole scene (full-body shots, small muscles).
    """
    scene_h, scene_w = scene
    if rng.random() < 0.1:
        return 0.0, 0.0, scene_h
    mask = np.asarray(preview.mask)
    present = [c for c in (BICEPS, TRICEPS, CALF) if np.any(mask == c)]
    relaxed = [p for p, label in preview.bellies if label == 0]
    if present and (rng.random() < 0.85 or not relaxed):
        ys, xs = np.nonzero(mask == rng.choice(present))
        i = rng.integers(len(xs))
        focus = (np.array([xs[i], ys[i]]) + 0.5) / preview.scale
    elif relaxed:
        focus = relaxed[rng.integers(len(relaxed))]
    else:
        focus = np.array([rng.uniform(0, scene_w), rng.uniform(0, scene_h)])
    window_h = min(person_height * rng.uniform(0.16, 0.38), scene_h, scene_w / aspect)
    window_w = window_h * aspect
    x0 = float(np.clip(focus[0] - window_w * rng.uniform(0.25, 0.75), 0, scene_w - window_w))
    y0 = float(np.clip(focus[1] - window_h * rng.uniform(0.25, 0.75), 0, scene_h - window_h))
    return x0, y0, window_h


def make_photo(rng: np.random.Generator, size: tuple[int, int] = (256, 256)) -> tuple[np.ndarray, np.ndarray]:
    """Draw one gym photo. ``size`` is (height, width) in pixels.

    The scene is drawn twice from the same random state: as a thumbnail, to find where the
    muscles are, then the chosen window (usually a close-up of one arm or calf) at the photo's
    resolution. Returns ``image`` (H, W, 3) uint8 and ``mask`` (H, W) uint8 (0 background,
    1 activated biceps, 2 activated triceps, 3 activated calf).
    """
    height, width = size
    aspect = width / height
    scene = (1000.0, 1000.0 * aspect)
    state = rng.bit_generator.state
    preview_scale = 192 / scene[0]
    preview = _Canvas(int(scene[0] * preview_scale), int(scene[1] * preview_scale), preview_scale)
    person_height = _draw_scene(preview, rng, scene)
    x0, y0, window_h = _choose_window(rng, preview, person_height, scene, aspect)
    after = rng.bit_generator.state
    rng.bit_generator.state = state  # replay the same scene in the chosen window
    canvas = _Canvas(height * _SUPERSAMPLE, width * _SUPERSAMPLE, height * _SUPERSAMPLE / window_h, (x0, y0))
    _draw_scene(canvas, rng, scene)
    rng.bit_generator.state = after
    image = canvas.image.resize((width, height), Image.LANCZOS)
    mask = canvas.mask.resize((width, height), Image.NEAREST)
    return np.asarray(_camera(rng, image)), np.asarray(mask, dtype=np.uint8)


#: Class names as a Roboflow export would write them (alphabetical pixel values, as Roboflow does),
#: so that loading one exercises the ``_classes.csv`` mapping.
ROBOFLOW_CLASSES = {0: "background", 1: "Biceps-activated", 2: "Calf-activated", 3: "Triceps-activated"}
_ROBOFLOW_FROM_OURS = np.array([0, 1, 3, 2], dtype=np.uint8)  # our class index -> Roboflow pixel value


def write_dataset(root: str | Path, counts: dict[str, int], layout: str = "seed", size: tuple[int, int] = (256, 256),
                  seed: int = 0) -> Path:
    """Write a synthetic dataset; ``counts`` maps split name -> number of photos.

    ``layout="seed"``: ``root/<split>/images/NAME.png`` and ``root/<split>/masks/NAME.png`` (class
    indices). ``layout="roboflow"``: ``root/<split>/NAME_jpg.rf.HASH.jpg`` beside
    ``NAME_jpg.rf.HASH_mask.png`` and ``_classes.csv`` (Roboflow's semantic-segmentation export;
    use split names ``train``/``valid``/``test`` there).
    """
    if layout not in ("seed", "roboflow"):
        raise ValueError(f"layout must be 'seed' or 'roboflow', not {layout!r}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        split_dir = root / split
        if layout == "seed":
            (split_dir / "images").mkdir(parents=True, exist_ok=True)
            (split_dir / "masks").mkdir(parents=True, exist_ok=True)
        else:
            split_dir.mkdir(parents=True, exist_ok=True)
            with open(split_dir / "_classes.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["Pixel Value", " Class"])
                for value, name in ROBOFLOW_CLASSES.items():
                    writer.writerow([value, f" {name}"])
        for i in range(n):
            image, mask = make_photo(rng, size)
            name = f"{split}_{i:04d}"
            if layout == "seed":
                Image.fromarray(image).save(split_dir / "images" / f"{name}.png")
                Image.fromarray(mask).save(split_dir / "masks" / f"{name}.png")
            else:
                stem = f"{name}_jpg.rf.{rng.integers(16 ** 8):08x}"
                Image.fromarray(image).save(split_dir / f"{stem}.jpg", quality=92)
                Image.fromarray(_ROBOFLOW_FROM_OURS[mask]).save(split_dir / f"{stem}_mask.png")
    return root


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic gym-photo dataset with activated-muscle masks.")
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="square side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=("seed", "roboflow"), default="seed")
    args = parser.parse_args(argv)
    val_name = "val" if args.layout == "seed" else "valid"
    counts = {k: v for k, v in (("train", args.train), (val_name, args.val), ("test", args.test)) if v > 0}
    write_dataset(args.out, counts, layout=args.layout, size=(args.size, args.size), seed=args.seed)
    print(f"wrote {sum(counts.values())} synthetic photos to {args.out} ({', '.join(f'{k}: {v}' for k, v in counts.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

__all__ = ["make_photo", "write_dataset", "ROBOFLOW_CLASSES", "CLASS_NAMES"]
