"""Command line of the Skip-TS side-by-side benchmark (``skipts-benchmark`` / ``python -m anomalib_skipts.benchmark``).

Runs Skip-TS (IEEE TIM 2024) and anomalib's baselines under the paper's protocol, as described by a
YAML file in ``configs/benchmark/``, and writes a per-run CSV, a Markdown summary and figures.

Example:
    .. code-block:: bash

        skipts-benchmark --config configs/benchmark/cpu_quick.yaml
        skipts-benchmark --config configs/benchmark/ablation.yaml --protocol cpu-quick
        skipts-benchmark --config configs/benchmark/smoke.yaml --report-only
        skipts-benchmark --config configs/benchmark/cpu_quick.yaml --run-timeout 2h --run-memory-limit 12
        skipts-benchmark --config configs/benchmark/cpu_quick.yaml --parallel 2 --devices 0,1
        skipts-benchmark --config configs/benchmark/paper.yaml --executor slurm
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import BenchmarkConfig

LOGGER_NAME = "anomalib_skipts.benchmark"


def build_parser() -> argparse.ArgumentParser:
    """Command-line options.

    Returns:
        argparse.ArgumentParser: The parser.
    """
    parser = argparse.ArgumentParser(
        prog="skipts-benchmark",
        description="Side-by-side benchmark of Skip-TS and anomalib models (models x datasets x seeds).",
    )
    parser.add_argument("--config", help="Benchmark YAML (see configs/benchmark/).")
    parser.add_argument("--protocol", help="Named protocol replacing the config's: paper, cpu-quick or smoke.")
    parser.add_argument("--output", help="Results folder replacing the config's output_dir.")
    parser.add_argument("--seeds", type=int, nargs="+", help="Seeds replacing the config's.")
    parser.add_argument("--models", nargs="+", help="Run only these models (names from the config).")
    parser.add_argument("--datasets", nargs="+", help="Run only these datasets (names from the config).")
    parser.add_argument("--max-epochs", type=int, help="Epochs replacing the protocol's.")
    parser.add_argument("--no-retry-failed", action="store_true", help="On restart, skip runs that failed before.")
    parser.add_argument(
        "--run-timeout",
        metavar="DURATION",
        help="Per-run time limit replacing the config's run_timeout: seconds, or e.g. 90m, 2h; 'none' for no limit.",
    )
    parser.add_argument(
        "--run-memory-limit",
        metavar="GB",
        help="Per-run limit on resident memory in GB replacing the config's run_memory_limit; 'none' for no limit.",
    )
    parser.add_argument(
        "--no-isolation",
        action="store_true",
        help="Run in this process instead of one child process per run (debugging; no limits, a crash ends all).",
    )
    parser.add_argument(
        "--executor",
        choices=["local", "slurm"],
        help="Where the runs execute, replacing the config's executor.name: this machine, or one SLURM job per run.",
    )
    parser.add_argument("--parallel", type=int, metavar="N", help="local: N runs at once (each in its own process).")
    parser.add_argument(
        "--devices",
        metavar="IDS",
        help="local: GPUs the runs are pinned to, one run per GPU at a time (e.g. 0,1); sets --parallel if not given.",
    )
    parser.add_argument("--runs-per-device", type=int, metavar="K", help="local: let K runs share one GPU at once.")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="List the runs and their state (finished, queued, running, failed, to run), run nothing.",
    )
    parser.add_argument("--report-only", action="store_true", help="Only rebuild summary.md and the figures.")
    parser.add_argument("--strict", action="store_true", help="Exit with status 1 if any run failed.")
    parser.add_argument(
        "--anomalib-config",
        metavar="PATH",
        help="Write the config translated for `anomalib benchmark` to PATH and exit.",
    )
    parser.add_argument(
        "--anomalib-pipeline",
        action="store_true",
        help="Run the config through anomalib's own `anomalib benchmark` pipeline instead (where it allows).",
    )
    parser.add_argument("--list-protocols", action="store_true", help="Print the named protocols and exit.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Keep Lightning's and tqdm's output.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv``.

    Returns:
        int: Exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verbose:
        # tqdm reads TQDM_* variables when imported: set before anomalib (PatchCore's coreset bar) loads.
        os.environ.setdefault("TQDM_DISABLE", "1")
    log = _setup_logging()

    from dataclasses import asdict, replace

    from .config import PROTOCOLS, load_config

    if args.list_protocols:
        for name, protocol in PROTOCOLS.items():
            log.info("%s: %s", name, {k: v for k, v in asdict(protocol).items() if k != "name"})
        return 0
    if args.config is None:
        parser.error("--config is required")
    try:
        full = load_config(args.config, protocol=args.protocol, output_dir=args.output, max_epochs=args.max_epochs)
        full = _with_limits(full, args)
        full = _with_executor(full, args)
    except (ValueError, KeyError) as error:
        parser.error(str(error.args[0]) if isinstance(error, KeyError) else str(error))
    config = full.select(models=args.models, datasets=args.datasets, seeds=args.seeds)
    # The summary covers every model and dataset of the config (runs of other selections included).
    report_config = replace(full, seeds=tuple(dict.fromkeys([*full.seeds, *config.seeds])))
    command = "skipts-benchmark " + shlex.join(sys.argv[1:] if argv is None else list(argv))

    if args.anomalib_config or args.anomalib_pipeline:
        return _anomalib(config, args, log)
    if args.dry_run:
        return _dry_run(config, log, retry_failed=not args.no_retry_failed)

    with warnings.catch_warnings():  # anomalib's pipeline package imports all of anomalib and timm
        if not args.verbose:
            warnings.simplefilter("ignore", FutureWarning)
        from .pipeline import BenchmarkPipeline
    from .report import recorded_command, write_report
    from .store import RUNS_CSV, DriverBusyError, write_config_snapshot

    if not args.report_only:
        try:
            pipeline = BenchmarkPipeline(
                config,
                retry_failed=not args.no_retry_failed,
                log=log.info,
                command=command,
                report_config=report_config,
            )
        except ValueError as error:
            parser.error(str(error))
        try:
            pipeline.run()
        except DriverBusyError as error:
            log.error("%s", error)
            return 2
    if not (config.output_dir / RUNS_CSV).is_file():
        log.error("No results in %s", config.output_dir)
        return 1
    if args.report_only:  # the layout follows the config as it is now; the command stays the runs' one
        write_config_snapshot(report_config, recorded_command(config.output_dir))
    summary, plots = write_report(config.output_dir, config=report_config)
    log.info("Summary: %s", summary)
    for plot in plots:
        log.info("Figure: %s", plot)
    if args.strict:
        import pandas as pd

        frame = pd.read_csv(config.output_dir / RUNS_CSV)
        return int((frame["status"] != "ok").any())
    return 0


def _with_limits(config: BenchmarkConfig, args: argparse.Namespace) -> BenchmarkConfig:
    """Apply ``--run-timeout``, ``--run-memory-limit`` and ``--no-isolation`` to a config."""
    from dataclasses import replace

    from .config import parse_duration, parse_positive

    changes: dict[str, object] = {}
    if args.run_timeout is not None:
        changes["run_timeout"] = parse_duration(args.run_timeout, "--run-timeout")
    if args.run_memory_limit is not None:
        none = args.run_memory_limit.strip().lower() == "none"
        changes["run_memory_limit"] = None if none else parse_positive(args.run_memory_limit, "--run-memory-limit (GB)")
    if args.no_isolation:
        changes.update(isolate=False, run_timeout=None, run_memory_limit=None)
    return replace(config, **changes)


def _with_executor(config: BenchmarkConfig, args: argparse.Namespace) -> BenchmarkConfig:
    """Apply ``--executor``, ``--parallel``, ``--devices`` and ``--runs-per-device`` to a config."""
    from dataclasses import replace

    from .executors import parse_devices

    for flag, value in (("--parallel", args.parallel), ("--runs-per-device", args.runs_per_device)):
        if value is not None and value < 1:
            msg = f"{flag} must be a positive integer, got {value}"
            raise ValueError(msg)
    devices = parse_devices(args.devices) if args.devices is not None else None
    executor = config.executor.with_flags(args.executor, args.parallel, devices, args.runs_per_device)
    if executor.name == "slurm" and (args.parallel or devices):
        msg = "--parallel and --devices are for the local executor; with slurm, every run is its own job."
        raise ValueError(msg)
    return replace(config, executor=executor)


def _anomalib(config: BenchmarkConfig, args: argparse.Namespace, log: logging.Logger) -> int:
    import yaml

    from .anomalib_pipeline import LIMITATIONS, run_anomalib_benchmark, to_anomalib_benchmark

    pipeline, notes = to_anomalib_benchmark(config)
    for note in notes:
        log.warning("Left out of anomalib's pipeline: %s", note)
    if args.anomalib_config:
        Path(args.anomalib_config).write_text(yaml.safe_dump(pipeline, sort_keys=False), encoding="utf-8")
        log.info(
            "Wrote %s; run it with: PL_TRAINER_MAX_EPOCHS=%d anomalib benchmark --config %s",
            args.anomalib_config,
            config.protocol.max_epochs,
            args.anomalib_config,
        )
        log.info("What anomalib's pipeline cannot do:\n- %s", "\n- ".join(LIMITATIONS))
        return 0
    results = run_anomalib_benchmark(config)
    log.info("anomalib's pipeline wrote %s", results)
    return 0


def _dry_run(config: BenchmarkConfig, log: logging.Logger, retry_failed: bool) -> int:
    from .slurm import run_states
    from .store import ResultStore

    runs = config.runs()
    states = run_states(ResultStore(config.output_dir), runs, retry_failed)
    for index, run in enumerate(runs, start=1):
        state = states[run.run_id]
        log.info(
            "[run %d/%d] model=%s dataset=%s seed=%d epochs=%d: %s",
            index,
            len(runs),
            run.model.name,
            run.dataset.name,
            run.seed,
            run.max_epochs,
            state,
        )
    return 0


def _setup_logging() -> logging.Logger:
    log = logging.getLogger(LOGGER_NAME)
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


if __name__ == "__main__":
    sys.exit(main())
