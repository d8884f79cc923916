"""The synthetic face renderer and the FACS label sampler."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from facialr1_jax.data import demo, expressions, synthface
from facialr1_jax.fea.aus import parse_au_codes
from facialr1_jax.fea.emotions import EMOTIONS

# (identity seed, pose seed) pairs: upright captures and rolled / shifted / relit ones.
VIEWS = [(1, None), (5, 3), (11, 7), (2, 9), (4, None), (123, 77)]


def _pixels(aus, identity, pose, **kwargs):
    return np.asarray(synthface.render(aus, identity, 112, pose_seed=pose, noise=False, **kwargs)).astype(np.int32)


def test_render_is_deterministic_and_seeds_matter():
    aus = {"AU6": 0.7, "AU12": 0.8}
    first = np.asarray(synthface.render(aus, 42, 112, pose_seed=9))
    again = np.asarray(synthface.render(aus, 42, 112, pose_seed=9))
    np.testing.assert_array_equal(first, again)
    assert first.shape == (112, 112, 3) and first.dtype == np.uint8
    other_person = np.asarray(synthface.render(aus, 43, 112, pose_seed=9))
    other_pose = np.asarray(synthface.render(aus, 42, 112, pose_seed=10))
    without_noise = np.asarray(synthface.render(aus, 42, 112, pose_seed=9, noise=False))
    for different in (other_person, other_pose, without_noise):
        assert np.abs(first.astype(int) - different.astype(int)).mean() > 0.5


@pytest.mark.parametrize("identity, pose", VIEWS)
def test_every_au_changes_its_region_and_nothing_else(identity, pose):
    neutral = _pixels({}, identity, pose)
    keys = list(synthface.RENDERED_AUS) + ["R12", "L12", "R14", "L14", "R5", "L43", "R20", "L2"]
    for key in keys:
        changed = np.abs(_pixels({key: 1.0}, identity, pose) - neutral).max(axis=-1) > 0
        region = synthface.au_region_mask(key, identity, 112, pose_seed=pose)
        assert changed.sum() >= 30, f"{key} changes only {changed.sum()} pixels"
        outside = changed & ~region
        assert outside.sum() == 0, f"{key} changes {outside.sum()} pixels outside its region at {np.argwhere(outside)[:3].tolist()}"
        assert region.mean() < 0.45, f"the {key} region covers {region.mean():.0%} of the image"


def test_labelled_intensities_are_visible():
    """The weakest labelled intensity still moves many pixels by a visible amount."""
    weakest = expressions.LETTER_INTENSITY["A"][0]
    for identity, pose in VIEWS[:3]:
        neutral = _pixels({}, identity, pose)
        for au in synthface.RENDERED_AUS:
            strongly_changed = np.abs(_pixels({au: weakest}, identity, pose) - neutral).max(axis=-1) > 12
            assert strongly_changed.sum() >= 12, f"{au} at {weakest}: {strongly_changed.sum()} pixels change visibly"


def test_aus_are_distinguishable():
    """No two AUs change the image in the same way (their difference images differ a lot)."""
    identity, pose = 5, 3
    neutral = _pixels({}, identity, pose)
    deltas = {au: (_pixels({au: 1.0}, identity, pose) - neutral).ravel().astype(float) for au in synthface.RENDERED_AUS}
    names = list(deltas)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            gap = np.linalg.norm(deltas[a] - deltas[b]) / max(np.linalg.norm(deltas[a]), np.linalg.norm(deltas[b]))
            assert gap > 0.5, f"{a} and {b} look alike (relative difference {gap:.2f})"


@pytest.mark.parametrize("au", ["12", "14", "15", "20", "5", "2"])
def test_one_sided_aus_act_on_the_subjects_side(au):
    """R = the subject's right = the image's left half (upright capture)."""
    neutral = _pixels({}, 8, None)
    for prefix, heavier_half in (("R", "left"), ("L", "right")):
        delta = np.abs(_pixels({f"{prefix}{au}": 1.0}, 8, None) - neutral).sum(axis=-1)
        left, right = delta[:, :56].sum(), delta[:, 56:].sum()
        if heavier_half == "left":
            assert left > 5 * right, (prefix, au, left, right)
        else:
            assert right > 5 * left, (prefix, au, left, right)
    both = _pixels({f"AU{au}": 1.0}, 8, None)
    sides = _pixels({f"R{au}": 1.0, f"L{au}": 1.0}, 8, None)
    np.testing.assert_array_equal(both, sides)


def test_identities_and_captures_vary():
    people = [synthface.sample_identity(seed) for seed in range(300)]
    assert {person.hair_style for person in people} == {0, 1, 2, 3}
    assert 0.15 < np.mean([person.glasses for person in people]) < 0.35
    assert len({person.skin for person in people}) == 300
    spacing = [person.eye_dx for person in people]
    assert max(spacing) - min(spacing) > 0.04
    captures = [synthface.sample_capture(seed) for seed in range(300)]
    rolls = np.degrees([capture.roll for capture in captures])
    assert rolls.min() < -4 and rolls.max() > 4
    assert synthface.sample_capture(None) == synthface.UPRIGHT


def test_render_speed_at_least_200_images_per_second_on_one_core():
    """Measured in process CPU time (the renderer is single-threaded), so other jobs sharing the
    machine do not make the test flaky."""
    rng = np.random.default_rng(0)
    faces = [expressions.sample_expression(rng) for _ in range(120)]
    synthface.render(faces[0].intensities, 0, 112, pose_seed=0)  # warm caches
    started = time.process_time()
    for index, face in enumerate(faces):
        synthface.render(face.intensities, index, 112, pose_seed=index)
    rate = len(faces) / (time.process_time() - started)
    assert rate >= 200, f"{rate:.0f} images/s"


@pytest.mark.parametrize(
    "aus, message",
    [
        ({"AU13": 0.5}, "not rendered"),
        ({"X12": 0.5}, "not of the form"),
        ({"R25": 0.5}, "midline"),
        ({"AU12": 1.5}, "outside"),
        ({"AU12": float("nan")}, "outside"),
        ({"AU12": "high"}, "number"),
        ({"AU12": True}, "number"),
    ],
)
def test_bad_au_input_is_named(aus, message):
    with pytest.raises(ValueError, match=message):
        synthface.render(aus, 0)


def test_bad_seed_and_size_are_named():
    with pytest.raises(ValueError, match="identity_seed"):
        synthface.render({}, -1)
    with pytest.raises(ValueError, match="pose_seed"):
        synthface.render({}, 0, pose_seed=-3)
    with pytest.raises(ValueError, match="size"):
        synthface.render({}, 0, size=8)


# ------------------------------------------------------------------------------ label sampler
def test_every_table_row_parses_and_realises():
    rng = np.random.default_rng(0)
    for emotion in EMOTIONS:
        for row in expressions.PROTOTYPES[emotion] + expressions.variant_rows(emotion):
            terms = expressions.parse_row(row)
            for _ in range(5):
                intensities = expressions.realise_row(row, rng)
                assert len(intensities) <= len(terms)
                assert all(0 < value <= 1 for value in intensities.values())
                synthface.parse_au_intensities(intensities)  # renderable


def test_anger_variants_drop_one_core_au():
    """Anger's variants (docs/METHOD.md 2.5): its prototypes with one of AU4, AU5, AU7, AU10 dropped."""
    variants = expressions.variant_rows("anger")
    assert "5+7+23+[25|26]" in variants and "4+5+7+22+23+{25|26}" in variants
    for row in variants:
        assert any(_drops_one_core_au(prototype, row) for prototype in expressions.PROTOTYPES["anger"]), row


