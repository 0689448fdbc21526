"""Tests of the synthetic head-phantom dataset (generator, datamodule, CLI)."""

import hashlib
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from anomalib_skipts.data import HeadPhantom, generate_head_phantom
from anomalib_skipts.data.phantom import main, phantom_image_seed, render_head_phantom

REPO = Path(__file__).resolve().parents[2]
SMALL = {"num_train": 6, "num_test_normal": 4, "num_test_abnormal": 4, "image_size": 64, "seed": 3}
TINY = {"num_train": 2, "num_test_normal": 1, "num_test_abnormal": 1, "image_size": 32}


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _names(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


@pytest.fixture(scope="module")
def small_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_head_phantom(tmp_path_factory.mktemp("phantom") / "head", **SMALL)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image_size", [32, 64, 96])
def test_render_lesion_inside_brain_and_normal_without_lesion(image_size: int) -> None:
    for seed in range(12):
        normal = render_head_phantom(seed, image_size, lesion=False)
        assert normal.image.shape == (image_size, image_size)
        assert normal.image.dtype == np.uint8
        assert not normal.mask.any()
        # No hyperdense (lesion-like) pixel inside a normal brain; the skull is brighter than the brain.
        assert normal.image[normal.brain].max() < 155
        assert normal.image[~normal.brain].max() > 200

        abnormal = render_head_phantom(seed, image_size, lesion=True)
        mask, brain = abnormal.mask, abnormal.brain
        assert mask.sum() >= 4
        assert not (mask & ~brain).any(), "the lesion must lie inside the brain"
        assert abnormal.image[mask].mean() > abnormal.image[brain & ~mask].mean() + 25


def test_render_is_deterministic() -> None:
    a = render_head_phantom([1, 2, 3], 64, lesion=True)
    b = render_head_phantom([1, 2, 3], 64, lesion=True)
    c = render_head_phantom([1, 2, 4], 64, lesion=True)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


# --------------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------------


def test_layout_counts_and_formats(small_root: Path) -> None:
    assert _names(small_root) == ["ground_truth", "phantom.json", "test", "train"]
    assert _names(small_root / "train/good") == [f"{i:03d}.png" for i in range(6)]
    assert _names(small_root / "test/good") == [f"{i:03d}.png" for i in range(4)]
    assert _names(small_root / "test/lesion") == [f"{i:03d}.png" for i in range(4)]
    assert _names(small_root / "ground_truth/lesion") == [f"{i:03d}_mask.png" for i in range(4)]
    for path in small_root.rglob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "L"
            assert image.size == (64, 64)
    for path in (small_root / "ground_truth/lesion").iterdir():
        values = set(np.unique(np.asarray(Image.open(path))).tolist())
        assert values == {0, 255}
    metadata = json.loads((small_root / "phantom.json").read_text())
    assert metadata["complete"] is True
    assert metadata["params"] == {"format_version": 1, **SMALL}


def test_files_match_rendering_and_masks_lie_on_the_lesions(small_root: Path) -> None:
    for folder, lesion in (("train/good", False), ("test/good", False), ("test/lesion", True)):
        for path in sorted((small_root / folder).iterdir()):
            sample = render_head_phantom(phantom_image_seed(3, folder, int(path.stem)), 64, lesion=lesion)
            image = np.asarray(Image.open(path))
            assert np.array_equal(image, sample.image)
            if lesion:
                mask = np.asarray(Image.open(small_root / "ground_truth/lesion" / f"{path.stem}_mask.png")) > 0
                assert np.array_equal(mask, sample.mask)
                assert mask.any()
                assert not (mask & ~sample.brain).any()
                assert image[mask].mean() > image[sample.brain & ~mask].mean() + 25


def test_same_seed_same_bytes_different_seed_different_images(tmp_path: Path) -> None:
    a = _tree_hashes(generate_head_phantom(tmp_path / "a", **TINY, seed=7))
    b = _tree_hashes(generate_head_phantom(tmp_path / "b", **TINY, seed=7))
    c = _tree_hashes(generate_head_phantom(tmp_path / "c", **TINY, seed=8))
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if name.startswith(("train/", "test/")))


def test_images_do_not_depend_on_the_other_counts(tmp_path: Path) -> None:
    few = generate_head_phantom(tmp_path / "few", **TINY)
    more = generate_head_phantom(tmp_path / "more", **{**TINY, "num_train": 3, "num_test_abnormal": 2})
    for name in ("train/good/000.png", "train/good/001.png", "test/good/000.png", "test/lesion/000.png"):
        assert (few / name).read_bytes() == (more / name).read_bytes()


def test_idempotent(tmp_path: Path) -> None:
    root = generate_head_phantom(tmp_path / "head", **TINY)
    assert isinstance(root, Path)
    stamps = {path: path.stat().st_mtime_ns for path in root.rglob("*")}
    assert generate_head_phantom(str(tmp_path / "head"), **TINY) == root
    assert {path: path.stat().st_mtime_ns for path in root.rglob("*")} == stamps


def test_changed_parameters_raise_then_overwrite(tmp_path: Path) -> None:
    root = generate_head_phantom(tmp_path / "head", **{**TINY, "num_train": 3})
    with pytest.raises(FileExistsError, match=r"num_train: existing=3, requested=2.*overwrite=True"):
        generate_head_phantom(root, **TINY)
    with pytest.raises(FileExistsError, match="seed"):
        generate_head_phantom(root, **{**TINY, "num_train": 3}, seed=1)
    generate_head_phantom(root, **TINY, overwrite=True)
    assert _names(root / "train/good") == ["000.png", "001.png"]  # stale files removed
    assert json.loads((root / "phantom.json").read_text())["params"]["num_train"] == 2


