"""Mask files: which file names are masks, and which image each mask belongs to.

Masks live in a mask folder, named like their image (``x.png``) or with the mask suffix, or beside
the images as ``<image stem><mask_suffix>[_<n>].<ext>`` (BUSI's ``benign (4)_mask.png`` and
``benign (4)_mask_1.png``); several masks of one image are OR-ed when read
(:func:`~anomalib_skipts.data.readers.read_mask`).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from anomalib.data.utils import LabelName

from anomalib_skipts.data.problems import DatasetProblem

__all__ = ["DEFAULT_MASK_SUFFIX", "mask_stem", "match_masks"]

logger = logging.getLogger(__name__)

#: Suffix that marks a mask file beside its image (``x.png`` -> ``x_mask.png``, ``x_mask_1.png``).
DEFAULT_MASK_SUFFIX = "_mask"


def mask_stem(stem: str, mask_suffix: str | None) -> str | None:
    """Return the image stem a mask file name refers to, or ``None`` if it is not a mask name.

    Args:
        stem: File name without extension, e.g. ``"benign (4)_mask_1"``.
        mask_suffix: Mask suffix, e.g. ``"_mask"``; ``None`` disables mask detection.

    Returns:
        The image stem (``"benign (4)"``), or ``None``.
    """
    if not mask_suffix:
        return None
    match = re.fullmatch(rf"(?P<stem>.+?){re.escape(mask_suffix)}(?:_\d+)?", stem, flags=re.IGNORECASE)
    return match.group("stem") if match else None


def match_masks(
    records: dict[Path, tuple[int, str, Path]],
    masks: list[Path],
    mask_suffix: str | None,
    mask_dirs: set[Path],
    problems: list[DatasetProblem],
) -> dict[Path, list[Path]]:
    """Match each mask to its image: same folder and stem first, else a unique stem anywhere.

    Args:
        records: Every image: ``image -> (label_index, split, its folder)``.
        masks: Every mask file found (beside the images or in the mask folders).
        mask_suffix: Stem suffix of mask files; ``None`` disables it.
        mask_dirs: Resolved dedicated mask folders, whose masks may be named exactly like their image.
        problems: Problems found so far; masks without an image, masks matching several images and
            abnormal images without a mask (while others have one) are appended.

    Returns:
        The masks of each abnormal image (masks of normal images are ignored, with one log line).
    """
    by_folder_stem: dict[tuple[Path, str], Path] = {}
    by_stem: dict[str, list[Path]] = {}
    for image in records:
        by_folder_stem[(image.parent, image.stem.lower())] = image
        by_stem.setdefault(image.stem.lower(), []).append(image)
    matched: dict[Path, list[Path]] = {}
    for mask in masks:
        stem = mask_stem(mask.stem, mask_suffix)
        in_mask_dir = any(mask.resolve().is_relative_to(folder) for folder in mask_dirs)
        if stem is None and in_mask_dir:
            stem = mask.stem  # mask folder with masks named exactly like their images
        if stem is None:
            problems.append(DatasetProblem(str(mask), "mask file name does not end in the mask suffix"))
            continue
        image = by_folder_stem.get((mask.parent, stem.lower()))
        if image is None:
            candidates = by_stem.get(stem.lower(), [])
            abnormal = [path for path in candidates if records[path][0] == LabelName.ABNORMAL]
            candidates = abnormal if len(abnormal) == 1 else candidates
            if len(candidates) > 1:
                names = ", ".join(str(path) for path in candidates)
                problems.append(DatasetProblem(str(mask), f"mask matches several images ({names}); rename them"))
                continue
            image = candidates[0] if candidates else None
        if image is None:
            problems.append(DatasetProblem(str(mask), f"mask has no image (no image named {stem}.* was found)"))
            continue
        matched.setdefault(image, []).append(mask)

    abnormal = [image for image, (label, _, _) in records.items() if label == LabelName.ABNORMAL]
    if any(matched.get(image) for image in abnormal):
        for image in abnormal:
            if not matched.get(image):
                problems.append(
                    DatasetProblem(
                        str(image),
                        f"abnormal image has no mask while others have one (expected e.g. "
                        f"{image.stem}{mask_suffix or ''}{image.suffix} beside it or in mask_dir)",
                    ),
                )
    normal_masks = sum(len(masks) for image, masks in matched.items() if records[image][0] == LabelName.NORMAL)
    if normal_masks:
        logger.info("Ignoring %d mask file(s) of normal images (normal images have empty masks).", normal_masks)
    return {image: masks for image, masks in matched.items() if records[image][0] == LabelName.ABNORMAL}
