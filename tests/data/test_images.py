"""data.images against transformers' Qwen2VLImageProcessorPil, the numerical reference.

Every comparison is exact (`np.testing.assert_array_equal`): the resize is Pillow's bicubic in both
pipelines and the normalisation table reproduces the reference's float64 -> float32 arithmetic, so
nothing forces a tolerance. Images are generated here; nothing is read from disk fixtures.
"""

from __future__ import annotations

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from transformers.image_transforms import normalize as hf_normalize
from transformers.image_transforms import rescale as hf_rescale
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as hf_qwen

from facialr1_jax.data import images

HF_MIN_PIXELS = 56 * 56
HF_MAX_PIXELS = 28 * 28 * 1280


def _reference(image, **kwargs):
    processor = hf_qwen.Qwen2VLImageProcessorPil(**kwargs)
    out = processor(images=image, return_tensors="np")
    return out["pixel_values"], out["image_grid_thw"]


def _photo(height, width, *, seed=0, channels=3):
    """A smooth picture with some texture, so JPEG and resampling see realistic content."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), channels), np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    smooth = Image.fromarray(coarse.squeeze(-1) if channels == 1 else coarse, mode)
    smooth = np.asarray(smooth.resize((width, height), Image.Resampling.BILINEAR), np.int16)
    noisy = smooth + rng.integers(-12, 13, smooth.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def _assert_matches_reference(ours_source, reference_image, **kwargs):
    ours_pixels, ours_grid = images.preprocess(ours_source, **kwargs)
    ref_pixels, ref_grid = _reference(reference_image, **kwargs)
    assert ours_pixels.dtype == np.float32
    np.testing.assert_array_equal(ours_grid[None, :], ref_grid)
    np.testing.assert_array_equal(ours_pixels, ref_pixels)
    return ours_pixels, ours_grid


# ------------------------------------------------------------------------------ smart_resize


def test_smart_resize_matches_reference_on_a_grid_of_sizes():
    sizes = [(10, 10), (27, 29), (28, 28), (42, 42), (48, 48), (100, 100), (333, 517),
             (640, 480), (1040, 1392), (4000, 6000), (14, 2799), (1000, 13), (56, 56 * 199)]
    bounds = [(HF_MIN_PIXELS, HF_MAX_PIXELS), (256 * 28 * 28, 1280 * 28 * 28), (3136, 12845056),
              (100 * 100, 200 * 200)]
    for height, width in sizes:
        for min_pixels, max_pixels in bounds:
            expected = hf_qwen.smart_resize(height, width, 28, min_pixels, max_pixels)
            got = images.smart_resize(height, width, 28, min_pixels, max_pixels)
            assert got == expected, (height, width, min_pixels, max_pixels)
            assert got[0] % 28 == 0 and got[1] % 28 == 0


def test_smart_resize_rejects_extreme_aspect_ratio_with_a_kind():
    with pytest.raises(images.ImageLoadError, match="aspect ratio") as caught:
        images.smart_resize(10, 2500)
    assert caught.value.kind == "aspect_ratio"
    with pytest.raises(ValueError):  # the reference rejects it too
        hf_qwen.smart_resize(10, 2500)


def test_image_config_counts_agree_with_preprocess_and_reference():
    config = images.ImageConfig(min_pixels=64 * 28 * 28, max_pixels=256 * 28 * 28)
    processor = hf_qwen.Qwen2VLImageProcessorPil(min_pixels=config.min_pixels,
                                                max_pixels=config.max_pixels)
    for height, width in [(48, 48), (100, 100), (333, 517), (1040, 1392)]:
        pixel_values, grid = config.preprocess(Image.fromarray(_photo(height, width)))
        assert config.num_patches(height, width) == pixel_values.shape[0]
        assert config.num_patches(height, width) == processor.get_number_of_image_patches(
            height, width)
        assert config.grid_thw(height, width) == tuple(grid.tolist())
        assert config.num_image_tokens(height, width) * 4 == pixel_values.shape[0]
        assert pixel_values.shape[1] == config.patch_dim == 1176


def test_image_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_pixels .* exceeds max_pixels"):
        images.ImageConfig(min_pixels=10_000, max_pixels=100)
    with pytest.raises(ValueError, match="patch_size must be a positive int"):
        images.ImageConfig(patch_size=0)
    with pytest.raises(ValueError, match="image_mean needs 3 values"):
        images.ImageConfig(image_mean=(0.5, 0.5))


# -------------------------------------------------------------------- normalisation arithmetic


def test_byte_table_reproduces_reference_rescale_and_normalize_for_every_byte():
    every_byte = np.tile(np.arange(256, dtype=np.uint8), (3, 1))[:, None, :]  # (C, 1, 256)
    reference = hf_normalize(hf_rescale(every_byte, 1 / 255), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
                             input_data_format="channels_first")
    np.testing.assert_array_equal(images.byte_to_float_table(), reference[:, 0, :])


def test_odd_patch_area_path_matches_reference():
    # patch_size 7 (49 pixels per patch) cannot use the byte-pair table; the single table runs.
    picture = Image.fromarray(_photo(90, 130, seed=3))
    _assert_matches_reference(picture, picture, patch_size=7, merge_size=2,
                              min_pixels=HF_MIN_PIXELS, max_pixels=HF_MAX_PIXELS)


def test_patch_rows_are_merge_windows_then_channel_time_y_x():
    # An independent statement of the layout: row r of pixel_values is the patch at grid position
    # (window_row*2 + i, window_col*2 + j) for r = ((window_row*W/2 + window_col)*4 + i*2 + j),
    # laid out (channel, time, y, x) with both time steps equal.
    pixels = _photo(56, 84, seed=4)
    pixel_values, grid = images.preprocess(pixels)
    assert tuple(grid) == (1, 4, 6)
    table = images.byte_to_float_table()
    patches = pixel_values.reshape(4 // 2, 6 // 2, 2, 2, 3, 2, 14, 14)
    for window_row, window_col, i, j in [(0, 0, 0, 0), (0, 2, 1, 0), (1, 1, 1, 1), (1, 0, 0, 1)]:
        y = (window_row * 2 + i) * 14
        x = (window_col * 2 + j) * 14
        expected = np.stack([table[c][pixels[y:y + 14, x:x + 14, c]] for c in range(3)])
        for time_step in range(2):
            np.testing.assert_array_equal(patches[window_row, window_col, i, j, :, time_step],
                                          expected)


# ------------------------------------------------------------------- image kinds vs reference


def test_rgb_jpeg_bytes_match_reference():
    encoded = _encode(Image.fromarray(_photo(333, 517)), "JPEG", quality=90)
    _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))


def test_rgba_png_composites_alpha_onto_white_like_reference():
    rgba = _photo(120, 90, seed=1, channels=4)
    rgba[:40, :, 3] = 0  # fully transparent band: must come out white, not the hidden colour
    encoded = _encode(Image.fromarray(rgba, "RGBA"), "PNG")
    ours, _ = _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))
    rgb_loaded = np.asarray(images.load_image(encoded))
    assert (rgb_loaded[:40] == 255).all()
    # Dropping alpha instead of compositing would give a different answer.
    dropped, _ = images.preprocess(Image.fromarray(rgba[..., :3]))
    assert not np.array_equal(ours, dropped)


def test_grayscale_matches_reference():
    encoded = _encode(Image.fromarray(_photo(48, 48, seed=2, channels=1), "L"), "PNG")
    _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))


def test_grayscale_with_resize_matches_reference():
    # The one-channel resize shortcut must agree with resizing the RGB expansion.
    encoded = _encode(Image.fromarray(_photo(211, 157, seed=5, channels=1), "L"), "JPEG")
    _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))


def test_palette_image_matches_reference():
    palette = Image.fromarray(_photo(100, 140, seed=6)).convert("P", palette=Image.Palette.ADAPTIVE)
    encoded = _encode(palette, "PNG")
    assert Image.open(io.BytesIO(encoded)).mode == "P"
    _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))


def test_palette_with_transparency_matches_reference():
    palette = Image.fromarray(_photo(100, 140, seed=7)).convert("P", palette=Image.Palette.ADAPTIVE)
    encoded = _encode(palette, "PNG", transparency=5)
    reopened = Image.open(io.BytesIO(encoded))
    assert reopened.info.get("transparency") == 5
    _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))


def test_gray_alpha_matches_reference():
    gray = Image.fromarray(_photo(64, 80, seed=8, channels=1), "L")
    alpha = Image.fromarray(_photo(64, 80, seed=9, channels=1), "L")
    encoded = _encode(Image.merge("LA", (gray, alpha)), "PNG")
    _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))


def test_sixteen_bit_grayscale_matches_reference():
    values = (_photo(70, 90, seed=10, channels=1).astype(np.uint16) * 3)  # 0..765: some clip
    encoded = _encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(encoded)).mode == "I;16"
    _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))


def test_tiny_image_matches_reference():
    encoded = _encode(Image.fromarray(_photo(10, 10, seed=11)), "PNG")
    pixel_values, grid = _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))
    assert grid[1] * grid[2] * 14 * 14 >= HF_MIN_PIXELS  # upscaled to at least min_pixels


def test_huge_image_matches_reference():
    # 6000 x 4000 (24 MP) from a coarse random picture: bilinear upscaling is quick to generate.
    coarse = np.random.default_rng(12).integers(0, 256, (400, 600, 3), np.uint8)
    picture = Image.fromarray(coarse).resize((6000, 4000), Image.Resampling.BILINEAR)
    encoded = _encode(picture, "JPEG", quality=85)
    pixel_values, grid = _assert_matches_reference(encoded, Image.open(io.BytesIO(encoded)))
    assert grid[1] * grid[2] * 14 * 14 <= HF_MAX_PIXELS


def test_custom_pixel_bounds_match_reference():
    picture = Image.fromarray(_photo(300, 400, seed=13))
    bounds = dict(min_pixels=256 * 28 * 28, max_pixels=512 * 28 * 28)
    _assert_matches_reference(picture, picture, **bounds)


def test_exif_orientation_is_applied_like_transformers_load_image():
    picture = Image.fromarray(_photo(60, 100, seed=14))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    encoded = _encode(picture, "PNG", exif=exif.tobytes())
    from transformers.image_utils import load_image as hf_load_image

    upright = hf_load_image(Image.open(io.BytesIO(encoded)))
    ours, grid = _assert_matches_reference(encoded, upright)
    assert images.load_image(encoded).size == (60, 100)
    sideways, _ = _reference(Image.open(io.BytesIO(encoded)))
    assert sideways.shape != ours.shape or not np.array_equal(sideways, ours)


def _rgb_file(height, width, fmt, seed, **save_args):
    return _encode(Image.fromarray(_photo(height, width, seed=seed)), fmt, **save_args)


def _mode_file(mode, height, width, fmt, seed, **save_args):
    return _encode(Image.fromarray(_photo(height, width, seed=seed)).convert(mode), fmt,
                   **save_args)


# Files as data sets hold them, each through preprocess(bytes) and the reference's processor on
# the decoded file: (decoded mode, source size) noted so a case cannot silently test another path.
_FILE_CASES = {
    "progressive_jpeg": (lambda: _rgb_file(230, 310, "JPEG", 40, progressive=True), "RGB"),
    "cmyk_jpeg": (lambda: _mode_file("CMYK", 150, 120, "JPEG", 41), "CMYK"),
    "grayscale_jpeg_downscaled": (lambda: _mode_file("L", 900, 700, "JPEG", 42), "L"),
    "grayscale_png_no_resize": (lambda: _mode_file("L", 112, 168, "PNG", 43), "L"),
    "rgb_png_no_resize": (lambda: _rgb_file(448, 448, "PNG", 44), "RGB"),
    "rgb_jpeg_no_resize": (lambda: _rgb_file(224, 336, "JPEG", 45), "RGB"),
    "one_bit_png": (lambda: _mode_file("1", 90, 70, "PNG", 46), "1"),
    "rgba_png_downscaled": (lambda: _encode(Image.fromarray(_photo(700, 500, seed=47, channels=4),
                                                            "RGBA"), "PNG"), "RGBA"),
    "palette_gif": (lambda: _encode(Image.fromarray(_photo(80, 96, seed=48)).convert(
        "P", palette=Image.Palette.ADAPTIVE), "GIF"), "P"),
    "tiny_grayscale_png": (lambda: _mode_file("L", 3, 5, "PNG", 49), "L"),
    "thin_rgb_jpeg": (lambda: _rgb_file(20, 1900, "JPEG", 50), "RGB"),
}


@pytest.mark.parametrize("case", sorted(_FILE_CASES))
def test_image_files_match_reference(case):
    build, mode = _FILE_CASES[case]
    encoded = build()
    decoded = Image.open(io.BytesIO(encoded))
    assert decoded.mode == mode
    bounds = dict(min_pixels=HF_MIN_PIXELS, max_pixels=448 * 448)
    _assert_matches_reference(encoded, decoded, **bounds)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_every_exif_orientation_of_a_resized_jpeg_matches_load_image_then_reference(orientation):
    # Orientations 2..8: mirrored, rotated 180, mirrored + rotated, rotated 90 / 270.
    from transformers.image_utils import load_image as hf_load_image

    exif = Image.Exif()
    exif[0x0112] = orientation
    encoded = _rgb_file(130, 250, "JPEG", 51, exif=exif.tobytes())
    upright = hf_load_image(Image.open(io.BytesIO(encoded)))
    _, grid = _assert_matches_reference(encoded, upright, max_pixels=112 * 112)
    quarter_turn = orientation >= 5
    assert (grid[1] > grid[2]) == quarter_turn  # stored landscape; upright portrait if turned


def test_resize_for_model_resizes_grayscale_as_its_rgb_expansion():
    gray = Image.fromarray(_photo(97, 143, seed=52, channels=1), "L")
    one_channel = images.resize_for_model(gray, 56, 84)
    assert one_channel.mode == "L" and one_channel.size == (84, 56)
    expanded = gray.convert("RGB").resize((84, 56), resample=Image.Resampling.BICUBIC)
    for channel in range(3):
        np.testing.assert_array_equal(np.asarray(one_channel), np.asarray(expanded)[..., channel])


def test_resize_for_model_converts_and_skips_the_resize_at_target_size():
    rgb = Image.fromarray(_photo(56, 84, seed=53))
    assert images.resize_for_model(rgb, 56, 84) is rgb  # already the target: no copy
    rgba = Image.fromarray(_photo(56, 84, seed=54, channels=4), "RGBA")
    converted = images.resize_for_model(rgba, 56, 84)
    assert converted.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(converted), np.asarray(images.to_rgb(rgba)))
    resized = images.resize_for_model(rgba, 28, 56)
    assert resized.mode == "RGB" and resized.size == (56, 28)


def test_numpy_inputs_match_reference():
    rgb = _photo(50, 70, seed=15)
    _assert_matches_reference(rgb, rgb)
    _assert_matches_reference(np.ascontiguousarray(rgb.transpose(2, 0, 1)), rgb)
    gray = _photo(50, 70, seed=16, channels=1)[..., None]  # the reference refuses 2-D arrays
    _assert_matches_reference(gray, gray)
    _assert_matches_reference(gray[..., 0], gray)
    rgba = _photo(50, 70, seed=17, channels=4)
    _assert_matches_reference(rgba, rgba)


def test_non_uint8_arrays_are_rejected():
    with pytest.raises(images.ImageLoadError, match="must be uint8") as caught:
        images.load_image(np.zeros((20, 20, 3), np.float32))
    assert caught.value.kind == "unsupported"


def test_load_image_returns_rgb_for_every_mode():
    base = Image.fromarray(_photo(30, 40, seed=18))
    for mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I", "I;16", "F", "CMYK"):
        converted = base.convert(mode) if mode != "I;16" else Image.fromarray(
            np.asarray(base.convert("L"), np.uint16))
        loaded = images.load_image(converted)
        assert loaded.mode == "RGB" and loaded.size == (40, 30), mode


# --------------------------------------------------------------------------------- bad input


def _png_header_only(width: int, height: int) -> bytes:
    """A valid-looking PNG that claims width x height pixels but carries almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00"))
            + chunk(b"IEND", b""))


