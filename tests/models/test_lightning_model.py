"""``SkipTS`` as an anomalib module: paper defaults, optimiser, validation and weights."""

from pathlib import Path

import pytest
import timm
import torch
from anomalib import LearningType
from anomalib.pre_processing import PreProcessor
from torch import nn
from torchvision.transforms.v2 import Normalize, Resize

from anomalib_skipts.models import SkipTS, TeacherWeightsError


def test_paper_defaults() -> None:
    model = SkipTS(pre_trained=False)
    assert model.hparams.backbone == "wide_resnet50_2"
    assert model.hparams.num_skips == 2
    assert model.hparams.beta == pytest.approx(0.05)
    assert model.hparams.similarity == "cosine"
    assert model.hparams.mac is True
    assert tuple(model.input_size) == (256, 256)
    transforms = model.pre_processor.transform.transforms
    normalize = next(t for t in transforms if isinstance(t, Normalize))
    assert normalize.mean == [0.485, 0.456, 0.406]
    assert normalize.std == [0.229, 0.224, 0.225]
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(0.005)
    assert group["betas"] == (0.5, 0.999)
    student_ids = {id(p) for p in model.model.student.parameters()}
    assert {id(p) for p in group["params"]} == student_ids
    assert model.learning_type == LearningType.ONE_CLASS
    assert "max_epochs" not in model.trainer_arguments  # epochs come from configs/, not forced on the user


def test_image_size_sets_the_default_pre_processor() -> None:
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=128)
    assert tuple(model.input_size) == (128, 128)
    assert model.model.anomaly_map_generator.image_size == (128, 128)


def test_custom_pre_processor_defines_the_input_size() -> None:
    pre_processor = PreProcessor(transform=Resize((96, 64)))
    model = SkipTS(backbone="resnet18", pre_trained=False, pre_processor=pre_processor)
    assert model.model.anomaly_map_generator.image_size == (96, 64)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"backbone": "not_a_backbone"}, "backbone"),
        ({"backbone": "mobilenetv3_large_100"}, "backbone"),
        ({"num_skips": 5}, "num_skips"),
        ({"beta": -0.1}, "beta"),
        ({"image_size": 100}, "image_size"),
        ({"image_size": (256, 250)}, "image_size"),
        ({"similarity": "l1"}, "similarity"),
        ({"loss_variant": "other"}, "loss_variant"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs: dict, parameter: str) -> None:
    with pytest.raises(ValueError, match=parameter):
        SkipTS(**({"backbone": "resnet18", "pre_trained": False} | kwargs))


def test_training_step_returns_a_differentiable_loss() -> None:
    model = SkipTS(backbone="resnet18", pre_trained=False, image_size=64)
    model.model.train()
    batch = type("Batch", (), {"image": torch.rand(2, 3, 64, 64)})()
    model.log = lambda *args, **kwargs: None  # no trainer attached
    loss = model.training_step(batch)["loss"]
    loss.backward()
    assert all(p.grad is not None for p in model.model.student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in model.model.teacher.parameters())


def _reference_resnet18() -> nn.Module:
    """A timm ResNet-18 with non-trivial batch-norm statistics (a stand-in for ImageNet weights)."""
    reference = timm.create_model("resnet18", pretrained=False).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for bn in (m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.copy_(torch.rand(bn.num_features, generator=generator) - 0.5)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=generator) + 0.5)
    return reference


def _assert_teacher_computes(model: SkipTS, reference: nn.Module) -> None:
    """The teacher's four feature maps are the reference network's stage outputs."""
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        features = reference.maxpool(reference.act1(reference.bn1(reference.conv1(images))))
        expected = []
        for stage in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            features = stage(features)
            expected.append(features)
        actual = model.model.teacher_features(images)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


def test_local_backbone_weights_are_loaded(tmp_path: Path) -> None:
    reference = _reference_resnet18()
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    _assert_teacher_computes(SkipTS(backbone="resnet18", backbone_weights=str(path), image_size=64), reference)
    unfolded = SkipTS(backbone="resnet18", backbone_weights=str(path), image_size=64, fold_batch_norm=False)
    unfolded.model.load_teacher_weights()
    teacher = unfolded.model.teacher.feature_extractor.state_dict()
    assert torch.equal(teacher["layer4.1.conv2.weight"], reference.state_dict()["layer4.1.conv2.weight"])
    assert torch.equal(teacher["bn1.running_var"], reference.state_dict()["bn1.running_var"])


def test_safetensors_backbone_weights_are_loaded(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    reference = _reference_resnet18()
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    _assert_teacher_computes(SkipTS(backbone="resnet18", backbone_weights=path, image_size=64), reference)


def test_backbone_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34", pretrained=False).state_dict(), path)
    model = SkipTS(backbone="resnet18", backbone_weights=path, image_size=64)  # the file is read at first use
    with pytest.raises(ValueError, match="does not fit the teacher backbone"):
        model.model.load_teacher_weights()


def test_missing_backbone_weights_file(tmp_path: Path) -> None:
    model = SkipTS(backbone="resnet18", backbone_weights=tmp_path / "nope.pth", image_size=64)
    with pytest.raises(FileNotFoundError, match="backbone_weights"):
        model.model(torch.rand(1, 3, 64, 64))  # the teacher's first use reads the file


def test_failed_download_names_both_ways_out(monkeypatch: pytest.MonkeyPatch) -> None:
    original = timm.create_model

    def offline_create_model(*args, **kwargs):
        if kwargs.get("pretrained"):
            msg = "Cannot reach the Hugging Face Hub (offline)"
            raise OSError(msg)
        return original(*args, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_create_model)
    model = SkipTS(backbone="resnet18", pre_trained=True, image_size=64)  # construction downloads nothing
    with pytest.raises(TeacherWeightsError) as error:
        model.model.load_teacher_weights()
    message = str(error.value)
    assert "pre_trained=False" in message
    assert "backbone_weights" in message
    assert "offline" in message
    assert isinstance(error.value.__cause__, OSError)


def test_authors_code_loss_variant_requires_cosine_similarity() -> None:
    with pytest.raises(ValueError, match=r"loss_variant='authors_code'.*similarity='cosine'"):
        SkipTS(backbone="resnet18", pre_trained=False, similarity="mse", loss_variant="authors_code")
