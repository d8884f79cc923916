"""The facial emotion analysis domain, in pure Python (no JAX anywhere in this package).

emotions  the eight emotion nouns and label normalisation
aus       AU names (the 30 prompt AUs, all FACS codes) and the source AU-code parser
profiles  per-dataset label sets and evaluated AU subsets
prompts   instruction, synthesis and feedback text
records   the FEA JSONL schema: validation with file/line/field errors, reading, atomic writing
answers   the reference semantics of every reward and metric (the oracle for the JAX rewards)
"""

from facialr1_jax.fea.answers import (
    AUF1Report,
    SynthesisCheck,
    accuracy_reward,
    au_f1,
    au_reward,
    check_synthesis,
    eval_aus,
    eval_emotion,
    eval_emotion_correct,
    extract_answer_last,
    extract_think_first,
    format_reward,
    inspect_synthesis,
    reward_aus,
    total_reward,
)
from facialr1_jax.fea.aus import (
    FACS_AU_NAMES,
    PROMPT_AUS,
    AUCodeError,
    au_number,
    parse_au_codes,
    sort_aus,
)
from facialr1_jax.fea.emotions import (
    EMOTIONS,
    UnknownLabelError,
    normalize_emotion,
    try_normalize_emotion,
)
from facialr1_jax.fea.profiles import (
    PROFILES,
    DatasetProfile,
    UnknownDatasetError,
    find_profile,
    get_profile,
    labels_for,
)
from facialr1_jax.fea.prompts import (
    DEFAULT_QUESTION,
    SYSTEM_PROMPT,
    build_feedback,
    build_instruction,
    build_synthesis_instruction,
    feedback_for_answer,
    synthesis_problems,
)
from facialr1_jax.fea.records import (
    FEARecord,
    ImagePathError,
    ReadResult,
    RecordError,
    RecordProblem,
    parse_record,
    read_jsonl,
    resolve_image_path,
    write_jsonl,
)

__all__ = [
    "DEFAULT_QUESTION",
    "EMOTIONS",
    "FACS_AU_NAMES",
    "PROFILES",
    "PROMPT_AUS",
    "SYSTEM_PROMPT",
    "AUCodeError",
    "AUF1Report",
    "DatasetProfile",
    "FEARecord",
    "ImagePathError",
    "ReadResult",
    "RecordError",
    "RecordProblem",
    "SynthesisCheck",
    "UnknownDatasetError",
    "UnknownLabelError",
    "accuracy_reward",
    "au_f1",
    "au_number",
    "au_reward",
    "build_feedback",
    "build_instruction",
    "build_synthesis_instruction",
    "check_synthesis",
    "eval_aus",
    "eval_emotion",
    "eval_emotion_correct",
    "extract_answer_last",
    "extract_think_first",
    "feedback_for_answer",
    "find_profile",
    "format_reward",
    "get_profile",
    "inspect_synthesis",
    "labels_for",
    "normalize_emotion",
    "parse_au_codes",
    "parse_record",
    "read_jsonl",
    "resolve_image_path",
    "reward_aus",
    "sort_aus",
    "synthesis_problems",
    "total_reward",
    "try_normalize_emotion",
    "write_jsonl",
]