def _kind_of(source, **kwargs) -> images.ImageLoadError:
    with pytest.raises(images.ImageLoadError) as caught:
        images.preprocess(source, **kwargs)
    return caught.value


def test_empty_bytes_and_empty_file(tmp_path):
    assert _kind_of(b"").kind == "empty"
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    error = _kind_of(empty)
    assert error.kind == "empty" and str(empty) in str(error) and "0 bytes" in str(error)


def test_missing_file_and_directory(tmp_path):
    error = _kind_of(tmp_path / "nope.png")
    assert error.kind == "missing" and "nope.png" in str(error)
    assert _kind_of(tmp_path).kind == "unreadable"


def test_non_image_bytes():
    error = _kind_of(b"id,label\n1,happy\n")
    assert error.kind == "unrecognised" and "not an image" in str(error)


def test_truncated_jpeg():
    encoded = _encode(Image.fromarray(_photo(200, 200, seed=19)), "JPEG")
    error = _kind_of(encoded[: len(encoded) // 2])
    assert error.kind == "truncated" and "JPEG" in str(error)


def test_truncated_png():
    encoded = _encode(Image.fromarray(_photo(200, 200, seed=20)), "PNG")
    assert _kind_of(encoded[: len(encoded) // 2]).kind in ("truncated", "corrupt")


def test_corrupt_png_data():
    encoded = bytearray(_encode(Image.fromarray(_photo(100, 100, seed=21)), "PNG"))
    idat = encoded.index(b"IDAT")
    encoded[idat + 20: idat + 60] = b"\xff" * 40  # scrambled compressed stream
    assert _kind_of(bytes(encoded)).kind in ("corrupt", "truncated")


def test_decompression_bomb_header_is_refused_before_decoding():
    bomb = _png_header_only(100_000, 100_000)  # 10 gigapixels claimed in ~60 bytes
    assert len(bomb) < 100
    error = _kind_of(bomb)
    assert error.kind == "too_large"


def test_pixel_limit_is_configurable():
    encoded = _encode(Image.fromarray(_photo(200, 300, seed=22)), "PNG")
    error = _kind_of(encoded, max_image_pixels=50_000)
    assert error.kind == "too_large" and "60000" in str(error) and "50000" in str(error)
    pixel_values, _ = images.preprocess(encoded, max_image_pixels=60_000)
    assert pixel_values.shape[1] == 1176


def test_probe_reads_the_header_only():
    encoded = _encode(Image.fromarray(_photo(200, 300, seed=23)), "JPEG")
    header = images.probe_image(encoded)
    assert (header.format, header.mode, header.width, header.height) == ("JPEG", "RGB", 300, 200)
    # Truncation of the pixel data is invisible to the header and caught by decoding.
    truncated = encoded[: len(encoded) * 3 // 4]
    assert images.probe_image(truncated).width == 300
    assert _kind_of(truncated).kind == "truncated"


def test_image_load_error_survives_pickling():
    error = images.ImageLoadError("truncated", "cannot decode", "a/b.jpg")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.kind, clone.reason, clone.where, str(clone)) == (
        "truncated", "cannot decode", "a/b.jpg", "a/b.jpg: cannot decode")


# ------------------------------------------------------------------------------- jpeg_draft


def _frame(width=1392, height=1040, seed=30) -> bytes:
    coarse = np.random.default_rng(seed).integers(0, 256, (height // 24, width // 24, 3), np.uint8)
    picture = Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)
    return _encode(picture, "JPEG", quality=90)


def test_jpeg_draft_keeps_the_grid_and_stays_close_on_large_frames():
    bounds = dict(min_pixels=HF_MIN_PIXELS, max_pixels=448 * 448)
    encoded = _frame()
    exact, exact_grid = images.preprocess(encoded, **bounds)
    drafted, drafted_grid = images.preprocess(encoded, jpeg_draft=True, **bounds)
    np.testing.assert_array_equal(drafted_grid, exact_grid)
    assert not np.array_equal(drafted, exact)  # the draft really decoded at a reduced scale
    # Differences in grey levels: normalised values times std times 255.
    std = np.repeat(np.asarray(images.OPENAI_CLIP_STD, np.float32), 2 * 14 * 14)
    grey_levels = np.abs(drafted - exact) * std * 255
    assert grey_levels.mean() < 1.0 and grey_levels.max() <= 8


def test_jpeg_draft_is_exact_when_no_reduction_applies():
    small = _encode(Image.fromarray(_photo(120, 160, seed=31)), "JPEG")
    png = _encode(Image.fromarray(_photo(600, 800, seed=32)), "PNG")
    for encoded in (small, png):
        exact, _ = images.preprocess(encoded)
        drafted, _ = images.preprocess(encoded, jpeg_draft=True)
        np.testing.assert_array_equal(drafted, exact)


def test_jpeg_draft_respects_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6
    coarse = np.random.default_rng(33).integers(0, 256, (40, 60, 3), np.uint8)
    picture = Image.fromarray(coarse).resize((1440, 960), Image.Resampling.BICUBIC)
    encoded = _encode(picture, "JPEG", exif=exif.tobytes())
    config = images.ImageConfig(max_pixels=224 * 224, jpeg_draft=True)
    drafted, grid = config.preprocess(encoded)
    exact, exact_grid = images.preprocess(encoded, max_pixels=224 * 224)
    np.testing.assert_array_equal(grid, exact_grid)
    assert grid[1] > grid[2]  # upright: portrait
    assert not np.array_equal(drafted, exact) and np.abs(drafted - exact).mean() < 0.05
