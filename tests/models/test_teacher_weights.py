"""The teacher's ImageNet weights: torchvision's by default, as in the paper; any timm tag on request."""

import pytest
import timm

from anomalib_skipts.models import SkipTS, SkipTSModel
from anomalib_skipts.models.skip_ts.torch_model import SUPPORTED_BACKBONES, resolve_backbone


@pytest.fixture
def requested(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the names whose pretrained weights timm is asked for, and build them without downloading."""
    names: list[str] = []
    original = timm.create_model

    def create_model(name: str, *args, **kwargs):
        if kwargs.get("pretrained"):
            names.append(name)
            kwargs["pretrained"] = False
        return original(name, *args, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    return names


def test_default_teacher_gets_torchvision_imagenet_weights(requested: list[str]) -> None:
    model = SkipTS()  # the paper's defaults: WideResNet50-2
    assert requested == []  # loaded at the teacher's first use, not at construction
    model.model.load_teacher_weights()
    assert requested == ["wide_resnet50_2.tv_in1k"]
    assert model.model.teacher.feature_extractor.pretrained_cfg["tag"] == "tv_in1k"
    assert model.model.backbone == "wide_resnet50_2.tv_in1k"


@pytest.mark.parametrize("backbone", SUPPORTED_BACKBONES)
def test_every_supported_backbone_defaults_to_torchvision_weights(backbone: str) -> None:
    assert resolve_backbone(backbone) == f"{backbone}.tv_in1k"
    assert f"{backbone}.tv_in1k" in timm.list_pretrained(f"{backbone}.*")


@pytest.mark.parametrize("backbone", ["resnet18.a1_in1k", "resnet18.tv_in1k", "resnet18.gluon_in1k"])
def test_timm_pretrained_tags_are_accepted_and_requested(requested: list[str], backbone: str) -> None:
    model = SkipTSModel(backbone, input_size=(64, 64), pre_trained=True)
    model.load_teacher_weights()
    assert requested == [backbone]
    assert model.teacher.feature_extractor.pretrained_cfg["tag"] == backbone.partition(".")[2]
    # the student mirrors the architecture whatever the weights
    assert model.student.state_dict().keys() == SkipTSModel("resnet18", (64, 64), False).student.state_dict().keys()


def test_unknown_tag_is_refused_with_the_available_ones() -> None:
    with pytest.raises(ValueError, match=r"backbone='resnet18\.bogus'") as error:
        SkipTS(backbone="resnet18.bogus", pre_trained=False, image_size=64)
    message = str(error.value)
    assert "resnet18.tv_in1k" in message
    assert "resnet18.a1_in1k" in message


def test_tag_on_an_unsupported_architecture_is_refused() -> None:
    with pytest.raises(ValueError, match="not a supported four-stage ResNet"):
        SkipTS(backbone="efficientnet_b0.ra_in1k", pre_trained=False, image_size=64)
