"""The configurable stage 3 check agrees with the oracle and applies each optional rule."""

import numpy as np
import pytest

from facialr1_jax.config_validation import ConfigError
from facialr1_jax.data.reasoning import write_description
from facialr1_jax.fea.answers import check_synthesis
from facialr1_jax.fea.emotions import EMOTIONS
from facialr1_jax.fea.records import FEARecord
from facialr1_jax.synth import checks
from facialr1_jax.synth.settings import SynthSettings

SYNTH_AUS = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU14", "AU15", "AU17", "AU20",
             "AU23", "AU24", "AU25", "AU26")


def _record(aus=("AU1", "AU2", "AU5", "AU26"), label="surprise"):
    return FEARecord(id="r", dataset="synthface", images=("a.jpg",), aus=tuple(aus),
                     labels=(label,) if label else ())


def _checker(**overrides):
    return checks.AnswerChecker.from_settings(SynthSettings(**overrides))


def _mutations(text: str, rng: np.random.Generator) -> list[str]:
    """The answer and broken variants of it: each one exercises another rule of the oracle."""
    think_end = text.index("</think>")
    return [
        text,
        " " + text,  # something before the think tag
        text + "\nThanks.",  # something after the answer
        text.replace("<answer>", "<answer> ").replace("</answer>", " </answer>"),  # padded label
        text.replace("</think>", " (AU43)</think>"),  # an extra AU
        text[:think_end] + "</think>",  # no answer
        text.replace("<think>", "<think></think><think>"),  # an empty first think block
        text + "<answer>fear</answer>",  # two answers, the last one different
        text.replace("(AU", "(au").replace("(au1)", "(AU1)"),  # lower-case AU mentions count the same
        text.replace("<answer>", "<answer>").replace(text[text.index("<answer>") + 8:text.index("</answer>")],
                                                      EMOTIONS[rng.integers(len(EMOTIONS))]),
        text.replace("<think>", "<THINK>").replace("</think>", "</THINK>"),  # case of the think tag
    ]


def test_default_check_is_the_oracle_on_many_answers():
    """Exact AUs + label + format, no hedges: the verdict and the problem sentences are the oracle's."""
    rng = np.random.default_rng(0)
    checker = _checker()
    compared = 0
    for _ in range(60):
        aus = tuple(sorted(rng.choice(SYNTH_AUS, size=rng.integers(0, 5), replace=False),
                           key=lambda au: int(au[2:])))
        label = EMOTIONS[rng.integers(len(EMOTIONS))] if rng.random() < 0.8 else None
        written_aus = list(aus) if rng.random() < 0.7 else list(aus[:-1])
        text = write_description(label or "neutral", written_aus, rng)
        record = _record(aus, label)
        for candidate in _mutations(text, rng):
            result = checker.check(candidate, record)
            oracle = check_synthesis(candidate, record.aus, record.label)
            assert list(result.problems) == oracle, candidate
            assert len(result.categories) == len(result.problems)
            compared += 1
    assert compared == 60 * 11


@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>Brows up (AU1), (AU2), lids up (AU5), jaw drop (AU26).</think>\n<answer>surprise</answer>", set()),
        ("<think>Brows up (AU1), (AU2), lids up (AU5).</think>\n<answer>surprise</answer>", {checks.MISSING_AUS}),
        ("<think>(AU1) (AU2) (AU5) (AU26) (AU4)</think><answer>surprise</answer>", {checks.EXTRA_AUS}),
        ("<think>(AU1) (AU2) (AU5) (AU26)</think><answer>fear</answer>", {checks.LABEL}),
        ("<think>(AU1) (AU2) (AU5) (AU26)</think><answer>Surprised</answer>", {checks.LABEL}),
        ("<think>(AU1) (AU2) (AU5) (AU26)</think>", {checks.ANSWER, checks.FORMAT}),
        ("<answer>surprise</answer>", {checks.THINK, checks.MISSING_AUS, checks.FORMAT}),
        ("<think> </think><answer>surprise</answer>", {checks.THINK, checks.MISSING_AUS}),
        ("<think>(AU1) (AU2) (AU5) (AU26)</think><answer> </answer>", {checks.ANSWER}),
        ("So: <think>(AU1) (AU2) (AU5) (AU26)</think><answer>surprise</answer>", {checks.FORMAT}),
    ],
)
def test_problem_categories(text, expected):
    result = _checker().check(text, _record())
    assert set(result.categories) == expected
    assert result.passed == (not expected)


def test_au_f1_mode_uses_the_threshold():
    record = _record()  # truth {1, 2, 5, 26}
    three_of_four = "<think>(AU1) (AU2) (AU5)</think><answer>surprise</answer>"  # p = 1, r = 3/4: F1 = 6/7
    assert _checker(check_aus="f1", au_f1_threshold=0.85).check(three_of_four, record).passed
    strict = _checker(check_aus="f1", au_f1_threshold=0.86).check(three_of_four, record)
    assert strict.categories == (checks.AU_F1,)
    assert "0.86" in strict.problems[0] and "AU26" in strict.problems[0]
    nothing = "<think>The face is calm.</think><answer>surprise</answer>"  # no AU named: F1 0
    assert _checker(check_aus="f1", au_f1_threshold=0.0).check(nothing, record).passed
    assert not _checker(check_aus="f1", au_f1_threshold=0.01).check(nothing, record).passed
    # Exact mode rejects what F1 mode accepts.
    assert not _checker().check(three_of_four, record).passed


