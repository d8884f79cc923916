"""Synthesis prompts: ground truth, cumulative feedback, history limit and the token budget."""

from facialr1_jax.fea.profiles import labels_for
from facialr1_jax.fea.prompts import build_feedback, build_synthesis_instruction
from facialr1_jax.synth.attempts import Attempt, RecordJob, quotable
from tests.synth import scripted


def _job(index=0):
    record = scripted.make_records(index + 1)[index]
    return RecordJob(index=index, record=record, images=scripted.record_images(index))


def _attempt(number, answer, problems):
    return Attempt(number=number, answer=answer, problems=tuple(problems), categories=("x",) * len(problems))


def test_first_prompt_is_the_synthesis_instruction():
    job = _job(3)  # synthface: AUs and a label
    text, dropped = job.instruction("compact", 0, lambda _: True)
    record = job.record
    assert text == build_synthesis_instruction(record.question, labels_for(record.dataset), record.aus, record.label,
                                               "compact")
    assert dropped == 0
    assert "AU23 (lip tightener)" in text and "must be this emotion: anger" in text


def test_feedback_accumulates_and_history_keeps_the_latest():
    job = _job(0)
    job.attempts.append(_attempt(1, "<think>one</think>", ["problem A"]))
    job.attempts.append(_attempt(2, "<think>two</think><answer>x</answer>", ["problem B", "problem C"]))
    base = job.base_instruction("compact")
    first = build_feedback("<think>one</think>", ["problem A"])
    second = build_feedback("<think>two</think><answer>x</answer>", ["problem B", "problem C"])
    assert job.instruction("compact", 0, lambda _: True)[0] == "\n\n".join([base, first, second])
    assert job.instruction("compact", 1, lambda _: True)[0] == "\n\n".join([base, second])
    assert job.instruction("compact", 5, lambda _: True)[0] == "\n\n".join([base, first, second])


def test_oldest_feedback_is_dropped_to_fit_the_budget():
    job = _job(0)
    for number in range(1, 4):
        job.attempts.append(_attempt(number, f"answer {number} " + "word " * 50, [f"problem {number}"]))
    base = job.base_instruction("compact")
    sections = job.feedback_sections(0)
    limit = len("\n\n".join([base, *sections[1:]]))  # room for the two latest sections, not three
    text, dropped = job.instruction("compact", 0, lambda t: len(t) <= limit)
    assert dropped == 1
    assert "answer 1 " not in text and "answer 2 " in text and "answer 3 " in text
    text, dropped = job.instruction("compact", 0, lambda t: len(t) <= len(base))
    assert (text, dropped) == (base, 3)
    assert job.instruction("compact", 0, lambda t: False) == (None, 0)


def test_token_budget_of_the_encoder():
    job = _job(1)
    encoder = scripted.encoder(max_prompt_tokens=400)
    base = job.base_instruction("compact")
    assert encoder.fits(job, base)
    encoded = encoder.encode(job, base)
    assert len(encoded.input_ids) <= 400 and encoded.instruction == base
    assert not encoder.fits(job, base + " word" * 400)
    tight = scripted.encoder(max_prompt_tokens=len(encoded.input_ids) - 1)
    assert not tight.fits(job, base)


def test_quoted_answers_lose_control_tokens():
    assert quotable("<think>a<|im_end|>b</think><|endoftext|>") == "<think>ab</think>"
    job = _job(0)
    job.attempts.append(_attempt(1, "<think>x</think><|im_start|>assistant", ["bad"]))
    text, _ = job.instruction("compact", 0, lambda _: True)
    assert "<|im_start|>" not in text and "<think>x</think>assistant" in text
    scripted.encoder().encode(job, text)  # a prompt with control tokens would raise here


def test_task_mode_sends_the_training_prompt_without_ground_truth_or_feedback():
    from facialr1_jax.data.examples import default_instruction

    job = _job(3)
    job.attempts.append(_attempt(1, "<think>one</think>", ["problem A"]))
    text, dropped = job.instruction("compact", 0, lambda _: True, mode="task")
    assert text == default_instruction(job.record, "compact") and dropped == 0
    assert "anger" not in text.split("chosen from this list")[0] and "problem A" not in text
    assert job.instruction("compact", 0, lambda _: False, mode="task") == (None, 0)
