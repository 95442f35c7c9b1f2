"""Procedural object images whose every visual attribute is known.

A class is a shape family × texture family (× a variant once classes outnumber the pairs); an
image draws its colours, position, size and rotation at random and records them, so decoders
and generators can be scored on fine-grained attributes rather than on the label alone.

Conventions: ``x`` and ``y`` are the object centre in [0, 1] image coordinates (``x`` = column,
``y`` = row, from the top-left corner); ``scale`` is the object's circumradius as a fraction of
the image side (every shape fits inside that circle, so the object never leaves the image);
``rotation`` is in radians (it turns the shape; textures stay aligned with the image). The
object's main colour covers at least two thirds of its area and the texture colour is at least
90 degrees of hue away, so ``hue`` is the dominant hue in the pixels; the background is a grey
(saturation <= 0.1) that never competes with it.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np

SHAPES = ("disk", "square", "triangle", "pentagon", "hexagon", "star5", "ring", "cross", "ellipse", "star4")
TEXTURES = ("solid", "hstripes", "vstripes", "dstripes", "checker", "dots")

TEXTURE_CYCLES = 2.5      # texture periods per object radius (odd variants: 0.6x)
TEXTURE_DUTY = 1 / 3      # stripe width as a fraction of the period: the main colour stays dominant
SUPERSAMPLE = 2           # render at 2x and average: anti-aliased edges without a rasteriser
SATURATION_RANGE = (0.5, 1.0)  # of the main colour; the EEG model centres its effects on these
BRIGHTNESS_RANGE = (0.5, 1.0)

# (points, inner radius) of the star-outlined shapes: a regular polygon is a star whose inner
# vertices sit on the edge midpoints, at cos(pi / n).
_STARS = {"triangle": (3, math.cos(math.pi / 3)), "square": (4, math.cos(math.pi / 4)),
          "pentagon": (5, math.cos(math.pi / 5)), "hexagon": (6, math.cos(math.pi / 6)),
          "star5": (5, 0.45), "star4": (4, 0.4)}


def class_recipe(label: int) -> tuple[str, str, int]:
    """(shape, texture, variant) of class ``label``.

    Consecutive classes change shape *and* texture (texture index = label // n_shapes +
    label % n_shapes), so even a 10-class corpus mixes textures; the first
    ``len(SHAPES) * len(TEXTURES)`` classes are all distinct pairs, later ones add a variant.
    """
    n_shapes, n_textures = len(SHAPES), len(TEXTURES)
    shape = label % n_shapes
    texture = (label // n_shapes + shape) % n_textures
    return SHAPES[shape], TEXTURES[texture], label // (n_shapes * n_textures)


def class_name(label: int) -> str:
    shape, texture, variant = class_recipe(label)
    return f"{shape}-{texture}" + (f"-v{variant}" if variant else "")


def draw_image_spec(rng: np.random.Generator) -> tuple[dict, tuple[float, float, float]]:
    """Recorded attributes (python floats) and the background HSV colour of one image."""
    scale = rng.uniform(0.16, 0.3)
    attributes = {
        "hue": rng.uniform(0.0, 1.0),
        "saturation": rng.uniform(*SATURATION_RANGE),
        "brightness": rng.uniform(*BRIGHTNESS_RANGE),
        "hue2": 0.0,  # set below, relative to hue
        "saturation2": rng.uniform(0.4, 1.0),
        "brightness2": rng.uniform(0.4, 1.0),
        "x": rng.uniform(scale, 1.0 - scale),
        "y": rng.uniform(scale, 1.0 - scale),
        "scale": scale,
        "rotation": rng.uniform(0.0, 2 * math.pi),
    }
    attributes["hue2"] = (attributes["hue"] + rng.uniform(0.25, 0.75)) % 1.0
    background = (rng.uniform(0.0, 1.0), rng.uniform(0.0, 0.1), rng.uniform(0.3, 0.7))
    return {k: float(v) for k, v in attributes.items()}, tuple(float(v) for v in background)


def _star_mask(u: np.ndarray, v: np.ndarray, points: int, inner: float) -> np.ndarray:
    """Inside a star with ``points`` outer vertices on the unit circle (one on +u) and inner
    vertices at radius ``inner``: fold the angle into one half-sector and test the edge."""
    sector = math.pi / points
    angle = 2 * sector * _frac(np.arctan2(v, u) / (2 * sector))
    angle = np.minimum(angle, 2 * sector - angle)
    radius = np.sqrt(u * u + v * v)
    px, py = radius * np.cos(angle), radius * np.sin(angle)
    dx, dy = inner * math.cos(sector) - 1.0, inner * math.sin(sector)
    return dx * py - dy * (px - 1.0) >= 0


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape in _STARS:
        return _star_mask(u, v, *_STARS[shape])
    r2 = u * u + v * v
    if shape == "disk":
        return r2 <= 1.0
    if shape == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if shape == "ellipse":
        return u * u + (v / 0.55) ** 2 <= 1.0
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) | (av <= 0.3)) & (np.maximum(au, av) <= 0.9)
    raise ValueError(f"unknown shape {shape!r}")


def _frac(x: np.ndarray) -> np.ndarray:
    """x mod 1 (np.mod is an order of magnitude slower for floats)."""
    return x - np.floor(x)


def _texture_mask(texture: str, u: np.ndarray, v: np.ndarray, cycles: float) -> np.ndarray:
    """Where the second colour goes (broadcastable against ``u`` and ``v``); every texture covers
    about a third of the object or less."""
    if texture == "solid":
        return np.zeros((), dtype=bool)
    su, sv = cycles * u + 0.25, cycles * v + 0.25  # phase offset: the centre is not on an edge
    if texture == "hstripes":
        return _frac(sv) < TEXTURE_DUTY
    if texture == "vstripes":
        return _frac(su) < TEXTURE_DUTY
    if texture == "dstripes":
        return _frac((su + sv) / math.sqrt(2)) < TEXTURE_DUTY
    cell_u, cell_v = np.floor(su), np.floor(sv)
    fu, fv = su - cell_u - 0.5, sv - cell_v - 0.5  # position within the cell, from its centre
    if texture == "checker":  # inset squares on alternate cells: 32% coverage
        alternate = _frac((cell_u + cell_v) * 0.5) < 0.25
        return alternate & (np.abs(fu) < 0.4) & (np.abs(fv) < 0.4)
    if texture == "dots":  # 28% coverage
        return fu * fu + fv * fv < 0.3 ** 2
    raise ValueError(f"unknown texture {texture!r}")


def render_image(label: int, attributes: dict, background: tuple, size: int) -> np.ndarray:
    """The (size, size, 3) uint8 image of one object of class ``label``.

    Variant ``k`` squashes the shape along its own axis by ``0.85 ** k``; odd variants also have a
    coarser texture (0.6x: finer would alias at 64 px).
    """
    shape, texture, variant = class_recipe(label)
    n = size * SUPERSAMPLE
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n
    dx = (grid[None, :] - attributes["x"]) / attributes["scale"]  # (1, n): offsets in object radii
    dy = (grid[:, None] - attributes["y"]) / attributes["scale"]  # (n, 1)
    cos_r, sin_r = math.cos(attributes["rotation"]), math.sin(attributes["rotation"])
    u = cos_r * dx + sin_r * dy  # object frame: the image rotated by -rotation
    v = (cos_r * dy - sin_r * dx) / 0.85 ** variant
    inside = _shape_mask(shape, u, v)
    # Textures live in the image frame, so "hstripes" stay horizontal and differ from "vstripes"
    # even on a disk.
    textured = _texture_mask(texture, dx, dy, TEXTURE_CYCLES * (0.6 if variant % 2 else 1.0))
    main_rgb, second_rgb, background_rgb = (
        np.array(colorsys.hsv_to_rgb(*hsv), dtype=np.float32) * 255
        for hsv in ((attributes["hue"], attributes["saturation"], attributes["brightness"]),
                    (attributes["hue2"], attributes["saturation2"], attributes["brightness2"]),
                    background))
    main_cover = _coverage(inside & ~textured, size)
    second_cover = _coverage(inside & textured, size)
    pixels = (background_rgb + main_cover[..., None] * (main_rgb - background_rgb)
              + second_cover[..., None] * (second_rgb - background_rgb))
    return np.rint(pixels).astype(np.uint8)


def _coverage(mask: np.ndarray, size: int) -> np.ndarray:
    """Fraction of each output pixel's SUPERSAMPLE x SUPERSAMPLE sub-pixels that are in ``mask``
    (summing strided views is several times faster than a reshape-reduce here)."""
    counts = sum(mask[i::SUPERSAMPLE, j::SUPERSAMPLE].view(np.uint8)
                 for i in range(SUPERSAMPLE) for j in range(SUPERSAMPLE))
    return counts.astype(np.float32) * (1.0 / SUPERSAMPLE ** 2)
