"""Logic of the speed benchmark (``tools/speed.py``) on a quick run: resnet18, 64x64, 8 images."""

import json
import statistics
from pathlib import Path

import pytest
import torch
from anomalib.models import ReverseDistillation
from torch.utils.flop_counter import FlopCounterMode

from anomalib_skipts.models import SkipTS
from tools import speed

SIZE = 64  # the --quick settings: resnet18, 64x64, 8 training images in batches of 4, 2 rounds
NUM_TRAIN = 8
BATCHES_PER_EPOCH = 2


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory, phantom_root: Path) -> tuple[Path, dict]:
    output = tmp_path_factory.mktemp("speed")
    # the session's phantom data set (8 / 4 / 4 images of 64x64) has the --quick parameters: reused, not rewritten
    argv = ["--quick", "--threads", "1", "--output", str(output), "--data-root", str(phantom_root)]
    assert speed.main(argv) == 0
    return output, json.loads((output / "results.json").read_text())


def test_writes_json_and_markdown_with_all_fields(quick: tuple[Path, dict]) -> None:
    output, results = quick
    markdown = (output / "results.md").read_text()
    for heading in (
        "training, images/s over an epoch",
        "inference, eager",
        "exported Skip-TS pipeline",
        "FLOPs per image",
        "target",
    ):
        assert heading in markdown
    assert results["settings"]["backbone"] == "resnet18"
    assert results["settings"]["image_size"] == SIZE
    assert {"description", "date", "cpu_count", "torch_threads"} <= set(results["machine"])
    assert results["command"].startswith("python tools/speed.py")  # the tool moved out of the package
    training = results["training"]["summary"]
    assert set(training) == {speed.RD, speed.SKIPTS_CACHE, speed.SKIPTS_NOCACHE}
    for row in training.values():
        assert row["steady_images_per_s"] > 0
        assert row["epoch1_images_per_s"] > 0
        assert {"teacher", "student", "loss", "backward_optimizer_other", "data_loading"} <= set(
            row["seconds_per_image_by_stage"]
        )
    inference = results["inference"]["summary"]
    assert set(inference) == {"batch_1", "batch_16", "batch_1_cpu", "batch_16_cpu"}
    assert all(inference[key][name] > 0 for key in inference for name in speed.INFERENCE_ORDER)
    stages = results["inference"]["seconds_per_image_by_stage"]
    for name in speed.INFERENCE_ORDER:  # every stage is timed, Skip-TS's folded student copy included
        assert all(stages[name][f"batch_{size}"][stage] > 0 for size in (1, 16) for stage in ("teacher", "student"))
    export = results["export"]
    assert Path(export["onnx_path"]).is_file()
    assert Path(export["openvino_path"]).is_file()
    assert export["openvino_default_precision"]
    assert export["openvino_f32_precision"] == "f32"
    assert set(export["summary"]) == set(speed.RUNTIMES)
    assert all(value > 0 for value in export["summary"].values())
    # at f32, ONNX Runtime and OpenVINO reproduce eager torch
    for runtime in ("onnxruntime", "openvino_f32"):
        assert export["max_abs_diff_vs_eager"][runtime]["anomaly_map"] < 1e-3
    assert {row["name"] for row in results["targets"]} == set(speed.TARGETS)


def test_ratios_and_medians_follow_from_the_raw_numbers(quick: tuple[Path, dict]) -> None:
    _, results = quick
    ratios = results["ratios"]
    training = results["training"]
    for name, row in training["summary"].items():
        per_round = []
        for record in training["rounds"]:
            kept = record[name][1:] if name == speed.SKIPTS_CACHE else record[name]
            per_round.append(sum(e["images"] for e in kept) / sum(e["seconds"] for e in kept))
        assert row["steady_images_per_s_per_round"] == pytest.approx(per_round)
        assert row["steady_images_per_s"] == pytest.approx(statistics.median(per_round))
        per_round_cpu = [
            sum(e["images"] for e in kept) / sum(e["cpu_seconds"] for e in kept)
            for kept in (r[name][1:] if name == speed.SKIPTS_CACHE else r[name] for r in training["rounds"])
        ]
        assert row["steady_images_per_cpu_s"] == pytest.approx(statistics.median(per_round_cpu))
    rd = training["summary"][speed.RD]["steady_images_per_s"]
    cache = training["summary"][speed.SKIPTS_CACHE]
    nocache = training["summary"][speed.SKIPTS_NOCACHE]["steady_images_per_s"]
    assert ratios["training_cache_steady_vs_rd"] == pytest.approx(cache["steady_images_per_s"] / rd)
    assert ratios["training_cache_steady_vs_rd_cpu"] == pytest.approx(
        cache["steady_images_per_cpu_s"] / training["summary"][speed.RD]["steady_images_per_cpu_s"]
    )
    assert ratios["training_cache_epoch1_vs_rd"] == pytest.approx(cache["epoch1_images_per_s"] / rd)
    assert ratios["training_nocache_vs_rd"] == pytest.approx(nocache / rd)
    assert ratios["training_cache_steady_vs_nocache"] == pytest.approx(cache["steady_images_per_s"] / nocache)
    inference = results["inference"]
    for key in ("batch_1", "batch_16", "batch_1_cpu", "batch_16_cpu"):
        values = {name: [r[f"{name}_{key}"] for r in inference["repeats"]] for name in speed.INFERENCE_ORDER}
        assert inference["summary"][key] == pytest.approx({n: statistics.median(v) for n, v in values.items()})
        assert ratios[f"inference_{key}_vs_rd_tuned"] == pytest.approx(
            inference["summary"][key][speed.SKIPTS] / inference["summary"][key][speed.RD_TUNED]
        )
        assert ratios[f"inference_{key}"] == pytest.approx(
            inference["summary"][key][speed.SKIPTS] / inference["summary"][key][speed.RD]
        )
    export = results["export"]["summary"]
    for runtime in speed.RUNTIMES[1:]:
        assert ratios[f"{runtime}_vs_eager"] == pytest.approx(export[runtime] / export["eager"])
    for row in results["targets"]:
        assert row["ratio"] == ratios[row["name"]]
        assert row["met"] == (row["ratio"] >= row["target"])
        if not row["met"]:
            assert row["shortfall_percent"] == pytest.approx(100 * (1 - row["ratio"] / row["target"]))