def test_au_check_off_and_label_check_off():
    record = _record()
    wrong_aus_and_label = "<think>(AU4) (AU7)</think><answer>anger</answer>"
    assert _checker(check_aus="off", check_label=False).check(wrong_aus_and_label, record).passed
    assert set(_checker(check_aus="off").check(wrong_aus_and_label, record).categories) == {checks.LABEL}
    assert set(_checker(check_label=False).check(wrong_aus_and_label, record).categories) == {
        checks.MISSING_AUS, checks.EXTRA_AUS}
    # Tags stay required whatever else is switched off.
    assert not _checker(check_aus="off", check_label=False).check("anger", record).passed


def test_records_without_aus_or_label_skip_those_checks():
    answer = "<think>The lip corners rise (AU12).</think><answer>happiness</answer>"
    emotion_only = _record(aus=(), label="happiness")
    au_only = _record(aus=("AU12",), label=None)
    assert _checker().check(answer, emotion_only).passed
    assert _checker().check(answer, au_only).passed


def test_format_rule_can_be_relaxed():
    text = "Here it is: <think>(AU1) (AU2) (AU5) (AU26)</think><answer>surprise</answer>"
    assert not _checker().check(text, _record()).passed
    assert _checker(require_format=False).check(text, _record()).passed


def test_hedge_words_whole_words_only():
    record = _record(aus=("AU9",), label="disgust")
    checker = _checker(ban_hedges=True)
    clean = ("<think>The nose wrinkles (AU9), another sign of distaste; nothing else moves.</think>"
             "<answer>disgust</answer>")
    assert checker.check(clean, record).passed  # "nose", "another", "nothing" hold no banned word
    for hedge in ("not", "No", "maybe", "without", "Perhaps"):
        text = f"<think>The nose wrinkles (AU9), {hedge} a smile.</think><answer>disgust</answer>"
        result = checker.check(text, record)
        assert result.categories == (checks.HEDGE,), hedge
        assert repr(hedge.lower()) in result.problems[0]
    contraction = "<think>The nose wrinkles (AU9); it isn't a smile.</think><answer>disgust</answer>"
    assert checker.check(contraction, record).categories == (checks.HEDGE,)
    # Off by default; a custom list replaces the default one.
    hedged = "<think>The nose wrinkles (AU9), maybe.</think><answer>disgust</answer>"
    assert _checker().check(hedged, record).passed
    custom = _checker(ban_hedges=True, hedge_words=("possibly",))
    assert custom.check(hedged, record).passed
    assert not custom.check(hedged.replace("maybe", "possibly"), record).passed


def test_control_tokens_are_rejected():
    text = "<think>(AU1) (AU2) (AU5) (AU26) <|im_start|></think><answer>surprise</answer>"
    result = _checker().check(text, _record())
    assert result.categories == (checks.FORMAT,)
    assert "<|im_start|>" in result.problems[0]


def test_description_key_ignores_case_and_spacing():
    assert checks.description_key(" <think>A  b</think>\n<answer>x</answer>") == checks.description_key(
        "<think>a b</think> <answer>X</answer>")
    assert checks.description_key("<think>a b</think>") != checks.description_key("<think>a c</think>")


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("check_aus", "loose", "config.synth.check_aus = 'loose' is not one of exact, f1, off"),
        ("au_f1_threshold", 1.5, "config.synth.au_f1_threshold = 1.5 must be in [0, 1]"),
        ("max_attempts", 0, "config.synth.max_attempts = 0 must be an integer >= 1"),
        ("feedback_history", -1, "config.synth.feedback_history = -1 must be an integer >= 0"),
        ("temperature", float("inf"), "config.synth.temperature = inf must be a finite number > 0"),
        ("prompt_variant", "long", "config.synth.prompt_variant = 'long' is not one of"),
        ("hedge_words", ("no way",), "are not words"),
    ],
)
def test_settings_reject_bad_values(field, value, message):
    with pytest.raises(ConfigError) as info:
        SynthSettings(**{field: value})
    assert message in str(info.value)


def test_settings_from_the_shipped_config():
    import importlib

    config = importlib.import_module("configs.synth").get_config()
    config.synth.hedge_words = " Maybe, perhaps ,"
    config.synth.known_jsonl = "a.jsonl,b.jsonl"
    settings = SynthSettings.from_config(config)
    assert settings.hedge_words == ("maybe", "perhaps")
    assert settings.known_jsonl == ("a.jsonl", "b.jsonl")
    assert settings.max_attempts == 6 and settings.greedy and settings.check_aus == "exact"
    assert settings.output_fingerprint()["temperature"] is None  # greedy: the temperature is unused
