"""anomalib's command line with its ``seed_everything`` setting applied.

anomalib 2.7's CLI accepts ``--seed_everything`` and a ``seed_everything:`` key in config files, but
never calls ``seed_everything`` (``anomalib/cli/cli.py`` only declares the argument), so two runs of
``anomalib train --config configs/demo_cpu.yaml`` initialise and shuffle differently and give
different AUROCs. This entry point reads the seed the way the CLI would (config files in order, then
``--seed_everything`` on the command line; the last one wins), seeds Python, NumPy and torch, and then
runs anomalib's own, unmodified CLI with the same arguments.

Example:
    .. code-block:: bash

        python -m anomalib_skipts.seeded_cli train --config configs/demo_cpu.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

CONFIG_FLAGS = ("--config", "-c")
SEED_FLAG = "--seed_everything"


def _seed_value(value: object, source: str) -> int | None:
    """Interpret a ``seed_everything`` value: an int seeds, ``true``/``false``/``null`` do not.

    Raises:
        SystemExit: For a value that is neither, naming where it came from.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    msg = f"seed_everything={value!r} in {source} is not allowed: use an integer seed (or true for a random one)."
    raise SystemExit(msg)


def find_seed(argv: Sequence[str]) -> int | None:
    """Return the seed that anomalib's CLI arguments ask for, or ``None`` for none (a random seed).

    Args:
        argv: The CLI arguments after the program name, e.g. ``["train", "--config", "demo.yaml"]``.

    Returns:
        The integer seed, or ``None``.

    Raises:
        SystemExit: If a config file is missing or unreadable, or a seed is not an integer.
    """
    seed: int | None = None
    arguments = list(argv)
    for index, argument in enumerate(arguments):
        flag, equals, inline = argument.partition("=")
        if flag not in (*CONFIG_FLAGS, SEED_FLAG):
            continue
        if equals:
            value = inline
        elif index + 1 < len(arguments):
            value = arguments[index + 1]
        else:
            msg = f"{flag} needs a value."
            raise SystemExit(msg)
        if flag == SEED_FLAG:
            seed = _seed_value(yaml.safe_load(value), SEED_FLAG)
            continue
        path = Path(value)
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            msg = f"{flag} {value}: cannot read the config file ({error})."
            raise SystemExit(msg) from error
        if isinstance(config, dict) and "seed_everything" in config:
            seed = _seed_value(config["seed_everything"], str(path))
    return seed


def main(argv: Sequence[str] | None = None) -> None:
    """Seed as the arguments ask, then run ``anomalib``'s CLI with them."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    seed = find_seed(arguments)
    if seed is not None:
        from lightning.pytorch import seed_everything

        seed_everything(seed, workers=True)
    from anomalib.cli.cli import main as anomalib_main

    sys.argv = ["anomalib", *arguments]
    anomalib_main()


if __name__ == "__main__":
    main()