def test_cached_skipts_runs_the_teacher_only_in_epoch_one(quick: tuple[Path, dict]) -> None:
    _, results = quick
    for record in results["training"]["rounds"]:
        first, *later = record[speed.SKIPTS_CACHE]
        assert later, "the cached model must train more than one epoch per round"
        assert first["teacher_calls"] == BATCHES_PER_EPOCH
        assert first["teacher_images"] == NUM_TRAIN
        assert all(epoch["teacher_calls"] == 0 and epoch["teacher_images"] == 0 for epoch in later)
        assert all(epoch["images"] == NUM_TRAIN for epoch in record[speed.SKIPTS_CACHE])
        for name in (speed.RD, speed.SKIPTS_NOCACHE):
            assert all(epoch["teacher_calls"] == BATCHES_PER_EPOCH for epoch in record[name])
            assert all(epoch["teacher_images"] == NUM_TRAIN for epoch in record[name])


def test_flops_and_parameters_match_a_direct_count(quick: tuple[Path, dict]) -> None:
    _, results = quick
    models = {
        speed.SKIPTS: SkipTS(backbone="resnet18", pre_trained=False, image_size=SIZE),
        speed.RD: ReverseDistillation(
            backbone="resnet18",
            pre_trained=False,
            pre_processor=ReverseDistillation.configure_pre_processor(image_size=(SIZE, SIZE)),
        ),
    }
    for name, model in models.items():
        model.model.eval()
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model.model(torch.rand(1, 3, SIZE, SIZE))
        cost = results["cost"][name]
        assert cost["flops_per_image"] > 0
        assert cost["flops_per_image"] == counter.get_total_flops()
        assert cost["params_total"] == sum(p.numel() for p in model.model.parameters())
        assert 0 < cost["params_trainable"] < cost["params_total"]  # the frozen teacher is not trained
    trained = sum(p.numel() for p in models[speed.SKIPTS].model.student.parameters())
    assert results["cost"][speed.SKIPTS]["params_trainable"] == trained


def test_targets_report_the_shortfall() -> None:
    rows = {row["name"]: row for row in speed.check_targets({"inference_batch_1": 0.9, "inference_batch_16": 1.5})}
    assert set(rows) == {"inference_batch_1", "inference_batch_16"}
    assert not rows["inference_batch_1"]["met"]
    assert rows["inference_batch_1"]["shortfall_percent"] == pytest.approx(25.0)
    assert rows["inference_batch_16"]["met"]
    assert rows["inference_batch_16"]["shortfall_percent"] == 0.0


def test_skipts_options_are_parsed_and_checked() -> None:
    options = speed.parse_skipts_options(["upsample_kernel_size=2", "channels_last=false"])
    assert options == {"upsample_kernel_size": 2, "channels_last": False}
    with pytest.raises(SystemExit, match="upsample_kernel_size"):  # the message lists the allowed names
        speed.parse_skipts_options(["upsample_kernel=2"])
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        speed.parse_skipts_options(["upsample_kernel_size"])
    with pytest.raises(SystemExit):  # the script sets the cache itself
        speed.parse_skipts_options(["teacher_cache=false"])
    models = speed.build_models("resnet18", SIZE, skipts_options=options)
    for name in (speed.SKIPTS_CACHE, speed.SKIPTS_NOCACHE):
        assert models[name].model.channels_last is False
        student = models[name].model.student
        assert {m.kernel_size for m in student.modules() if isinstance(m, torch.nn.ConvTranspose2d)} == {(2, 2)}
