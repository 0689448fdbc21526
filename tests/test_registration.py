"""anomalib sees ``SkipTS`` in a fresh interpreter after ``pip install``, at no cost to other programs."""

import subprocess
import sys
import textwrap


def _run(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_get_model_finds_skipts_after_only_importing_anomalib_models() -> None:
    out = _run(
        """
        import sys
        import anomalib.models as models
        assert "anomalib_skipts.models" in sys.modules
        by_name = models.get_model("SkipTS", backbone="resnet18", pre_trained=False, image_size=64)
        by_snake = models.get_model("skip_ts", backbone="resnet18", pre_trained=False, image_size=64)
        config = {"class_path": "SkipTS", "init_args": {"backbone": "resnet18", "pre_trained": False}}
        by_config = models.get_model(config)
        names = (type(by_name).__name__, type(by_snake).__name__, type(by_config).__name__)
        print(*names, "SkipTS" in models.list_models("pascal"))
        """
    )
    assert out == "SkipTS SkipTS SkipTS True"


def test_python_without_anomalib_does_not_pay_for_the_plugin() -> None:
    out = _run(
        """
        import sys, json
        import anomalib_skipts
        print(json.dumps(sorted(m for m in ("torch", "anomalib", "lightning", "timm") if m in sys.modules)))
        """
    )
    assert out == "[]"


def test_importing_the_package_first_also_registers() -> None:
    out = _run(
        """
        from anomalib_skipts.models import SkipTS
        import anomalib.models
        print(anomalib.models.SkipTS is SkipTS)
        """
    )
    assert out == "True"


def test_anomalib_get_datamodule_finds_the_medical_datamodules_by_name(tmp_path) -> None:
    # anomalib benchmark and the tiled ensemble build datamodules with anomalib.data.get_datamodule,
    # which looks the class name up on anomalib.data only.
    out = _run(
        f"""
        import sys
        import anomalib.data as data
        assert "anomalib_skipts.data" in sys.modules
        from anomalib_skipts.data import BMAD, HeadCT, HeadPhantom, VolumeFolder
        phantom = data.get_datamodule(
            {{"class_path": "HeadPhantom", "init_args": {{"root": r"{tmp_path}", "image_size": 32, "num_train": 2}}}}
        )
        print(type(phantom).__name__, phantom.image_size)
        print(data.HeadCT is HeadCT, data.VolumeFolder is VolumeFolder, data.MedicalBMAD is BMAD)
        print(data.BMAD is not BMAD, data.BMAD.__module__.startswith("anomalib.data"))  # anomalib's own stays
        print(all(name in data.__all__ for name in ("HeadCT", "MedicalFolder", "MedicalBMAD")))
        """
    )
    assert out.splitlines() == ["HeadPhantom 32", "True True True", "True True", "True"]


def test_importing_the_data_package_first_also_registers() -> None:
    out = _run(
        """
        from anomalib_skipts.data import MedicalFolder
        import anomalib.data
        print(anomalib.data.MedicalFolder is MedicalFolder)
        """
    )
    assert out == "True"


def test_anomalib_cli_takes_a_medical_datamodule_by_its_short_name() -> None:
    out = _run(
        """
        import sys
        from anomalib.cli.cli import main
        sys.argv = ["anomalib", "train", "--model", "SkipTS", "--data", "HeadCT", "--print_config"]
        main()
        """
    )
    assert "class_path: anomalib_skipts.data.HeadCT" in out
    assert "class_path: anomalib_skipts.SkipTS" in out


def test_a_name_anomalib_already_uses_is_left_to_anomalib(caplog) -> None:
    from types import ModuleType

    from anomalib_skipts.registration import _expose

    class Theirs:
        pass

    class Ours:
        pass

    module = ModuleType("anomalib.data")
    module.BMAD = Theirs
    module.__all__ = ["BMAD"]
    _expose(module, {"BMAD": Ours, "MedicalBMAD": Ours})
    assert module.BMAD is Theirs  # anomalib's own class stays
    assert module.MedicalBMAD is Ours
    assert module.__all__ == ["BMAD", "MedicalBMAD"]
    assert "anomalib.data.BMAD exists already" in caplog.text