def _drops_one_core_au(prototype: str, row: str) -> bool:
    full, short = prototype.split("+"), row.split("+")
    dropped = [term for term in full if term not in short]
    return len(full) == len(short) + 1 and len(dropped) == 1 and dropped[0] in {"4", "5", "7", "10"}


def test_bad_rows_are_named():
    for row, message in (("1+2+{5|26", "unbalanced"), ("1+Q", "term"), ("1+13", "not rendered"), ("X26", "no side")):
        with pytest.raises(ValueError, match=message):
            expressions.parse_row(row)


def test_labels_follow_the_threshold_and_the_prior():
    config = expressions.ExpressionConfig()
    rng = np.random.default_rng(1)
    samples = [expressions.sample_expression(rng, config) for _ in range(8000)]
    for sample in samples[:2000]:
        strongest: dict[str, float] = {}
        for key, value in sample.intensities.items():
            au = parse_au_codes(key)[0]
            strongest[au] = max(strongest.get(au, 0.0), value)
        assert set(sample.aus) == {au for au, value in strongest.items() if value >= config.label_threshold}
        # Nothing sits in the ambiguous band just under the threshold.
        assert all(v <= expressions.TRACE_RANGE[1] or v >= expressions.LETTER_INTENSITY["A"][0] for v in strongest.values())
        if sample.emotion == "neutral":
            assert sample.aus == ()
    counts = Counter(sample.emotion for sample in samples)
    total = sum(config.emotion_prior.values())
    for emotion in EMOTIONS:
        expected = config.emotion_prior[emotion] / total
        assert abs(counts[emotion] / len(samples) - expected) < 0.02, emotion
    sources = Counter(sample.source.split()[0].split(":")[0] for sample in samples)
    assert sources["variant"] > 0.1 * len(samples)
    assert sum("partial" in s.source for s in samples) > 0.05 * len(samples)
    assert sum("subtle" in s.source for s in samples) > 0.03 * len(samples)
    assert sum("distractor" in s.source for s in samples) > 0.08 * len(samples)


def test_prior_is_a_knob():
    config = expressions.ExpressionConfig(emotion_prior={"fear": 1.0, "anger": 3.0})
    rng = np.random.default_rng(2)
    counts = Counter(expressions.sample_expression(rng, config).emotion for _ in range(2000))
    assert set(counts) == {"fear", "anger"}
    assert 0.7 < counts["anger"] / 2000 < 0.8


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"emotion_prior": {"joy": 1.0}}, "unknown emotions"),
        ({"emotion_prior": {"fear": -1.0}}, "weights"),
        ({"partial_probability": 1.5}, "partial_probability"),
        ({"label_threshold": 0.5}, "label_threshold"),
    ],
)
def test_bad_sampler_config_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        expressions.ExpressionConfig(**kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_emotion_from_au_sets_alone_is_learnable_but_not_trivial(seed):
    """Issue 3: the best accuracy reachable from the true AU sets alone (majority emotion per AU
    set) on the stage 2 split lies in [0.80, 0.95]."""
    faces = demo.plan_split("rl", 4000, seed)
    ceiling = expressions.au_set_ceiling((face.expression.emotion, face.expression.aus) for face in faces)
    assert 0.80 <= ceiling <= 0.95, ceiling


def test_au_set_ceiling_counts_majorities():
    samples = [("fear", ("AU1",)), ("fear", ("AU1",)), ("surprise", ("AU1",)), ("anger", ())]
    assert expressions.au_set_ceiling(samples) == pytest.approx(3 / 4)
    with pytest.raises(ValueError):
        expressions.au_set_ceiling([])
