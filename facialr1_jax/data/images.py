"""Qwen2.5-VL image preprocessing: decode, resize to multiples of 28, normalise, patchify.

The numerical reference is `transformers`' `Qwen2VLImageProcessorPil`; for the same decoded image
`preprocess` returns bit-identical `pixel_values` and the same grid. The reference works in
float64/float32 on the whole resized image and then shuffles the floats into patches; here the
uint8 pixels are shuffled first (a quarter of the bytes) and then mapped to floats by table
look-up. The tables hold exactly the values the reference computes for each byte -
`float32(byte * (1/255))` in float64 first, then `(x - mean) / std` in float32 - so the result is
equal bit for bit, not just close. The look-up goes two pixels at a time (a 65536-entry table of
float pairs per channel), which halves the number of gathers.

Resizing is done by Pillow with the reference's filter (bicubic) on the same RGB image, so it is
exact as well. Grayscale ("L") images are resized as one channel and the three output channels
are read from it: Pillow's L->RGB conversion copies the value into each channel and bicubic
resampling treats channels independently, so this is the same image at a third of the cost.

RGB conversion follows the reference processor: transparency is composited onto white; palette,
grayscale and CMYK images are expanded by Pillow; 16-bit grayscale is clipped to 255 by Pillow's
conversion (not rescaled). Decoded files are turned upright by their EXIF orientation, as
`transformers.image_utils.load_image` does.

Decoding (`open_image`) is where bad files are caught: every failure is an `ImageLoadError` with
a `kind` (missing, empty, unreadable, unrecognised, truncated, corrupt, too_large, unsupported,
aspect_ratio) and a message saying what is wrong, so data checks can count and report them.

`jpeg_draft=True` is the one opt-in departure from the reference: large JPEGs are decoded at a
reduced DCT scale (see `preprocess`), several times faster for video frames.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import os
import warnings
from typing import Union

import numpy as np
from PIL import Image, ImageOps

# The normalisation constants of OpenAI CLIP, which Qwen2-VL and Qwen2.5-VL inherit
# (transformers.image_utils.OPENAI_CLIP_MEAN / OPENAI_CLIP_STD).
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The processor class defaults (Qwen2VLImageProcessor `size`): at least 4 patches of 28 x 28,
# at most 1280 of them. Published Qwen2.5-VL checkpoints raise max_pixels in their
# preprocessor_config.json (12845056); pass it explicitly when matching such a checkpoint.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 1280

# Refuse to decode images with more pixels than this: a 1 kB PNG can claim 100000 x 100000
# pixels and would take 30 GB to decode. 100 megapixels covers every camera in the FEA sources
# (the largest frames, BP4D's 1040 x 1392, are 1.4 MP). Pillow's own hard limit (twice
# PIL.Image.MAX_IMAGE_PIXELS, about 179 MP) still applies above this and reports the same error.
DEFAULT_MAX_IMAGE_PIXELS = 100_000_000

# smart_resize's guard: beyond this aspect ratio one side would round to zero patches.
MAX_ASPECT_RATIO = 200

# Reference: PILImageResampling.BICUBIC is the Qwen2-VL processor's `resample`.
RESAMPLE = Image.Resampling.BICUBIC

# What `open_image` / `load_image` accept.
ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


class ImageLoadError(ValueError):
    """An image could not be used.

    `kind` names the failure class (one of KINDS), `reason` says what is wrong, `where` names the
    file (or "<N bytes>"); str() is "where: reason". Data sources re-frame `reason` with the
    JSONL file, line and field.
    """

    KINDS = (
        "missing",
        "empty",
        "unreadable",
        "unrecognised",
        "truncated",
        "corrupt",
        "too_large",
        "unsupported",
        "aspect_ratio",
    )

    def __init__(self, kind: str, reason: str, where: str | None = None):
        if kind not in self.KINDS:
            raise ValueError(f"unknown ImageLoadError kind {kind!r}; expected one of {self.KINDS}")
        super().__init__(f"{where}: {reason}" if where else reason)
        self.kind = kind
        self.reason = reason
        self.where = where

    def __reduce__(self):
        # Keep the fields across process boundaries (grain workers pickle exceptions).
        return (type(self), (self.kind, self.reason, self.where))


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """How images become Qwen2.5-VL vision inputs.

    min_pixels / max_pixels: bounds on the resized area (both sides multiples of
        patch_size * merge_size = 28); the processor's `size.shortest_edge` / `size.longest_edge`.
    patch_size: side of one ViT patch in pixels (14).
    temporal_patch_size: frames per patch; a still image is repeated this many times (2).
    merge_size: side of the square of patches the merger folds into one LM token (2).
    image_mean / image_std: per-channel normalisation after scaling bytes to [0, 1].
    max_image_pixels: decompression-bomb limit on the decoded (source) image.
    jpeg_draft: decode large JPEGs at reduced DCT scale (faster, no longer bit-equal to the
        reference; see `preprocess`). Off by default.
    """

    min_pixels: int = DEFAULT_MIN_PIXELS
    max_pixels: int = DEFAULT_MAX_PIXELS
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    jpeg_draft: bool = False

    def __post_init__(self):
        for name in ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size",
                     "merge_size", "max_image_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ImageConfig.{name} must be a positive int, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"ImageConfig.min_pixels ({self.min_pixels}) exceeds max_pixels ({self.max_pixels})"
            )
        for name in ("image_mean", "image_std"):
            value = tuple(getattr(self, name))
            if len(value) != 3:
                raise ValueError(f"ImageConfig.{name} needs 3 values (R, G, B), got {value!r}")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"ImageConfig.image_std must be positive, got {self.image_std}")

    @property
    def factor(self) -> int:
        """Both resized sides are multiples of this (28 for Qwen2.5-VL)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: channels x temporal x patch x patch (1176)."""
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size is resized to."""
        return smart_resize(height, width, factor=self.factor,
                            min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def grid_thw(self, height: int, width: int) -> tuple[int, int, int]:
        """(t, h, w) patch grid of an image of this source size, without touching pixels."""
        resized_height, resized_width = self.resized_size(height, width)
        return 1, resized_height // self.patch_size, resized_width // self.patch_size

    def num_patches(self, height: int, width: int) -> int:
        """Rows of `pixel_values` for an image of this source size."""
        _, grid_h, grid_w = self.grid_thw(height, width)
        return grid_h * grid_w

    def num_image_tokens(self, height: int, width: int) -> int:
        """Language-model tokens the image becomes after the merge_size x merge_size merger."""
        return self.num_patches(height, width) // (self.merge_size * self.merge_size)

    def preprocess(self, image: ImageSource) -> tuple[np.ndarray, np.ndarray]:
        """`preprocess` with this configuration."""
        return preprocess(
            image,
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
            patch_size=self.patch_size,
            temporal_patch_size=self.temporal_patch_size,
            merge_size=self.merge_size,
            image_mean=self.image_mean,
            image_std=self.image_std,
            max_image_pixels=self.max_image_pixels,
            jpeg_draft=self.jpeg_draft,
        )


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area within [min_pixels, max_pixels].

    Each side is first rounded to the nearest multiple of `factor`. If the area is then too
    large, both sides shrink by the same scale (rounded down to multiples of `factor`, never below
    one `factor`); if too small, they grow by the same scale (rounded up). The floating-point
    steps are those of the reference so that borderline sizes round the same way.
    """
    if height < 1 or width < 1:
        raise ImageLoadError("unsupported", f"image has no pixels ({width} x {height})")
    aspect_ratio = max(height, width) / min(height, width)
    if aspect_ratio > MAX_ASPECT_RATIO:
        raise ImageLoadError(
            "aspect_ratio",
            f"aspect ratio {aspect_ratio:.1f} of a {width} x {height} image exceeds "
            f"{MAX_ASPECT_RATIO}, the most Qwen2.5-VL's resizing accepts",
        )
    target_height = round(height / factor) * factor
    target_width = round(width / factor) * factor
    if target_height * target_width > max_pixels:
        shrink = math.sqrt((height * width) / max_pixels)
        target_height = max(factor, math.floor(height / shrink / factor) * factor)
        target_width = max(factor, math.floor(width / shrink / factor) * factor)
    elif target_height * target_width < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        target_height = math.ceil(height * grow / factor) * factor
        target_width = math.ceil(width * grow / factor) * factor
    return target_height, target_width


# ----------------------------------------------------------------------------------------------
# Decoding


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return f"<{len(source)} bytes>"


def _encoded_bytes(source) -> bytes:
    """The encoded image behind a path or bytes source; ImageLoadError when there is none."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        data = _read_file(source)
    else:
        raise TypeError(
            f"cannot load an image from {type(source).__name__}; expected a path, bytes, "
            "a PIL image or a uint8 numpy array"
        )
    if not data:
        raise ImageLoadError("empty", "image file is empty (0 bytes)", _describe(source))
    return data


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file; ImageLoadError (missing, unreadable, empty) otherwise."""
    data = _read_file(path)
    if not data:
        raise ImageLoadError("empty", "image file is empty (0 bytes)", os.fspath(path))
    return data


def _read_file(path) -> bytes:
    where = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ImageLoadError("missing", "image file does not exist", where) from None
    except IsADirectoryError:
        raise ImageLoadError("unreadable", "is a directory, not an image file", where) from None
    except OSError as error:
        raise ImageLoadError("unreadable", f"cannot read: {error}", where) from None


def _open_header(data: bytes, where: str, max_image_pixels: int) -> Image.Image:
    """Parse the header only (Pillow opens lazily) and apply the pixel limit before decoding."""
    # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; the warning is replaced by
    # our own (configurable) limit, checked on the header before any pixel is decoded.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise ImageLoadError("too_large", str(error), where) from None
        except Image.UnidentifiedImageError:
            raise ImageLoadError(
                "unrecognised",
                f"not an image in any format Pillow can read (starts with {data[:8]!r})",
                where) from None
        except Exception as error:  # noqa: BLE001 - header parsers raise many types on junk
            kind = "truncated" if "truncated" in str(error).lower() else "corrupt"
            raise ImageLoadError(
                kind, f"unreadable image header: {type(error).__name__}: {error}", where
            ) from None
    width, height = image.size
    if width * height > max_image_pixels:
        raise ImageLoadError(
            "too_large",
            f"{width} x {height} = {width * height} pixels exceeds the limit of "
            f"{max_image_pixels} (decompression-bomb guard; raise max_image_pixels to allow)",
            where,
        )
    if width < 1 or height < 1:
        raise ImageLoadError("unsupported", f"image has no pixels ({width} x {height})", where)
    return image


def _decode(data: bytes, where: str, max_image_pixels: int) -> Image.Image:
    return _load(_open_header(data, where, max_image_pixels), where)


def _load(image: Image.Image, where: str) -> Image.Image:
    """Decode the pixels of a header-parsed image and turn it upright."""
    try:
        image.load()
        return _upright(image)
    except OSError as error:
        kind = "truncated" if "truncated" in str(error).lower() else "corrupt"
        raise ImageLoadError(kind, f"cannot decode {image.format} image: {error}", where) from None
    except Exception as error:  # noqa: BLE001 - decoders raise SyntaxError, zlib.error, ...
        raise ImageLoadError(
            "corrupt", f"cannot decode {image.format} image: {type(error).__name__}: {error}",
            where) from None


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image header says, read without decoding pixels."""

    format: str | None
    mode: str
    width: int
    height: int


def probe_image(source: str | os.PathLike | bytes, *,
                max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> ImageHeader:
    """Check that `source` is a readable image within the pixel limit, without decoding it.

    Catches missing, empty, non-image and oversized files and broken headers in microseconds;
    truncated or corrupt pixel data only shows when decoding (`open_image`).
    """
    image = _open_header(_encoded_bytes(source), _describe(source), max_image_pixels)
    width, height = image.size
    return ImageHeader(image.format, image.mode, width, height)


def open_image(source: ImageSource, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
               ) -> Image.Image:
    """Decode `source` into a loaded PIL image in its own mode, upright per its EXIF orientation.

    `source`: a file path, encoded bytes, a PIL image (returned upright, not re-decoded) or a
    uint8 array (H, W), (H, W, 1|3|4) or (1|3|4, H, W). Every failure is an `ImageLoadError`.
    """
    if isinstance(source, Image.Image):
        return _upright(source)
    if isinstance(source, np.ndarray):
        return _image_from_array(source)
    return _decode(_encoded_bytes(source), _describe(source), max_image_pixels)


# EXIF tag 0x0112: how the camera was held. Values 2..8 need a flip and/or rotation.
_EXIF_ORIENTATION = 0x0112


# Orientations 5..8 turn the picture a quarter: stored width is shown height.
_QUARTER_TURNS = (5, 6, 7, 8)


def _orientation(image: Image.Image) -> int:
    return image.getexif().get(_EXIF_ORIENTATION, 1) or 1


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, as transformers' `load_image` does; no copy when upright."""
    if _orientation(image) == 1:
        return image
    return ImageOps.exif_transpose(image)


def _image_from_array(array: np.ndarray) -> Image.Image:
    """A uint8 array as a PIL image; channel order inferred like the reference (1, 3 or 4)."""
    if array.dtype != np.uint8:
        raise ImageLoadError(
            "unsupported", f"image arrays must be uint8, got {array.dtype}; "
            "convert floats in [0, 1] with (x * 255).round().astype(np.uint8)")
    if array.ndim == 3 and array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L")
    if array.ndim == 3 and array.shape[-1] == 3:
        return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
    if array.ndim == 3 and array.shape[-1] == 4:
        # The reference blends array alpha onto white in float64 and rounds half to even;
        # Pillow's integer alpha_composite can differ by one, so do it the same way here.
        rgb = array[..., :3].astype(np.float64)
        alpha = array[..., 3:4] / 255
        blended = np.round(alpha * rgb + (1 - alpha) * 255).astype(np.uint8)
        return Image.fromarray(blended, mode="RGB")
    raise ImageLoadError("unsupported", f"cannot interpret an array of shape {array.shape} as an "
                         "image; expected (H, W), (H, W, 1|3|4) or (1|3|4, H, W)")


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB image with the reference's semantics: transparency composited onto white.

    An image has transparency if it has an alpha band (RGBA, LA, PA, ...) or a `transparency`
    entry (palette or single-colour transparency); those are composited over opaque white.
    Everything else goes through Pillow's RGB conversion, which for 16- and 32-bit grayscale
    clips values to 0..255 (the reference does the same; see `load_image`).
    """
    if image.mode == "RGB":
        return image
    try:
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")
    except ValueError as error:  # a mode Pillow cannot convert to RGB
        raise ImageLoadError("unsupported", f"cannot convert a {image.mode} image to RGB: {error}",
                             getattr(image, "filename", None) or None) from None


def load_image(source: ImageSource, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
               ) -> Image.Image:
    """Decode any supported source into an upright RGB PIL image, as the reference sees it.

    Matches `Qwen2VLImageProcessorPil`'s RGB conversion: alpha is composited onto white,
    palette and grayscale images are expanded. 16-bit grayscale ("I;16") follows Pillow's
    conversion, which clips to 255 rather than rescaling, exactly as the reference does; a data
    set of 16-bit images should be converted to 8-bit before training (check_data reports them).
    """
    return to_rgb(open_image(source, max_image_pixels=max_image_pixels))


# ----------------------------------------------------------------------------------------------
# Normalise and patchify


@functools.lru_cache(maxsize=8)
def byte_to_float_table(image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD) -> np.ndarray:
    """[3, 256] float32: the normalised value of each byte value in each channel.

    Reproduces the reference arithmetic exactly: rescale in float64 and round to float32
    (`np_rescale`), then subtract and divide in float32 with float32 constants (`np_normalize`).
    """
    scaled = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)
    mean = np.asarray(image_mean, dtype=np.float32)[:, None]
    std = np.asarray(image_std, dtype=np.float32)[:, None]
    table = (scaled[None, :] - mean) / std
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=8)
def _byte_pair_table(image_mean, image_std) -> np.ndarray:
    """[3, 65536] uint64: two neighbouring bytes -> their two float32 values, as one 8-byte word.

    A gather moves one index per element whatever its width, so looking up pixel pairs halves
    the work of the normalisation step. Index = first byte + 256 * second (little-endian uint16),
    entry = the two float32 values in memory order, read back through a float32 view.
    """
    single = byte_to_float_table(image_mean, image_std)
    pair_index = np.arange(65536, dtype=np.uint32)
    pairs = np.empty((3, 65536, 2), np.float32)
    pairs[:, :, 0] = single[:, pair_index & 0xFF]
    pairs[:, :, 1] = single[:, pair_index >> 8]
    table = pairs.view(np.uint64)[..., 0]
    table.setflags(write=False)
    return table


def _patch_planes(pixels: np.ndarray, patch_size: int, merge_size: int) -> np.ndarray:
    """uint8 (H, W, C) -> (C, n_patches, patch * patch), patches in the processor's order.

    Patches are ordered by merge window (row-major), then row-major within each window, so that
    each run of merge_size**2 consecutive patches is one LM token for the merger. Shuffling
    bytes, channel-major, keeps every later gather reading contiguous memory.
    """
    height, width, channels = pixels.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    blocks = pixels.reshape(
        grid_h // merge_size, merge_size, patch_size,
        grid_w // merge_size, merge_size, patch_size,
        channels,
    )
    # -> (channel, window row, window col, row in window, col in window, y, x)
    blocks = blocks.transpose(6, 0, 3, 1, 4, 2, 5)
    return np.ascontiguousarray(blocks).reshape(channels, grid_h * grid_w, patch_size * patch_size)


def normalise_and_patchify(
    pixels: np.ndarray,
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    image_mean=OPENAI_CLIP_MEAN,
    image_std=OPENAI_CLIP_STD,
) -> np.ndarray:
    """Resized uint8 pixels (H, W, 3) or grayscale (H, W) / (H, W, 1) -> flattened patches.

    H and W must be multiples of patch_size * merge_size. Returns float32
    [n_patches, 3 * temporal_patch_size * patch_size**2], each row laid out (channel, time, y, x),
    the still image repeated over time: the reference's `pixel_values`, bit for bit.
    """
    if pixels.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    factor = patch_size * merge_size
    if channels not in (1, 3) or height % factor or width % factor:
        raise ValueError(f"pixels of shape {pixels.shape} are not (H, W, 1|3) with H and W "
                         f"multiples of {factor}")
    planes = _patch_planes(pixels, patch_size, merge_size)
    n_patches, patch_area = planes.shape[1], planes.shape[2]
    image_mean, image_std = tuple(image_mean), tuple(image_std)
    if patch_area % 2 == 0:
        table = _byte_pair_table(image_mean, image_std)
        planes = planes.view("<u2")
        unit, per_row = np.uint64, patch_area // 2
    else:
        table = byte_to_float_table(image_mean, image_std)
        unit, per_row = np.float32, patch_area
    out = np.empty((n_patches, 3, temporal_patch_size, per_row), unit)
    for channel in range(3):
        values = table[channel].take(planes[0 if channels == 1 else channel])
        out[:, channel] = values[:, None, :]
    return out.view(np.float32).reshape(n_patches, -1)


def resize_for_model(image: Image.Image, height: int, width: int) -> Image.Image:
    """A decoded image converted and resized as the reference does, ready to patchify.

    RGB conversion as `to_rgb`, then Pillow's bicubic resize to (height, width) - the reference's
    two steps, equal bit for bit. Grayscale ("L") stays one channel: Pillow's L -> RGB copies the
    value into each channel and the resize treats channels independently, so resizing one channel
    gives the same pixels at a third of the cost (`normalise_and_patchify` reads it three times).
    No resize (and no copy) when the image already has the target size.
    """
    working = image if image.mode == "L" else to_rgb(image)
    if (width, height) != working.size:
        working = working.resize((width, height), resample=RESAMPLE)
    return working


def preprocess(
    image: ImageSource,
    *,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    image_mean=OPENAI_CLIP_MEAN,
    image_std=OPENAI_CLIP_STD,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    jpeg_draft: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """One image -> (pixel_values [n_patches, 3 * temporal * patch * patch] float32, grid_thw).

    `image` is anything `open_image` accepts. `grid_thw` is an int64 array [1, grid_h, grid_w];
    stacking one per image gives the reference's `image_grid_thw`. Equal bit for bit to
    `Qwen2VLImageProcessorPil` given the same decoded image and settings.

    jpeg_draft=True trades that equality for speed on large JPEGs (video frames): libjpeg
    decodes at 1/2, 1/4 or 1/8 scale in the DCT domain, never below the target size, and the
    bicubic resize does the rest. Same grid; pixels differ slightly (about half a grey level on
    average for 1392 x 1040 frames going to 448 x 448), so leave it off for reference parity.
    """
    factor = patch_size * merge_size

    def target(width: int, height: int) -> tuple[int, int]:
        return smart_resize(height, width, factor=factor, min_pixels=min_pixels,
                            max_pixels=max_pixels)

    if jpeg_draft and isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
        decoded, (resized_height, resized_width) = _decode_with_draft(
            image, target, max_image_pixels)
    else:
        decoded = open_image(image, max_image_pixels=max_image_pixels)
        resized_height, resized_width = target(*decoded.size)
    working = resize_for_model(decoded, resized_height, resized_width)
    pixel_values = normalise_and_patchify(
        np.asarray(working), patch_size=patch_size, temporal_patch_size=temporal_patch_size,
        merge_size=merge_size, image_mean=image_mean, image_std=image_std)
    grid_thw = np.array([1, resized_height // patch_size, resized_width // patch_size], np.int64)
    return pixel_values, grid_thw


def _decode_with_draft(source, target, max_image_pixels: int):
    """Decode a JPEG at the smallest DCT scale that still covers the target size.

    The target comes from the full upright size (as the reference computes it), so the grid
    does not depend on the draft. Returns (upright image, (target height, target width)).
    """
    where = _describe(source)
    image = _open_header(_encoded_bytes(source), where, max_image_pixels)
    width, height = image.size
    quarter_turn = _orientation(image) in _QUARTER_TURNS
    upright_width, upright_height = (height, width) if quarter_turn else (width, height)
    resized_height, resized_width = target(upright_width, upright_height)
    if image.format == "JPEG":
        stored_target = ((resized_height, resized_width) if quarter_turn
                         else (resized_width, resized_height))
        image.draft(image.mode, stored_target)
    return _load(image, where), (resized_height, resized_width)
