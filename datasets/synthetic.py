"""A synthetic fine-grained benchmark ("synthetic birds"), generated from a seed (`dataset: synthetic`).

Layout (the CUB layout, read by the CUB loader): each generation has its own folder, named by its parameters,
`<source_path>/synthetic/seed<S>-<C>x<N>-<P>px/` (seed S, C classes of N images of P x P pixels), holding
`images/NNN.<name>/img_KKKK.jpg` with one folder per class plus `synthetic.json` (the generation parameters and
each class's attributes). Runs of different seeds or sizes therefore never share (or replace) each other's images,
also when they train at the same time. The first half of the classes (by number) is `train`, the second half `test`.

Every bird shares one body plan (tail, body, wing, head, eye, beak, legs). A class is a combination of
part attributes: beak shape, tail shape, wing pattern and its tone, crest, head marking, breast patch,
build, and a colour scheme (body, wing, accent colours). Colour schemes are shared by about four
classes each and all colours also appear in the background clutter, so colour statistics alone do not
separate the classes; any two classes differ in at least two visible attributes. Test classes are new
combinations of attribute values that also occur in training classes, so features learnt on the training
half transfer. Within a class, images vary in pose (rotation, mirror, scale, position), proportions,
wing angle, colour jitter, background (colour, clutter, perch, occluding twigs), brightness and noise.

Generation is deterministic: image k of class c is drawn from a generator seeded with (seed, c, k), so
the bytes do not depend on the number of worker processes. It runs once; later calls reuse the folder
while `synthetic.json` records the same parameters and generator version, and regenerate it otherwise (an older
generator version). A benchmark in the earlier layout (`images/` and `synthetic.json` directly in `synthetic/`) is
generated data and is removed when a generation is written.
A generation is written into a temporary sibling folder and renamed into place only when complete, so
an interrupted run is never taken for a finished one.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch.distributed
from PIL import Image, ImageDraw

from datasets.base import SplitFiles
from datasets.cub200 import load_numbered_class_folders
from utilities.errors import UserError

GENERATOR_VERSION = 1
METADATA_FILE = "synthetic.json"

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 45, 40),
    "orange": (235, 135, 35),
    "yellow": (230, 205, 55),
    "green": (60, 155, 65),
    "blue": (50, 95, 205),
    "purple": (130, 65, 165),
    "brown": (125, 80, 45),
    "gray": (140, 140, 145),
}
TONES = {"dark": (25, 25, 30), "light": (245, 245, 235)}
BEAK_COLOURS = ((215, 170, 40), (40, 40, 40), (150, 150, 150))

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "beak": ("short", "long", "hooked", "thick"),
    "tail": ("fan", "forked", "pointed", "square"),
    "wing_pattern": ("plain", "stripes", "dots", "bar"),
    "pattern_tone": ("dark", "light"),
    "crest": ("none", "spiky", "plume"),
    "head": ("plain", "cap", "eye_stripe"),
    "breast": ("plain", "patch"),
    "build": ("slim", "plump"),
}
CLASSES_PER_SCHEME = 4
MAX_CLASSES = 1000
"""More classes would exhaust the colour schemes (8 x 7 x 8) and slow down the class design."""


@dataclass(frozen=True)
class BirdClass:
    """The attributes that define one class (colours are palette names)."""

    body: str
    wing: str
    accent: str
    beak: str
    tail: str
    wing_pattern: str
    pattern_tone: str
    crest: str
    head: str
    breast: str
    build: str

    def visible(self) -> tuple[str, ...]:
        """Attributes as they show in an image: an accent or tone that is drawn nowhere is blanked."""
        accent_drawn = self.crest != "none" or self.head == "cap" or self.breast == "patch"
        return (
            self.body,
            self.wing,
            self.accent if accent_drawn else "-",
            self.beak,
            self.tail,
            self.wing_pattern,
            self.pattern_tone if self.wing_pattern != "plain" else "-",
            self.crest,
            self.head,
            self.breast,
            self.build,
        )

    @property
    def name(self) -> str:
        return f"{self.body}_{self.wing}_{self.beak}_{self.tail}_{self.wing_pattern}"


def design_classes(n_classes: int, seed: int) -> list[BirdClass]:
    """Draw `n_classes` attribute combinations; classes sharing a colour scheme differ in their parts."""
    rng = np.random.default_rng([seed, 0x5EED])
    colours = list(PALETTE)
    n_schemes = max(2, math.ceil(n_classes / CLASSES_PER_SCHEME))
    schemes: list[tuple[str, str, str]] = []
    while len(schemes) < n_schemes:
        body, wing, accent = (colours[i] for i in rng.integers(0, len(colours), size=3))
        if body != wing and (body, wing, accent) not in schemes:
            schemes.append((body, wing, accent))
    scheme_of_class = rng.permutation(np.arange(n_classes) % n_schemes)
    classes: list[BirdClass] = []
    for scheme_index in scheme_of_class:
        classes.append(_new_class(schemes[scheme_index], classes, rng))
    return classes


def _new_class(scheme: tuple[str, str, str], taken: list[BirdClass], rng: np.random.Generator) -> BirdClass:
    """A random class of `scheme` that differs from every taken class in >= 2 visible attributes."""
    taken_visible = [np.array(c.visible()) for c in taken]
    for attempt in range(20000):
        parts = {key: values[rng.integers(len(values))] for key, values in ATTRIBUTES.items()}
        candidate = BirdClass(*scheme, **parts)
        visible = np.array(candidate.visible())
        required = 2 if attempt < 10000 else 1
        if all(np.count_nonzero(visible != other) >= required for other in taken_visible):
            return candidate
    raise ValueError("too many synthetic classes for the attribute space")


# ----------------------------------------------------------------------------------------------- drawing


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float = 0.0, n: int = 24) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = a * np.cos(t), b * np.sin(t)
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


def _place(points: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0], points[:, 1]
    return np.stack([cx + c * x - s * y, cy + s * x + c * y], axis=1)


BEAKS = {
    "short": np.array([[0, 0.1], [0, -0.1], [0.3, 0.0]]),
    "long": np.array([[0, 0.07], [0, -0.07], [0.7, -0.03]]),
    "hooked": np.array([[0, 0.12], [0, -0.1], [0.25, 0.05], [0.38, -0.12], [0.26, -0.08], [0.2, -0.1]]),
    "thick": np.array([[0, 0.2], [0, -0.2], [0.36, 0.0]]),
}
TAILS = {
    "fan": np.array([[0, 0.15], [0, -0.15], [-0.7, -0.5], [-0.82, 0.0], [-0.7, 0.5]]),
    "forked": np.array([[0, 0.12], [0, -0.12], [-0.85, -0.45], [-0.5, 0.0], [-0.85, 0.45]]),
    "pointed": np.array([[0, 0.12], [0, -0.12], [-1.1, -0.03], [-1.1, 0.03]]),
    "square": np.array([[0, 0.2], [0, -0.2], [-0.5, -0.2], [-0.5, 0.2]]),
}
BUILDS = {"slim": (1.05, 0.45), "plump": (0.9, 0.62)}


class _Canvas:
    """Draws bird-frame polygons (x forward, y up, body at the origin) through one similarity transform."""

    def __init__(self, image: Image.Image, centre: tuple[float, float], scale: float, angle: float, mirror: bool):
        self.draw = ImageDraw.Draw(image)
        self.centre, self.scale, self.mirror = centre, scale, mirror
        self.cos, self.sin = math.cos(angle), math.sin(angle)

    def pixels(self, points: np.ndarray) -> list[tuple[float, float]]:
        x = -points[:, 0] if self.mirror else points[:, 0]
        y = -points[:, 1]  # image rows grow downwards
        px = self.centre[0] + self.scale * (self.cos * x - self.sin * y)
        py = self.centre[1] + self.scale * (self.sin * x + self.cos * y)
        return list(zip(px.tolist(), py.tolist()))

    def polygon(self, points: np.ndarray, colour: tuple[int, int, int]) -> None:
        self.draw.polygon(self.pixels(points), fill=colour)

    def line(self, points: np.ndarray, colour: tuple[int, int, int], width: float) -> None:
        self.draw.line(self.pixels(points), fill=colour, width=max(1, round(width * self.scale)))


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator, amount: float = 0.08) -> tuple[int, ...]:
    factors = 1 + rng.uniform(-amount, amount, size=3)
    return tuple(int(v) for v in np.clip(np.asarray(colour) * factors, 0, 255))


def _draw_background(image: Image.Image, rng: np.random.Generator) -> None:
    size = image.size[0]
    draw = ImageDraw.Draw(image)
    palette = list(PALETTE.values())
    for _ in range(int(rng.integers(8, 16))):
        colour = palette[rng.integers(len(palette))] if rng.random() < 0.5 else tuple(rng.integers(0, 256, 3))
        colour = tuple(int(v) for v in np.clip(np.asarray(colour) * rng.uniform(0.6, 1.1), 0, 255))
        x, y = rng.uniform(-0.1, 1.1, size=2) * size
        w, h = rng.uniform(0.05, 0.35, size=2) * size
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse([x - w / 2, y - h / 2, x + w / 2, y + h / 2], fill=colour)
        elif kind == 1:
            draw.rectangle([x - w / 2, y - h / 2, x + w / 2, y + h / 2], fill=colour)
        else:
            x2, y2 = rng.uniform(0, 1, size=2) * size
            draw.line([(x, y), (x2, y2)], fill=colour, width=max(1, int(size * rng.uniform(0.01, 0.04))))


def _draw_twigs(image: Image.Image, rng: np.random.Generator, count: int) -> None:
    size = image.size[0]
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        colour = _jitter((95, 70, 45), rng, 0.25)
        a, b = rng.uniform(0, 1, size=2) * size, rng.uniform(0, 1, size=2) * size
        draw.line([tuple(a), tuple(b)], fill=colour, width=max(1, int(size * 0.012)))


def _draw_wing_pattern(canvas: _Canvas, bird: BirdClass, wing: tuple, rng: np.random.Generator) -> None:
    cx, cy, a, b, angle = wing
    tone = _jitter(TONES[bird.pattern_tone], rng, 0.05)
    if bird.wing_pattern == "stripes":
        for t in np.linspace(-0.55, 0.55, 4) * a:
            half = 0.07 * a
            ys = [b * 0.92 * math.sqrt(max(0.0, 1 - (x / a) ** 2)) for x in (t - half, t + half)]
            band = np.array([[t - half, -ys[0]], [t + half, -ys[1]], [t + half, ys[1]], [t - half, ys[0]]])
            canvas.polygon(_place(band, cx, cy, angle), tone)
    elif bird.wing_pattern == "dots":
        for x, y in ((-0.5, 0.25), (-0.1, 0.3), (0.3, 0.25), (-0.35, -0.3), (0.05, -0.25), (0.45, -0.2)):
            canvas.polygon(_place(_ellipse(x * a, y * b * 1.4, 0.1, 0.1, n=10), cx, cy, angle), tone)
    elif bird.wing_pattern == "bar":
        xs = np.linspace(-0.85, 0.85, 9) * a
        top = np.minimum(0.2 * b + 0.18, b * np.sqrt(np.clip(1 - (xs / a) ** 2, 0, 1)))
        band = np.concatenate([np.stack([xs, top], 1), np.stack([xs[::-1], np.full(9, 0.2 * b - 0.05)], 1)])
        canvas.polygon(_place(band, cx, cy, angle), tone)


def _draw_bird(canvas: _Canvas, bird: BirdClass, rng: np.random.Generator) -> None:
    body_colour = _jitter(PALETTE[bird.body], rng)
    wing_colour = _jitter(PALETTE[bird.wing], rng)
    accent = _jitter(PALETTE[bird.accent], rng)
    dark = (20, 20, 25)
    a, b = (v * rng.uniform(0.92, 1.08) for v in BUILDS[bird.build])
    # legs and perch-facing parts first, then tail, body, wing, head
    for x in (-0.15, 0.2):
        canvas.line(np.array([[x, -b * 0.8], [x + 0.05, -b - 0.45]]), (70, 60, 40), 0.05)
    tail_angle = rng.uniform(-0.25, 0.25)
    canvas.polygon(_place(TAILS[bird.tail], -a * 0.85, 0.05, tail_angle), wing_colour)
    canvas.polygon(_ellipse(0, 0, a, b), body_colour)
    if bird.breast == "patch":
        canvas.polygon(_ellipse(a * 0.5, -b * 0.25, 0.35, b * 0.5, angle=-0.3), accent)
    wing = (-0.15 * a, 0.08, 0.72 * a, 0.34, rng.uniform(-0.25, 0.15))
    canvas.polygon(_ellipse(*wing[:4], angle=wing[4]), wing_colour)
    _draw_wing_pattern(canvas, bird, wing, rng)
    head_x, head_y, radius = a * 0.88, b * 0.75 + rng.uniform(-0.05, 0.08), 0.36
    beak_colour = BEAK_COLOURS[ATTRIBUTES["beak"].index(bird.beak) % len(BEAK_COLOURS)]
    beak_angle = rng.uniform(-0.2, 0.15)
    canvas.polygon(_place(BEAKS[bird.beak], head_x + radius * 0.9, head_y, beak_angle), beak_colour)
    if bird.crest == "spiky":
        for angle in (1.2, 1.65, 2.1):
            spike = np.array([[-0.09, 0], [0.09, 0], [0, 0.3]])
            base_x, base_y = head_x + radius * math.cos(angle), head_y + radius * math.sin(angle)
            canvas.polygon(_place(spike, base_x, base_y, angle - math.pi / 2), accent)
    elif bird.crest == "plume":
        plume = np.array([[0.0, 0.05], [0.0, -0.05], [-0.55, 0.25], [-0.6, 0.32]])
        canvas.polygon(_place(plume, head_x - radius * 0.3, head_y + radius * 0.85, 0.0), accent)
    canvas.polygon(_ellipse(head_x, head_y, radius, radius), body_colour)
    if bird.head == "cap":
        t = np.linspace(0.15, np.pi - 0.15, 12)
        cap = np.stack([head_x + radius * np.cos(t), head_y + radius * np.sin(t)], 1)
        canvas.polygon(cap, accent)
    eye_x, eye_y = head_x + radius * 0.35, head_y + radius * 0.15
    if bird.head == "eye_stripe":
        stripe = np.array([[-radius * 1.0, 0.07], [radius * 0.9, 0.07], [radius * 0.9, -0.07], [-radius, -0.07]])
        canvas.polygon(_place(stripe, head_x, eye_y, 0.0), dark)
    canvas.polygon(_ellipse(eye_x, eye_y, 0.075, 0.075, n=10), (250, 250, 250))
    canvas.polygon(_ellipse(eye_x, eye_y, 0.045, 0.045, n=8), dark)


def render_bird(bird: BirdClass, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of `bird` (RGB, `size` x `size`) with random pose, background, lighting and noise."""
    big = 2 * size  # draw at twice the size, then average 2x2 blocks: cheap anti-aliasing
    background = tuple(int(v) for v in rng.integers(30, 226, size=3))
    image = Image.new("RGB", (big, big), background)
    _draw_background(image, rng)
    scale = big * rng.uniform(0.17, 0.26)
    extent = 1.4 * scale
    centre = tuple(rng.uniform(extent, big - extent, size=2)) if big > 2 * extent else (big / 2, big / 2)
    canvas = _Canvas(image, centre, scale, rng.uniform(-0.45, 0.45), bool(rng.integers(2)))
    if rng.random() < 0.6:  # perch under the feet
        perch = np.array([[-1.6, -1.05], [1.6, -1.05 + rng.uniform(-0.3, 0.3)]])
        canvas.line(perch, _jitter((100, 70, 40), rng, 0.25), 0.1)
    _draw_bird(canvas, bird, rng)
    _draw_twigs(image, rng, int(rng.integers(0, 3)))
    image = image.reduce(2)
    pixels = np.asarray(image, dtype=np.float32)
    gain, offset = rng.uniform(0.75, 1.25), rng.uniform(-20, 20)
    pixels = pixels * gain + offset + rng.normal(0, rng.uniform(2, 10), size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


# -------------------------------------------------------------------------------------------- generation


def _class_folder(index: int, bird: BirdClass, n_classes: int) -> str:
    width = max(3, len(str(n_classes)))
    return f"{index + 1:0{width}d}.{bird.name}"


def _render_class(task: tuple[int, BirdClass, str, int, int, int]) -> None:
    index, bird, folder, images_per_class, size, seed = task
    os.makedirs(folder, exist_ok=True)
    for k in range(images_per_class):
        rng = np.random.default_rng([seed, index, k])
        render_bird(bird, size, rng).save(os.path.join(folder, f"img_{k:04d}.jpg"), quality=90)


def _parameters(n_classes: int, images_per_class: int, image_size: int, seed: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "n_classes": n_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
        "seed": seed,
    }


def _read_parameters(folder: Path) -> dict | None:
    try:
        with open(folder / METADATA_FILE, encoding="utf-8") as handle:
            return json.load(handle)["parameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _check_parameters(n_classes: int, images_per_class: int, image_size: int) -> None:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or not 2 <= n_classes <= MAX_CLASSES:
        raise UserError(f"synthetic_classes: expected an integer in [2, {MAX_CLASSES}], got {n_classes!r}")
    if isinstance(images_per_class, bool) or not isinstance(images_per_class, int) or images_per_class < 2:
        raise UserError(f"synthetic_images_per_class: expected an integer >= 2, got {images_per_class!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise UserError(f"synthetic_image_size: expected an integer >= 16, got {image_size!r}")


def _start_method() -> str:
    """fork (quick), except in a process of a torch.distributed group: its communication threads may hold a lock
    at the fork, and the forked child then waits on it forever (seen with 2 SLURM tasks under gloo)."""
    forking = "fork" in multiprocessing.get_all_start_methods()
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    return "fork" if forking and not distributed else "spawn"


def _default_sigterm() -> None:
    """A pool worker ends on SIGTERM, which the pool sends its workers when it closes: a forked worker would
    otherwise keep its parent's handler, e.g. submitit's in a SLURM job, which ignores it, and the pool would wait
    for it forever."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def generate(target: Path, n_classes: int, images_per_class: int, image_size: int, seed: int, workers: int) -> None:
    """Write a complete benchmark into the (new) folder `target`, metadata last."""
    classes = design_classes(n_classes, seed)
    tasks = [
        (i, bird, str(target / "images" / _class_folder(i, bird, n_classes)), images_per_class, image_size, seed)
        for i, bird in enumerate(classes)
    ]
    workers = max(1, min(workers, len(tasks)))
    if workers == 1:
        for task in tasks:
            _render_class(task)
    else:
        with multiprocessing.get_context(_start_method()).Pool(workers, initializer=_default_sigterm) as pool:
            pool.map(_render_class, tasks, chunksize=1)
    metadata = {
        "parameters": _parameters(n_classes, images_per_class, image_size, seed),
        "classes": [{"folder": Path(task[2]).name, **bird.__dict__} for task, bird in zip(tasks, classes)],
    }
    with open(target / METADATA_FILE, "w", encoding="utf-8") as handle:
        json.dump(metadata, handle, indent=1)


GENERATED_ENTRIES = {"images", METADATA_FILE}
"""What a generation folder holds (and, in the earlier layout, `source_path/synthetic` itself)."""
GENERATION_NAME = re.compile(r"seed-?\d+-\d+x\d+-\d+px")
"""The names of generation folders in `source_path/synthetic`."""


def generation_folder(root: Path, n_classes: int, images_per_class: int, image_size: int, seed: int) -> Path:
    """The folder of one generation: `root/synthetic/seed<S>-<C>x<N>-<P>px`."""
    return Path(root) / "synthetic" / f"seed{seed}-{n_classes}x{images_per_class}-{image_size}px"


def _refuse_unexpected(folder: Path, allowed: Callable[[str], object]) -> None:
    """A `UserError` when `folder` holds an entry that `allowed(name)` rejects (user data is never deleted)."""
    if not folder.exists():
        return
    unexpected = sorted(n for n in os.listdir(folder) if not allowed(n)) if folder.is_dir() else [folder.name]
    if unexpected:
        raise UserError(
            f"synthetic: {folder} exists but does not look like a generated benchmark "
            f"(unexpected entries {unexpected[:3]}); move it away or choose another source_path"
        )


def _remove_earlier_layout(container: Path) -> None:
    """Delete a benchmark of the earlier layout (`images/` and `synthetic.json` directly in `container`)."""
    shutil.rmtree(container / "images", ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.remove(container / METADATA_FILE)


def ensure_synthetic(
    root: Path, n_classes: int, images_per_class: int, image_size: int, seed: int, workers: int | None = None
) -> Path:
    """Generate the benchmark of these parameters unless its folder already holds it; return that folder.

    `root` is the `source_path`; the folder is `generation_folder(root, ...)`. A folder of an older generator
    version (or an unfinished one without metadata) is replaced; a folder that holds anything besides `images/`
    and the metadata, or a `root/synthetic` that holds anything besides generation folders, is left alone and
    reported as a `UserError`, so user data is never deleted.
    """
    _check_parameters(n_classes, images_per_class, image_size)
    root = Path(root)
    folder = generation_folder(root, n_classes, images_per_class, image_size, seed)
    wanted = _parameters(n_classes, images_per_class, image_size, seed)
    if _read_parameters(folder) == wanted:
        return folder
    # source_path/synthetic: generation folders, or a benchmark of the earlier layout; a generation: its own files
    _refuse_unexpected(folder.parent, lambda name: name in GENERATED_ENTRIES or GENERATION_NAME.fullmatch(name))
    _refuse_unexpected(folder, lambda name: name in GENERATED_ENTRIES)
    root.mkdir(parents=True, exist_ok=True)
    temporary = root / f".synthetic.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate(temporary, n_classes, images_per_class, image_size, seed, workers or os.cpu_count() or 1)
        _remove_earlier_layout(folder.parent)
        folder.parent.mkdir(exist_ok=True)
        if folder.exists():
            if _read_parameters(folder) == wanted:  # another process finished first
                return folder
            shutil.rmtree(folder)
        try:
            os.replace(temporary, folder)
        except OSError:
            if _read_parameters(folder) != wanted:
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


def load_synthetic(folder: Path) -> dict[str, SplitFiles]:
    """Train/test files of a generated benchmark in `folder` (a `generation_folder`), CUB rules."""
    if _read_parameters(folder) is None:
        raise UserError(f"synthetic: {folder / METADATA_FILE} not found; the benchmark was not generated")
    return load_numbered_class_folders(folder / "images", "synthetic")
