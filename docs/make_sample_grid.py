"""Draws the pictures of the built-in synthetic faces shown in README and docs.

    python docs/make_sample_grid.py [--out docs/img]

writes
    synthface_emotions.png  one row per emotion: faces drawn by the label sampler (prototypes,
                            variants, partial and subtle expressions) on random people and poses,
                            each captioned with its labelled AUs, as the demo data set has them;
    synthface_aus.png       every rendered AU alone at full intensity on one person, plus the
                            one-sided contempt pair R12+R14.
Faces are the renderer's 112 px output without sensor noise (which keeps the PNGs small),
enlarged 2x without smoothing. Seeded: reruns give the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from facialr1_jax.data import expressions, synthface
from facialr1_jax.fea.emotions import EMOTIONS

FACE = 112
ZOOM = 2
CAPTION = 14
LABEL_WIDTH = 84
PER_ROW = 5


def _tile(image: Image.Image, caption: str) -> Image.Image:
    tile = Image.new("RGB", (FACE * ZOOM, FACE * ZOOM + CAPTION), "white")
    tile.paste(image.resize((FACE * ZOOM, FACE * ZOOM), Image.NEAREST), (0, CAPTION))
    ImageDraw.Draw(tile).text((3, 1), caption, fill="black")
    return tile


def emotion_grid(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    width = LABEL_WIDTH + PER_ROW * FACE * ZOOM
    height = len(EMOTIONS) * (FACE * ZOOM + CAPTION)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for row, emotion in enumerate(EMOTIONS):
        top = row * (FACE * ZOOM + CAPTION)
        draw.text((6, top + (FACE * ZOOM) // 2), emotion, fill="black")
        for column in range(PER_ROW):
            face = expressions.sample_expression_for(emotion, rng)
            image = synthface.render(
                face.intensities, int(rng.integers(2**31)), FACE, pose_seed=int(rng.integers(2**31)), noise=False
            )
            caption = "+".join(au[2:] for au in face.aus) or "(no AU labelled)"
            grid.paste(_tile(image, caption), (LABEL_WIDTH + column * FACE * ZOOM, top))
    return grid


def au_gallery(identity_seed: int = 8) -> Image.Image:
    keys = ["neutral", *synthface.RENDERED_AUS, "R12+R14"]
    columns = 8
    rows = -(-len(keys) // columns)
    grid = Image.new("RGB", (columns * FACE * ZOOM, rows * (FACE * ZOOM + CAPTION)), "white")
    for index, key in enumerate(keys):
        aus = {} if key == "neutral" else {part: 1.0 for part in key.split("+")}
        image = synthface.render(aus, identity_seed, FACE, noise=False)
        grid.paste(_tile(image, key), ((index % columns) * FACE * ZOOM, (index // columns) * (FACE * ZOOM + CAPTION)))
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "img"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    emotion_grid().save(out / "synthface_emotions.png", optimize=True)
    au_gallery().save(out / "synthface_aus.png", optimize=True)
    print(f"wrote {out / 'synthface_emotions.png'} and {out / 'synthface_aus.png'}")


if __name__ == "__main__":
    main()
