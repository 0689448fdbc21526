"""What can be wrong with a dataset on disk, and the one error that lists it all.

Every stage of the data package (listing folders, matching masks, validating files, choosing the
split) collects :class:`DatasetProblem` s instead of raising at the first one, so that a user sees
every problem of a download in one :class:`InvalidDatasetError` and can fix them in one go.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DatasetProblem", "InvalidDatasetError", "SplitError"]


@dataclass(frozen=True)
class DatasetProblem:
    """One thing wrong with a dataset on disk.

    Args:
        path: The offending file or folder (or a labels file, with the row in ``reason``).
        reason: What is wrong, in words a user can act on.
        fatal: ``True`` when leaving the file out cannot help (a missing or empty folder, an
            unreadable labels file): ``skip_invalid`` does not apply.
    """

    path: str
    reason: str
    fatal: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class InvalidDatasetError(ValueError):
    """The dataset on disk has problems; the message lists every one and says how to fix them.

    Args:
        name: Name of the dataset.
        problems: Every problem found.
        hint: Extra help for fatal problems (expected layout, download address).
    """

    def __init__(self, name: str, problems: Sequence[DatasetProblem], hint: str = "") -> None:
        self.problems = list(problems)
        count = len(self.problems)
        lines = [f"{name}: {count} problem{'s' if count != 1 else ''} found in the dataset (nothing was trained):"]
        lines += [f"  - {problem}" for problem in self.problems]
        lines.append("How to fix:")
        if any(problem.fatal for problem in self.problems):
            lines.append(
                "  - check that `root` and the folder arguments point at the unpacked download "
                "(relative paths are resolved from the current working directory)."
            )
            if hint:
                lines += [f"    {line}" for line in hint.strip().splitlines()]
        if any(not problem.fatal for problem in self.problems):
            lines.append(
                "  - remove or replace the files listed above (or correct the labels file), or pass "
                "skip_invalid=True (CLI: --data.skip_invalid true) to leave them out; each file left "
                "out is then logged as a warning."
            )
        super().__init__("\n".join(lines))


class SplitError(ValueError):
    """The requested train/test counts cannot be taken from the images that are available."""
