"""The public API: reading replies, every image kind, clear errors; importing stays free of JAX."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from facialr1_jax import api
from facialr1_jax.data.images import ImageLoadError


# ------------------------------------------------------------------------------------ replies
def test_read_answer_structured_fields():
    text = ("<think>cheeks raised (AU6) and lip corners pulled (au12); AU6 again</think>\n"
            "<answer>Happy.</answer>")
    result = api.read_answer(text)
    assert result["emotion"] == "happiness"
    assert result["answer"] == "Happy."
    assert result["aus"] == ["AU6", "AU12"]
    assert result["au_names"] == {"AU6": "cheek raiser", "AU12": "lip corner puller"}
    assert result["reasoning"].startswith("cheeks raised (AU6)")
    assert result["format_valid"] is True
    assert result["raw"] == text


def test_read_answer_without_tags_or_emotion():
    result = api.read_answer("the person looks AU4 tense")
    assert result["emotion"] is None and result["answer"] == ""
    assert result["reasoning"] is None
    assert result["aus"] == ["AU4"]  # no think block: the whole reply is searched (docs/METHOD.md 9.1)
    assert result["format_valid"] is False
    odd = api.read_answer("<think>x AU99</think><answer>bored</answer>")
    assert odd["emotion"] is None and odd["answer"] == "bored"
    assert odd["aus"] == ["AU99"] and odd["au_names"] == {}  # AU99 is not a FACS unit


# ------------------------------------------------------------------------------------- images
def _png_bytes(image):
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def _gradient(height=40, width=30):
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 8 % 256, y * 6 % 256, (x + y) * 4 % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.fromarray(_gradient(), "RGB"),
        lambda: Image.fromarray(_gradient(), "RGB").convert("RGBA"),
        lambda: Image.fromarray(_gradient(), "RGB").convert("L"),
        lambda: Image.fromarray(_gradient(), "RGB").convert("P"),
        lambda: Image.fromarray(_gradient(), "RGB").convert("LA"),
        lambda: Image.fromarray(_gradient(), "RGB").convert("1"),
        lambda: Image.fromarray(_gradient(), "RGB").convert("CMYK"),
        lambda: Image.new("RGB", (1, 1), (10, 20, 30)),  # tiny
        lambda: Image.new("RGB", (3000, 2000), (10, 20, 30)),  # large
    ],
    ids=["rgb", "rgba", "gray", "palette", "gray-alpha", "bilevel", "cmyk", "tiny", "large"],
)
def test_prepare_image_gives_8bit_rgb_for_every_mode(make):
    image = make()
    for source in (image, _png_bytes(image) if image.mode != "CMYK" else image):
        prepared = api.prepare_image(source)
        assert prepared.mode == "RGB" and prepared.size == image.size


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # a 16-bit grayscale PNG
    with Image.open(path) as check:
        assert check.mode.startswith("I")
    prepared = np.asarray(api.prepare_image(path))
    expected = np.round(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(prepared[..., 0], expected)
    np.testing.assert_array_equal(prepared[..., 0], prepared[..., 2])
    # Pillow's own conversion would clip: almost everything would be white.
    assert (prepared == 255).mean() < 0.01


@pytest.mark.parametrize(
    "array,expected",
    [
        (np.array([[0, 65535]], np.uint16), [0, 255]),
        (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),
        (np.array([[0.0, 127.6, 300.0]], np.float64), [0, 128, 255]),  # beyond [0, 1]: read as 0..255
        (np.array([[0, 200]], np.int64), [0, 200]),  # fits 8 bits: kept
        (np.array([[0, 1000, 65535]], np.int32), [0, 4, 255]),  # 16-bit range
        (np.array([[False, True]]), [0, 255]),
    ],
)
def test_to_8bit_arrays(array, expected):
    out = api.to_8bit(array)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out.reshape(-1), expected)


def test_array_inputs_in_both_channel_orders():
    hwc = _gradient()
    from_hwc = np.asarray(api.prepare_image(hwc))
    np.testing.assert_array_equal(from_hwc, hwc)
    from_chw = np.asarray(api.prepare_image(np.moveaxis(hwc, -1, 0)))
    np.testing.assert_array_equal(from_chw, hwc)
    rgba = np.concatenate([hwc, np.full(hwc.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(np.asarray(api.prepare_image(rgba)), hwc)


def test_bad_files_are_clear_errors(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ImageLoadError, match="notes.txt.*not an image") as info:
        api.prepare_image(text)
    assert info.value.kind == "unrecognised"
    with pytest.raises(ImageLoadError, match="does not exist") as info:
        api.prepare_image(tmp_path / "missing.jpg")
    assert info.value.kind == "missing"
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        api.prepare_image(empty)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(_png_bytes(Image.fromarray(_gradient(200, 200)))[:300])
    with pytest.raises(ImageLoadError, match="cut.png"):
        api.prepare_image(truncated)
    with pytest.raises(TypeError, match="not dict"):
        api.prepare_image({"image": 1})
    with pytest.raises(ImageLoadError, match="dtype complex"):
        api.prepare_image(np.zeros((4, 4), np.complex64))


def test_importing_the_package_and_api_name_does_not_load_jax():
    code = (
        "import sys, facialr1_jax\n"
        "from facialr1_jax import FacialR1\n"
        "assert FacialR1.__name__ == 'FacialR1'\n"
        "assert 'jax' not in sys.modules, sorted(m for m in sys.modules if m.startswith('jax'))\n"
        "try:\n"
        "    facialr1_jax.NoSuchThing\n"
        "except AttributeError as e:\n"
        "    assert 'NoSuchThing' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# -------------------------------------------------------------------------------- with a model
def _write_demo_checkpoint(workdir):
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "eval", "demo_checkpoint.py")
    spec = importlib.util.spec_from_file_location("facialr1_eval_demo_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_demo_checkpoint(str(workdir))


def _image_kinds(tmp_path):
    """One face-sized picture in every kind the API promises to read (files, PIL images, arrays)."""
    rgb = Image.fromarray(_gradient(96, 80), "RGB")
    rgb.save(tmp_path / "face.jpg", quality=90)
    rgb.convert("RGBA").save(tmp_path / "face_rgba.png")
    Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257)).save(tmp_path / "face16.png")
    return {
        "jpeg file": tmp_path / "face.jpg",
        "rgba file": str(tmp_path / "face_rgba.png"),
        "16-bit file": tmp_path / "face16.png",
        "grayscale image": rgb.convert("L"),
        "palette image": rgb.convert("P"),
        "uint8 array": np.asarray(rgb),
        "float array": np.asarray(rgb).astype(np.float32) / 255.0,
        "tiny image": Image.new("RGB", (2, 3), (200, 150, 120)),
        "huge image": Image.new("RGB", (4000, 3000), (200, 150, 120)),
    }


def test_facialr1_loads_a_workdir_and_analyses_every_image_kind(tmp_path):
    from facialr1_jax import FacialR1

    workdir = _write_demo_checkpoint(tmp_path / "run")
    analyser = FacialR1.load(workdir, max_new_tokens=8)
    assert analyser.info["kind"] == "orbax" and analyser.info["step"] == 5
    # The prompt encoding recorded by the run (the demo's compact prompt, 112 x 112 faces) is reused.
    assert analyser.encoding.prompt_variant == "compact"
    assert analyser.encoding.image.max_pixels == 112 * 112
    kinds = _image_kinds(tmp_path)
    results = analyser.analyze_batch(list(kinds.values()), batch_size=len(kinds))
    assert len(results) == len(kinds)
    for name, result in zip(kinds, results):
        assert set(result) == {"emotion", "answer", "aus", "au_names", "reasoning", "format_valid", "raw"}, name
        assert result == api.read_answer(result["raw"]), name
    # One image at a time; greedy decoding is deterministic.
    first = analyser.analyze(kinds["uint8 array"])
    assert first == api.read_answer(first["raw"])
    assert analyser.analyze(kinds["uint8 array"]) == first
    with pytest.raises(ImageLoadError, match="not an image"):
        bad = tmp_path / "x.txt"
        bad.write_text("text")
        analyser.analyze(bad)