def test_foreign_folder_is_protected(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a head phantom dataset"):
        generate_head_phantom(root, **TINY)
    generate_head_phantom(root, **TINY, overwrite=True)
    assert (root / "notes.txt").read_text() == "keep me"
    assert (root / "phantom.json").is_file()


def test_damaged_dataset_is_regenerated(tmp_path: Path) -> None:
    root = generate_head_phantom(tmp_path / "head", **TINY)
    before = _tree_hashes(root)
    (root / "test/lesion/000.png").unlink()
    generate_head_phantom(root, **TINY)
    assert _tree_hashes(root) == before


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("num_train", 0),
        ("num_test_normal", -1),
        ("num_test_abnormal", 0),
        ("num_train", 2.0),
        ("num_train", True),
        ("image_size", 31),
        ("image_size", "64"),
        ("seed", -1),
    ],
)
def test_bad_arguments(tmp_path: Path, name: str, value: object) -> None:
    with pytest.raises(ValueError, match=name):
        generate_head_phantom(tmp_path / "head", **{**TINY, name: value})
    with pytest.raises(ValueError, match=name):
        HeadPhantom(root=tmp_path / "head", **{**TINY, name: value})
    assert not (tmp_path / "head").exists()


# --------------------------------------------------------------------------------------------------
# Datamodule
# --------------------------------------------------------------------------------------------------


def test_datamodule_batches_labels_and_masks(small_root: Path) -> None:
    datamodule = HeadPhantom(root=small_root, **SMALL, train_batch_size=4, eval_batch_size=8, num_workers=0)
    datamodule.prepare_data()  # no-op: same parameters
    datamodule.setup()
    assert datamodule.name == "head_phantom"
    assert datamodule.task == "segmentation"
    assert len(datamodule.train_data) == 6
    assert len(datamodule.val_data) + len(datamodule.test_data) == 8

    train_batch = next(iter(datamodule.train_dataloader()))
    assert train_batch.image.shape == (4, 3, 64, 64)
    assert not train_batch.gt_label.any()

    # Folder pairs test/lesion/NNN.png with ground_truth/lesion/NNN_mask.png (sorted order + stem check).
    for dataset in (datamodule.val_data, datamodule.test_data):
        for row in dataset.samples.itertuples():
            image_path = Path(row.image_path)
            if image_path.parent.name == "lesion":
                assert row.label_index == 1
                assert Path(row.mask_path) == small_root / "ground_truth/lesion" / f"{image_path.stem}_mask.png"
            else:
                assert row.label_index == 0
                assert row.mask_path == ""

    seen_abnormal = 0
    for loader in (datamodule.val_dataloader(), datamodule.test_dataloader()):
        for batch in loader:
            for image, label, mask, image_path in zip(
                batch.image, batch.gt_label, batch.gt_mask, batch.image_path, strict=True
            ):
                image_path = Path(image_path)
                is_lesion = image_path.parent.name == "lesion"
                assert bool(label) == is_lesion
                if not is_lesion:
                    assert not mask.any()
                    continue
                seen_abnormal += 1
                truth = render_head_phantom(phantom_image_seed(3, "test/lesion", int(image_path.stem)), 64, lesion=True)
                mask = mask.numpy().astype(bool)
                assert np.array_equal(mask, truth.mask)
                gray = image[0].numpy() * 255
                assert gray[mask].mean() > gray[truth.brain & ~mask].mean() + 25
    assert seen_abnormal == 4


def test_datamodule_setup_generates_missing_data(tmp_path: Path) -> None:
    datamodule = HeadPhantom(root=tmp_path / "head", **TINY, seed=1, split_seed=5, eval_batch_size=2)
    assert datamodule.seed == 5
    assert datamodule.phantom_seed == 1
    datamodule.setup()  # without prepare_data()
    assert (tmp_path / "head/phantom.json").is_file()
    assert len(datamodule.train_data) == 2


def test_yaml_config_instantiates(tmp_path: Path) -> None:
    config = yaml.safe_load((REPO / "datamodules/phantom.yaml").read_text())
    module_name, class_name = config["class_path"].rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    assert cls is HeadPhantom
    datamodule = cls(**{**config["init_args"], "root": tmp_path / "head"})
    assert datamodule.train_batch_size == config["init_args"]["train_batch_size"]
    assert datamodule.num_workers == 0
    assert not (tmp_path / "head").exists()  # nothing is written before prepare_data()


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--root", str(tmp_path / "cli"), "--num-train", "2", "--num-test-normal", "1"]
    args += ["--num-test-abnormal", "1", "--image-size", "32", "--seed", "4"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Wrote 4 images and 1 masks" in out
    assert str((tmp_path / "cli").resolve()) in out
    assert len(list((tmp_path / "cli").rglob("*.png"))) == 5

    assert main(args) == 0
    assert "Up to date" in capsys.readouterr().out

    with pytest.raises(SystemExit) as excinfo:
        main([*args[:-1], "5"])
    assert excinfo.value.code == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args[:-1], "5", "--overwrite"]) == 0

    with pytest.raises(SystemExit) as excinfo:
        main(["--root", str(tmp_path / "bad"), "--image-size", "16"])
    assert excinfo.value.code == 2
    assert "image_size" in capsys.readouterr().err


def test_image_size_as_anomalib_passes_it_a_square_pair(tmp_path: Path) -> None:
    # anomalib's get_datamodule turns every image_size into a tuple
    assert HeadPhantom(root=tmp_path, image_size=(64, 64)).image_size == 64
    with pytest.raises(ValueError, match=r"must be square .*\(64, 32\)"):
        HeadPhantom(root=tmp_path, image_size=(64, 32))
