"""Run the benchmarks: `python -m benchmarks.run --quick|--full [--backends ...]`.

For each backend whose module exists and whose server starts, this measures
metric ingest through the Python API against the store's raw driver, streaming
a long history, and latest-value lookups. Next to the local backend it runs the
same work through MLflow's client on MLflow's sqlite store, and compares a
search over many runs. It prints a table and writes every figure as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from benchmarks import cases, machine, mlflow_cases, mltrail_cases, workload
from benchmarks.stores import (
    NOSQL_BACKENDS,
    Stores,
    backend_missing,
    start_emulator,
    stop_emulator,
)
from benchmarks.workload import Scale

logger = logging.getLogger("benchmarks")

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
DEFAULT_WORK_DIR = Path("/tmp/mltrail-bench")
# The launcher's state folder. It is the benchmark's own, so that servers
# started by tests are neither reused nor stopped.
DEFAULT_EMULATOR_DIR = Path("/tmp/bench-emulators")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.splitlines()[0]
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--quick",
        action="store_true",
        help="100k points per workload, 2,500 runs to search",
    )
    mode.add_argument(
        "--full",
        action="store_true",
        help="1M points per workload, 25,000 runs to search",
    )
    parser.add_argument(
        "--backends",
        default="local," + ",".join(NOSQL_BACKENDS),
        help="comma-separated backends (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=DEFAULT_JSON,
        help="where to write the results (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="repetitions of each side-by-side measurement (default: 3 quick, 2 full)",
    )
    parser.add_argument(
        "--mlflow-divisor",
        type=int,
        default=4,
        help="run MLflow's ingest and reads on this many times fewer "
        "runs and points (default: %(default)s), since its "
        "log_batch takes about 0.4 ms per point",
    )
    parser.add_argument(
        "--nosql-divisor",
        type=int,
        default=20,
        help="run NoSQL backends on this many times fewer points and "
        "runs (default: %(default)s), since their emulators take "
        "hundreds to a few thousand writes per second",
    )
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow")
    parser.add_argument(
        "--dynamodbstore-python",
        type=Path,
        default=None,
        help="a Python interpreter with the mlflow-dynamodbstore plugin "
        "installed; compares its ingest on the same moto server",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help="folder for the sqlite files (default: %(default)s)",
    )
    parser.add_argument(
        "--emulator-dir",
        type=Path,
        default=DEFAULT_EMULATOR_DIR,
        help="state folder of the servers this run starts (default: %(default)s)",
    )
    return parser.parse_args(argv)


def scale_of(args: argparse.Namespace) -> Scale:
    scale = workload.QUICK if args.quick else workload.FULL
    if args.repeat is not None:
        scale = replace(scale, repeat=max(1, args.repeat))
    return scale


def lookup_calls(scale: Scale) -> int:
    return 200 if scale.name == "quick" else 500


# ----------------------------------------------------------------------
# one backend
# ----------------------------------------------------------------------


def bench_local(
    args: argparse.Namespace, scale: Scale, values: list, long: list[float]
) -> dict[str, Any]:
    work = args.work_dir / "local"
    work.mkdir(parents=True, exist_ok=True)
    stores = Stores("local", f"local://{work}/store.db")
    calls = lookup_calls(scale)
    try:
        result = {"scale": asdict(scale)}
        ingest = cases.Ingest(stores, cases.local_raw_writer(stores))
        logger.info("local: ingest")
        result["ingest"] = ingest.measure(scale, values, long, scale.repeat)
        logger.info("local: reads")
        result["reads"] = cases.reads(
            stores, long, scale.repeat, calls, local_path=True
        )
        if not args.no_mlflow:
            result["mlflow"] = bench_mlflow(args, scale, values, long, stores, calls)
    finally:
        stores.destroy_all()
    return result


def bench_mlflow(
    args: argparse.Namespace,
    scale: Scale,
    values: list,
    long: list[float],
    stores: Stores,
    calls: int,
) -> dict[str, Any]:
    reason = mlflow_cases.available()
    if reason is not None:
        logger.warning("skipping MLflow: %s", reason)
        return {"skipped": reason}
    divisor = max(1, args.mlflow_divisor)
    reduced = replace(scale.reduced(divisor), search_runs=scale.search_runs)
    logger.info(
        "MLflow: ingest, reads and search (%d runs, %d-point history)",
        reduced.runs,
        reduced.long_history,
    )
    result = cases.mlflow_comparison(
        args.work_dir,
        reduced,
        values[: reduced.runs],
        long[: reduced.long_history],
        stores,
        scale.repeat,
        calls,
    )
    result["divisor"] = divisor
    return result


def bench_nosql(
    name: str, args: argparse.Namespace, scale: Scale, values: list, long: list[float]
) -> dict[str, Any]:
    missing = backend_missing(name)
    if missing is not None:
        return {"skipped": missing}
    logger.info("%s: starting its server", name)
    url, reason = start_emulator(name)
    if url is None:
        return {"skipped": reason}
    reduced = scale.reduced(max(1, args.nosql_divisor))
    repeat = 1
    stores = Stores(name, url)
    try:
        result: dict[str, Any] = {"url": url, "scale": asdict(reduced)}
        ingest = cases.Ingest(stores, cases.nosql_raw_writer(name, url))
        logger.info("%s: ingest", name)
        result["ingest"] = ingest.measure(
            reduced, values[: reduced.runs], long[: reduced.long_history], repeat
        )
        logger.info("%s: reads", name)
        result["reads"] = cases.reads(
            stores,
            long[: reduced.long_history],
            repeat,
            max(20, lookup_calls(scale) // 10),
            local_path=False,
        )
        if name == "dynamodb":
            result["mlflow_dynamodbstore"] = bench_dynamodbstore(args, scale, url, stores)
    except Exception as error:  # one store's failure must not stop the others
        logger.exception("%s benchmark failed", name)
        return {"failed": f"{type(error).__name__}: {error}"}
    finally:
        stores.destroy_all()
        stop_emulator(name)
    return result


def bench_dynamodbstore(
    args: argparse.Namespace, scale: Scale, url: str, stores: Stores
) -> dict[str, Any]:
    """Log points through the mlflow-dynamodbstore plugin on the same moto server.

    mltrail logs the same points of one run with `log_metric` just before and
    just after the plugin, and the ratio uses the mean of those two runs.
    """
    if args.dynamodbstore_python is None:
        return {
            "skipped": "no --dynamodbstore-python interpreter given; the plugin needs "
            "the full mlflow distribution, installed beside it"
        }
    points = 2_000 if scale.name == "quick" else 10_000
    endpoint = url.split("://", 1)[1].split("/", 1)[0]
    logger.info("dynamodb: %d points through mlflow-dynamodbstore", points)

    def mltrail_seconds() -> float:
        return cases.with_store(
            stores, lambda store: mltrail_cases.ingest_plugin_workload(store, points))

    before = mltrail_seconds()
    completed = subprocess.run(
        [
            str(args.dynamodbstore_python),
            str(Path(__file__).with_name("dynamodbstore_worker.py")),
            endpoint,
            str(points),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if completed.returncode != 0:
        return {"failed": completed.stderr.strip()[-2000:]}
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    seconds = [before, mltrail_seconds()]
    mltrail_rate = points / (sum(seconds) / len(seconds))
    result["mltrail_seconds"] = seconds
    result["mltrail_per_second"] = mltrail_rate
    result["ratio_mltrail_log_metric_to_plugin"] = mltrail_rate / result["per_second"]
    return result


# ----------------------------------------------------------------------
# report
# ----------------------------------------------------------------------


def _fmt(value: float, unit: str) -> str:
    if value is None or isinstance(value, float) and math.isnan(value):
        return "n/a"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "s":
        return f"{value * 1000:,.2f} ms" if value < 1 else f"{value:,.2f} s"
    if unit == "x":
        return f"{value:,.2f}x"
    if unit == "KiB":
        return f"{value / 1024:,.1f} MiB"
    return str(value)


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for name, figures in results["backends"].items():
        if "skipped" in figures or "failed" in figures:
            rows.append(
                (
                    name,
                    "-",
                    "skipped" if "skipped" in figures else "failed",
                    figures.get("skipped") or figures.get("failed"),
                )
            )
            continue
        rows += _ingest_rows(name, figures["ingest"])
        rows += _read_rows(name, figures["reads"])
        plugin = figures.get("mlflow_dynamodbstore")
        if plugin:
            rows.append(_plugin_row(plugin))
        mlflow = figures.get("mlflow")
        if mlflow:
            rows += _mlflow_rows(mlflow)
    return rows


def _ingest_rows(name: str, ingest: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    rows = []
    for workload_name, figures in ingest.items():
        per_point, series, raw = figures["contenders"]
        case = f"ingest {workload_name.replace('_', ' ')}"
        rows.append((name, case, "raw driver", _fmt(raw["per_second"], "/s")))
        rows.append(
            (
                name,
                case,
                "log_metric",
                f"{_fmt(per_point['per_second'], '/s')}"
                f" = {_fmt(figures['ratio_log_metric_to_raw'], 'x')} raw",
            )
        )
        rows.append(
            (
                name,
                case,
                "log_metric_series",
                f"{_fmt(series['per_second'], '/s')}"
                f" = {_fmt(figures['ratio_series_to_raw'], 'x')} raw",
            )
        )
    return rows


def _read_rows(name: str, reads: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    history = reads["history_read"]
    rows = [
        (
            name,
            "history read",
            "mltrail",
            f"{_fmt(history['mltrail']['points_per_second'], '/s')}, "
            f"+{_fmt(history['mltrail']['rss_added_kib'], 'KiB')} RSS",
        )
    ]
    if "sqlite3" in history:
        rows.append(
            (
                name,
                "history read",
                "sqlite3 cursor",
                f"{_fmt(history['sqlite3']['points_per_second'], '/s')}",
            )
        )
    latest = reads["latest_lookup"]
    rows.append(
        (
            name,
            "latest value",
            "long / short history",
            f"{_fmt(latest['long_history_seconds_per_call'], 's')} / "
            f"{_fmt(latest['short_history_seconds_per_call'], 's')} = "
            f"{_fmt(latest['ratio_long_to_short_time'], 'x')}",
        )
    )
    return rows


def _plugin_row(plugin: dict[str, Any]) -> tuple[str, str, str, str]:
    label = ("mlflow-dynamodbstore", "ingest", "log_batch")
    if "per_second" not in plugin:
        return (*label, plugin.get("skipped") or f"failed: {plugin.get('failed')}")
    return (
        *label,
        f"{_fmt(plugin['per_second'], '/s')}; mltrail log_metric "
        f"{_fmt(plugin['ratio_mltrail_log_metric_to_plugin'], 'x')} faster; "
        f"history read {plugin['history_read']}",
    )


def _mlflow_rows(mlflow: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    if "skipped" in mlflow:
        return [("mlflow", "-", "skipped", mlflow["skipped"])]
    rows = []
    for workload_name, figures in mlflow["ingest"].items():
        call = "log_metric_series" if workload_name.endswith("_series") else "log_metric"
        label = workload_name.removesuffix("_series").replace("_", " ")
        rows.append(
            (
                "mlflow",
                f"ingest {label}",
                "log_batch",
                f"{_fmt(figures['mlflow_per_second'], '/s')}; mltrail {call} "
                f"{_fmt(figures['ratio_mltrail_to_mlflow'], 'x')} faster",
            )
        )
    history = mlflow["reads"]["history_read"]
    rows.append(
        (
            "mlflow",
            "history read",
            "get_metric_history",
            f"{_fmt(history['points_per_second'], '/s')}, "
            f"+{_fmt(history['rss_added_kib'], 'KiB')} RSS",
        )
    )
    latest = mlflow["reads"]["latest_lookup"]
    rows.append(
        (
            "mlflow",
            "latest value",
            "get_run long / short",
            f"{_fmt(latest['long_history_seconds_per_call'], 's')} / "
            f"{_fmt(latest['short_history_seconds_per_call'], 's')}",
        )
    )
    search = mlflow["search"]
    for label in ("first_page", "all_matches"):
        figures = search[label]
        same = all(figures["same_runs_as_expected"].values())
        rows.append(
            (
                "local vs mlflow",
                f"search {search['runs']:,} runs",
                f"{label.replace('_', ' ')} ({figures['page_size']})",
                f"{_fmt(figures['mltrail_seconds_per_search'], 's')} vs "
                f"{_fmt(figures['mlflow_seconds_per_search'], 's')} = "
                f"{_fmt(figures['ratio_mltrail_to_mlflow_time'], 'x')} the time"
                f"{'' if same else ' (RESULTS DIFFER)'}",
            )
        )
    return rows


def print_table(results: dict[str, Any]) -> None:
    rows = [("backend", "case", "contender", "figure"), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
            + "  "
            + row[3]
        )


# ----------------------------------------------------------------------
# main
# ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr
    )
    os.environ["MLTRAIL_EMULATOR_DIR"] = str(args.emulator_dir)
    scale = scale_of(args)
    names = [name.strip() for name in args.backends.split(",") if name.strip()]
    unknown = [name for name in names if name != "local" and name not in NOSQL_BACKENDS]
    if unknown:
        print(
            f"error: unknown backend(s) {unknown}; expected local or one of "
            f"{', '.join(NOSQL_BACKENDS)}",
            file=sys.stderr,
        )
        return 2
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True)
    started = time.time()
    results: dict[str, Any] = {
        "mode": scale.name,
        "machine": machine.describe(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "backends": {},
    }
    values = [workload.run_values(index, scale) for index in range(scale.runs)]
    long = workload.long_values(scale.long_history)
    for name in names:
        if name == "local":
            results["backends"][name] = bench_local(args, scale, values, long)
        else:
            results["backends"][name] = bench_nosql(name, args, scale, values, long)
        if "skipped" in results["backends"][name]:
            print(
                f"skipping {name}: {results['backends'][name]['skipped']}",
                file=sys.stderr,
            )
    results["seconds"] = time.time() - started
    results["machine"]["load_average_at_end"] = machine.load_average()
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"\nwrote {args.json} ({results['seconds']:.0f} s)")
    shutil.rmtree(args.work_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
