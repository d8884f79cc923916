"""What the absl launchers share: one-line failures, multi-host start-up, stage dispatch.

Kept free of JAX imports at module level so that flag and config errors are reported in well under
a second.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn, Sequence

from absl import flags

EXIT_USAGE = 2  # Bad flags or config.
EXIT_UNAVAILABLE = 3  # The stage has not landed in this version.


def fail(message: str, exit_code: int = EXIT_USAGE) -> NoReturn:
    """Ends the process with one line on stderr (no traceback: the message says what to fix)."""
    print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr)
    sys.exit(exit_code)


def parse_flags_or_fail(argv: Sequence[str]) -> list[str]:
    """absl flag parsing whose errors (unknown flag, unknown config key, unparsable value) are one line."""
    try:
        remaining = flags.FLAGS(argv)
        if "config" in flags.FLAGS and flags.FLAGS["config"].value is not None:
            list(flags.FLAGS["config"].value.keys())  # The config file loads lazily: surface its errors now.
        return remaining
    except flags.UnrecognizedFlagError as error:
        name = getattr(error, "flagname", "") or ""
        if name.startswith("config."):
            fail(f"config override error: the config has no key {name[len('config.'):]!r} (--{name})")
        fail(f"flag error: {_one_line(str(error))}")
    except flags.Error as error:
        fail(f"flag error: {_one_line(str(error))}")
    except (AttributeError, KeyError) as error:  # ml_collections' report of an override with an unknown key.
        key = str(error).strip("\"' ")
        culprits = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.") and key in a.split("=", 1)[0]]
        where = f" ({culprits[0]})" if culprits else ""
        fail(f"config override error: the config has no key {key!r}{where}")
    except (TypeError, ValueError, OSError) as error:
        fail(f"config error: {_one_line(str(error))}")


def _one_line(text: str) -> str:
    """Collapses a message to one line; for an embedded traceback, keeps only its final line."""
    if "Traceback (most recent call last)" in text:
        text = text.strip().splitlines()[-1]
    return " ".join(text.split())


def initialize_distributed() -> None:
    """Joins a multi-host job when one is configured; a single host needs (and does) nothing."""
    from facialr1_jax.parallel import distributed

    distributed.initialize_if_multihost()


def quiet_library_logs() -> None:
    """Keeps our own INFO lines and drops the libraries' (orbax logs several lines per checkpoint
    write at INFO through absl). `--verbosity=1` or `--v=1` still shows everything."""
    from absl import logging as absl_logging

    chosen = any(name in flags.FLAGS and flags.FLAGS[name].present for name in ("verbosity", "v"))
    if not chosen:
        absl_logging.set_verbosity(absl_logging.WARNING)
        logging.getLogger("facialr1_jax").setLevel(logging.INFO)


def run(config, workdir: str) -> dict:
    """Starts JAX (multi-host if configured), then runs the stage the config names."""
    from facialr1_jax import stages

    try:
        stage_fn = stages.resolve_stage(config.stage)
    except stages.StageUnavailableError as error:
        fail(str(error), EXIT_UNAVAILABLE)
    initialize_distributed()
    import jax

    quiet_library_logs()
    if jax.process_index() != 0:
        logging.getLogger("facialr1_jax").setLevel(logging.WARNING)  # Only process 0 narrates the run.
    os.makedirs(workdir, exist_ok=True)
    return stage_fn(config, workdir)
