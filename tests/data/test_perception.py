"""The perception corpus of stage 0: new identities, broad AU sets, replies without emotion words."""

import json

import numpy as np
import pytest

from facialr1_jax.data import demo, expressions, perception
from facialr1_jax.data import tokenizer as tokenizer_lib
from facialr1_jax.data.examples import EncodingConfig
from facialr1_jax.data.synthface import RENDERED_AUS
from facialr1_jax.fea.records import read_jsonl


def test_no_identity_of_the_builtin_splits_occurs_in_the_corpus():
    # The demo's default sizes and seed (configs/base.py), and the corpus's default train/eval sizes.
    builtin = {face.identity_seed for split, count in (("sft", 300), ("rl", 4000), ("test", 500))
               for face in demo.plan_split(split, count, 0)}
    corpus = {face.identity_seed for split, count in (("train", 64000), ("eval", 500))
              for face in perception.plan_faces(split, count, 0)}
    assert len(builtin) > 4700 and len(corpus) > 64000
    assert not builtin & corpus
    assert min(corpus) >= perception.IDENTITY_SEED_BASE > max(builtin)


def test_train_and_eval_faces_are_different_people():
    train = {face.identity_seed for face in perception.plan_faces("train", 20000, 0)}
    held_out = {face.identity_seed for face in perception.plan_faces("eval", 500, 0)}
    assert not train & held_out


def test_faces_cover_every_rendered_au_alone_and_in_sets():
    faces = perception.plan_faces("train", 4000, 3)
    kinds = {face.kind for face in faces}
    assert kinds == set(perception.FACE_KINDS)
    singles = {face.aus for face in faces if face.kind == "single"}
    assert {aus[0] for aus in singles if aus} == set(RENDERED_AUS)
    sizes = [len(face.aus) for face in faces if face.kind == "random_set"]
    assert min(sizes) >= 1 and max(sizes) >= 5
    one_sided = [face for face in faces if any(key[0] in "RL" for key in face.intensities)]
    assert len(one_sided) > 200
    # Labels follow the demo's threshold: traces below it are drawn but never labelled.
    threshold = expressions.ExpressionConfig().label_threshold
    for face in faces:
        assert face.aus == expressions.labelled_aus(face.intensities, threshold)


def test_random_sets_never_combine_exclusive_movements():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        chosen = perception.compatible_set(rng, 5)
        for group in perception.EXCLUSIVE_GROUPS:
            assert len(group.intersection(chosen)) <= 1, (chosen, group)


def test_no_reply_or_clause_names_an_emotion():
    for clauses in list(perception.AU_CLAUSES.values()) + list(perception.ONE_SIDED_CLAUSES.values()):
        assert clauses and not any(perception.has_emotion_word(clause) for clause in clauses)
    assert perception.has_emotion_word("the lip corners rise into a smile")
    rng = np.random.default_rng(1)
    for face in perception.plan_faces("train", 1500, 1):
        _, instruction, reply = perception.perception_turn(face.aus, rng, face.intensities)
        assert not perception.has_emotion_word(instruction + " " + reply), reply


def test_replies_name_exactly_the_labelled_aus():
    rng = np.random.default_rng(2)
    seen = set()
    for face in perception.plan_faces("train", 1500, 2):
        kind, instruction, reply = perception.perception_turn(face.aus, rng, face.intensities)
        seen.add(kind)
        if kind in ("describe", "list"):
            assert perception.predicted_aus(reply) == frozenset(face.aus), (face.aus, reply)
        else:
            asked = perception.predicted_aus(instruction)
            assert len(asked) == 1
            assert reply == ("Yes." if asked <= frozenset(face.aus) else "No.")
    assert seen == set(perception.TURN_KINDS)


def test_descriptions_vary_and_read_top_to_bottom():
    rng = np.random.default_rng(3)
    texts = {perception.describe(("AU4", "AU12"), rng) for _ in range(40)}
    assert len(texts) >= 4
    for text in texts:
        assert text.index("(AU4)") < text.index("(AU12)") and text[0].isupper() and text.endswith(".")
    assert perception.describe((), rng) in perception.NO_AU_REPLIES
    assert perception.au_list(()) == perception.NO_AU_LIST
    one_sided = perception.describe(("AU12",), rng, {"R12": 0.8})
    assert "one" in one_sided.lower() or "side" in one_sided.lower()


def test_corpus_builds_once_as_valid_fea_records(tmp_path):
    paths = perception.ensure_corpus(tmp_path, num_train=40, num_eval=8, image_size=56, seed=5, workers=0,
                                     progress=False)
    again = perception.ensure_corpus(tmp_path, num_train=40, num_eval=8, image_size=56, seed=5, workers=0,
                                     progress=False)
    assert again.root == paths.root
    records = read_jsonl(paths.train).records
    assert len(records) == 40 and len(read_jsonl(paths.eval).records) == 8
    planned = perception.plan_faces("train", 40, 5)
    for record, face in zip(records, planned):
        assert record.dataset == perception.DATASET and record.labels == () and record.aus == face.aus
        assert (paths.images / record.images[0]).is_file()
        assert record.meta_info["identity_seed"] == face.identity_seed
    stamp = json.loads((paths.root / "stamp.json").read_text())
    assert stamp["num_train"] == 40 and stamp["corpus_version"] == perception.CORPUS_VERSION


def test_a_folder_with_a_foreign_stamp_is_not_reused(tmp_path):
    paths = perception.ensure_corpus(tmp_path, num_train=4, num_eval=2, image_size=56, workers=0, progress=False)
    (paths.root / "stamp.json").write_text("{}")
    with pytest.raises(FileExistsError, match="stamp.json"):
        perception.ensure_corpus(tmp_path, num_train=4, num_eval=2, image_size=56, workers=0, progress=False)


def test_encoded_turn_trains_on_the_reply_only(tmp_path):
    paths = perception.ensure_corpus(tmp_path, num_train=6, num_eval=2, image_size=112, workers=0,
                                     progress=False)
    record = read_jsonl(paths.train).records[0]
    tokenizer = tokenizer_lib.load_tokenizer()
    encode = perception.EncodePerception(tokenizer, EncodingConfig(max_prompt_tokens=96, max_target_tokens=96))
    image = (paths.images / record.images[0]).read_bytes()
    example = encode({"record": record, "image_bytes": (image,)}, np.random.default_rng(0))
    reply = tokenizer.decode(example.input_ids[example.prompt_length:].tolist(), skip_special_tokens=True)
    assert example.label_mask[:example.prompt_length].sum() == 0
    assert example.label_mask[example.prompt_length:].sum() == len(example.input_ids) - example.prompt_length
    assert not perception.has_emotion_word(reply) and reply.strip()
