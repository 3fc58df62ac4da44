"""A worked example on real data: two hyperparameter sweeps recorded end to end.

    mltrail demo                       # into $MLTRAIL_STORE or the local store
    python -m mltrail.demo --store local:///tmp/demo.db --quick

The data ships with scikit-learn, so nothing is downloaded: the handwritten
digits (1797 images of 8x8 pixels, 10 classes) and the Wisconsin breast cancer
set (569 samples, 30 features, 2 classes). The demo

1. registers each raw dataset with the SHA-256 of its arrays and its source, and
   a preprocessed dataset derived from it. The preprocessed dataset's provenance
   lists the stratified train/validation split (ratio and seed) and the standard
   scaling, and names the feature pipeline that produced it.
2. sweeps SGDClassifier (alpha x learning-rate schedule) on digits and
   MLPClassifier (hidden layers x initial learning rate) on breast cancer. Each
   sweep is a parent run with one child run per configuration. A child trains
   incrementally with `partial_fit` and logs train_loss, train_acc, val_loss and
   val_acc every epoch, val_acc with a bootstrap 95% confidence interval.
3. registers the best child of each sweep as a model version with the alias
   `production`.
4. prints a comparison of the best runs, val_acc aggregated per learning rate,
   and the lineage from each model version back to its raw dataset.

The default (full) mode runs 6 + 6 configurations. Quick mode runs 4 + 2 with
fewer epochs, which makes 8 runs counting the two parents.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from mltrail.api import ActiveRun, connect, hash_data, register_dataset, start_run
from mltrail.cli import display, error_message, lineage_lines, relation_of
from mltrail.domain import Dataset, ModelVersion
from mltrail.errors import InvalidInputError, MltrailError
from mltrail.lineage import LineageGraph
from mltrail.store import Store

CI_LEVEL = 0.95
PIPELINE = "stratified-split+standard-scaler"
ALIAS = "production"
HARDWARE = f"cpu-{platform.machine() or 'unknown'}"
MAX_SEED = 2**32 - 1
"""Largest seed, because scikit-learn's random_state accepts 0 to 2**32 - 1."""


@dataclass(frozen=True)
class Plan:
    """How much each sweep trains: `FULL` is the default, `QUICK` is quick mode."""

    sgd_alphas: tuple[float, ...]
    sgd_schedules: tuple[str, ...]
    sgd_epochs: int
    sgd_batch_size: int
    mlp_hidden_layers: tuple[tuple[int, ...], ...]
    mlp_learning_rates: tuple[float, ...]
    mlp_epochs: int
    bootstrap_resamples: int


FULL = Plan(
    sgd_alphas=(1e-4, 1e-3, 1e-2), sgd_schedules=("optimal", "invscaling"),
    sgd_epochs=20, sgd_batch_size=128,
    mlp_hidden_layers=((16,), (64,), (32, 16)), mlp_learning_rates=(1e-3, 1e-2),
    mlp_epochs=30, bootstrap_resamples=2000,
)
QUICK = Plan(
    sgd_alphas=(1e-4, 1e-2), sgd_schedules=("optimal", "invscaling"),
    sgd_epochs=12, sgd_batch_size=512,
    mlp_hidden_layers=((16,),), mlp_learning_rates=(1e-3, 1e-2),
    mlp_epochs=12, bootstrap_resamples=500,
)

# SGDClassifier's initial learning rate for the `invscaling` schedule. The
# `optimal` schedule derives its own from alpha.
SGD_ETA0 = 0.05


# ----------------------------------------------------------------------
# data
# ----------------------------------------------------------------------


@dataclass
class PreparedData:
    """A raw and a preprocessed dataset, registered, with the arrays to train on."""

    raw: Dataset
    processed: Dataset
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    params: dict[str, Any]


def content_version(arrays: tuple[np.ndarray, ...]) -> str:
    """Return a version label made of the first 12 hex digits of the content hash.

    Running the demo again on the same data re-registers the same version, and
    data that changed (another seed, another scikit-learn) gets a new one.
    """
    return hash_data(arrays).removeprefix("sha256:")[:12]


def prepare_data(store: Store, name: str, loader: Callable[[], Any], seed: int,
                 validation_ratio: float) -> PreparedData:
    """Load a bundled dataset, split and scale it, and register both versions."""
    bunch = loader()
    x = np.asarray(bunch.data, dtype=np.float64)
    y = np.asarray(bunch.target, dtype=np.int64)
    schema = {
        "rows": int(x.shape[0]),
        "features": int(x.shape[1]),
        "feature_dtype": "float64",
        "feature_names": [str(f) for f in getattr(bunch, "feature_names", [])],
        "target": {"dtype": "int64",
                   "classes": [str(c) for c in getattr(bunch, "target_names", [])]},
    }
    raw = register_dataset(
        store, name, content_version((x, y)), data=(x, y),
        source_uri=f"sklearn.datasets.{loader.__name__}", schema=schema,
        description=f"{name} as bundled with scikit-learn (features, target)",
        tags={"origin": "scikit-learn"},
    )

    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=validation_ratio, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(x_train)
    x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    steps = [
        {"step": "train_validation_split", "validation_ratio": validation_ratio,
         "seed": seed, "stratify": "target", "train_rows": int(len(y_train)),
         "validation_rows": int(len(y_val)),
         "implementation": "sklearn.model_selection.train_test_split"},
        {"step": "standard_scaling", "fit_on": "train",
         "implementation": "sklearn.preprocessing.StandardScaler"},
    ]
    arrays = (x_train, y_train, x_val, y_val)
    processed = register_dataset(
        store, f"{name}-standardized", content_version(arrays), data=arrays,
        source_uri=f"dataset:{raw.name}@{raw.version}", preprocessing=steps,
        pipeline=PIPELINE, schema={**schema, "rows": int(len(y)),
                                   "arrays": ["x_train", "y_train", "x_val", "y_val"]},
        derived_from=[raw],
        description=f"{name} split into train and validation sets and standardized",
        tags={"origin": "mltrail-demo"},
    )
    params = {"dataset": processed.name, "dataset_version": processed.version,
              "validation_ratio": validation_ratio, "split_seed": seed,
              "scaling": "standard"}
    return PreparedData(raw, processed, x_train, y_train, x_val, y_val, params)


# ----------------------------------------------------------------------
# training and evaluation
# ----------------------------------------------------------------------


@dataclass
class EpochScores:
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_acc_low: float
    val_acc_high: float


def bootstrap_interval(correct: np.ndarray, rng: np.random.Generator,
                       resamples: int) -> tuple[float, float]:
    """Return the percentile bootstrap 95% interval of the mean of `correct`."""
    indices = rng.integers(0, len(correct), size=(resamples, len(correct)))
    means = correct[indices].mean(axis=1)
    tail = (1.0 - CI_LEVEL) / 2
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def cross_entropy(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Return the log loss in nats, or NaN when a diverged model gave non-finite
    probabilities."""
    if not np.all(np.isfinite(proba)):
        return float("nan")
    return float(log_loss(y, proba, labels=classes))


def evaluate(model: Any, data: PreparedData, rng: np.random.Generator,
             resamples: int) -> EpochScores:
    classes = model.classes_
    train_proba = model.predict_proba(data.x_train)
    val_proba = model.predict_proba(data.x_val)
    train_correct = classes[train_proba.argmax(axis=1)] == data.y_train
    val_correct = (classes[val_proba.argmax(axis=1)] == data.y_val).astype(np.float64)
    low, high = bootstrap_interval(val_correct, rng, resamples)
    return EpochScores(
        train_loss=cross_entropy(data.y_train, train_proba, classes),
        train_acc=float(train_correct.mean()),
        val_loss=cross_entropy(data.y_val, val_proba, classes),
        val_acc=float(val_correct.mean()),
        val_acc_low=low, val_acc_high=high,
    )


def log_epoch(run: ActiveRun, step: int, scores: EpochScores) -> None:
    """Log one epoch's metrics and write them at once, so progress is visible live."""
    common = {"step": step, "hardware": HARDWARE}
    run.log_metric("train_loss", scores.train_loss, unit="nats", metric_kind="loss",
                   split="train", **common)
    run.log_metric("train_acc", scores.train_acc, unit="ratio", metric_kind="accuracy",
                   split="train", **common)
    run.log_metric("val_loss", scores.val_loss, unit="nats", metric_kind="loss",
                   split="validation", **common)
    run.log_metric("val_acc", scores.val_acc, unit="ratio", metric_kind="accuracy",
                   split="validation", ci_low=scores.val_acc_low,
                   ci_high=scores.val_acc_high, ci_level=CI_LEVEL, **common)
    run.flush()


@dataclass(frozen=True)
class Config:
    """One point of a sweep: its run name, params, and how to build and train it."""

    name: str
    params: dict[str, Any]
    make_model: Callable[[int], Any]
    train_epoch: Callable[[Any, PreparedData, np.random.Generator], None]


@dataclass(frozen=True)
class Family:
    """A model family swept on one dataset."""

    key: str
    experiment: str
    model_name: str
    dataset: str
    loader: Callable[[], Any]
    validation_ratio: float
    epochs: int
    group_by: str
    grid: dict[str, list[Any]]
    configs: Callable[[PreparedData], list[Config]]


def sgd_family(plan: Plan) -> Family:
    def configs(data: PreparedData) -> list[Config]:
        classes = np.unique(np.concatenate([data.y_train, data.y_val]))

        def train_epoch(model: SGDClassifier, data: PreparedData,
                        rng: np.random.Generator) -> None:
            order = rng.permutation(len(data.y_train))
            for start in range(0, len(order), plan.sgd_batch_size):
                batch = order[start:start + plan.sgd_batch_size]
                model.partial_fit(data.x_train[batch], data.y_train[batch],
                                  classes=classes)

        result = []
        for alpha, schedule in itertools.product(plan.sgd_alphas, plan.sgd_schedules):
            params = {
                "model": {"family": "SGDClassifier", "loss": "log_loss",
                          "penalty": "l2", "alpha": alpha},
                "optimizer": {"learning_rate": schedule, "eta0": SGD_ETA0,
                              "epochs": plan.sgd_epochs,
                              "batch_size": plan.sgd_batch_size},
                "data": data.params,
            }

            def make_model(seed: int, alpha: float = alpha,
                           schedule: str = schedule) -> SGDClassifier:
                return SGDClassifier(loss="log_loss", penalty="l2", alpha=alpha,
                                     learning_rate=schedule, eta0=SGD_ETA0,
                                     random_state=seed)

            result.append(Config(f"sgd-alpha{alpha:g}-{schedule}", params, make_model,
                                 train_epoch))
        return result

    return Family(
        key="sgd", experiment="demo-digits-sgd", model_name="digits-sgd",
        dataset="digits", loader=load_digits, validation_ratio=0.2,
        epochs=plan.sgd_epochs, group_by="params.optimizer.learning_rate",
        grid={"model.alpha": list(plan.sgd_alphas),
              "optimizer.learning_rate": list(plan.sgd_schedules)},
        configs=configs,
    )


def mlp_family(plan: Plan) -> Family:
    def configs(data: PreparedData) -> list[Config]:
        classes = np.unique(np.concatenate([data.y_train, data.y_val]))

        def train_epoch(model: MLPClassifier, data: PreparedData,
                        rng: np.random.Generator) -> None:
            # One partial_fit call is one pass over the training set in shuffled
            # minibatches, driven by the model's own random_state.
            model.partial_fit(data.x_train, data.y_train, classes=classes)

        result = []
        for hidden, rate in itertools.product(plan.mlp_hidden_layers,
                                              plan.mlp_learning_rates):
            params = {
                "model": {"family": "MLPClassifier", "hidden_layer_sizes": list(hidden),
                          "activation": "relu", "alpha": 1e-4},
                "optimizer": {"solver": "adam", "learning_rate_init": rate,
                              "epochs": plan.mlp_epochs, "batch_size": 64},
                "data": data.params,
            }

            def make_model(seed: int, hidden: tuple[int, ...] = hidden,
                           rate: float = rate) -> MLPClassifier:
                return MLPClassifier(hidden_layer_sizes=hidden, activation="relu",
                                     alpha=1e-4, solver="adam", learning_rate_init=rate,
                                     batch_size=64, random_state=seed)

            layers = "x".join(str(size) for size in hidden)
            result.append(Config(f"mlp-{layers}-lr{rate:g}", params, make_model,
                                 train_epoch))
        return result

    return Family(
        key="mlp", experiment="demo-breast-cancer-mlp", model_name="breast-cancer-mlp",
        dataset="breast-cancer", loader=load_breast_cancer, validation_ratio=0.25,
        epochs=plan.mlp_epochs, group_by="params.optimizer.learning_rate_init",
        grid={"model.hidden_layer_sizes": [list(h) for h in plan.mlp_hidden_layers],
              "optimizer.learning_rate_init": list(plan.mlp_learning_rates)},
        configs=configs,
    )


# ----------------------------------------------------------------------
# sweeps
# ----------------------------------------------------------------------


@dataclass
class SweepResult:
    """Summary of one recorded sweep: its runs, datasets, best run and model version."""

    family: str
    experiment_id: str
    parent_run_id: str
    child_run_ids: list[str]
    best_run_id: str
    best_val_acc: float
    raw_dataset: Dataset
    processed_dataset: Dataset
    model_name: str
    model_version: ModelVersion
    group_by: str


@dataclass
class DemoResult:
    """Summary of everything the demo recorded, for callers and tests."""

    store_url: str
    sweeps: list[SweepResult] = field(default_factory=list)
    seconds: float = 0.0


def derive_seed(*parts: int) -> int:
    """Return a seed in [0, 2**32) derived from `parts`, distinct per part list."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def train_child(child: ActiveRun, config: Config, data: PreparedData, epochs: int,
                model_seed: int, bootstrap_seed: int, resamples: int) -> EpochScores:
    model = config.make_model(model_seed)
    shuffle_rng = np.random.default_rng(model_seed)
    bootstrap_rng = np.random.default_rng(bootstrap_seed)
    scores = None
    for epoch in range(1, epochs + 1):
        config.train_epoch(model, data, shuffle_rng)
        scores = evaluate(model, data, bootstrap_rng, resamples)
        log_epoch(child, epoch, scores)
    assert scores is not None, "a sweep trains for at least one epoch"
    return scores


def run_sweep(store: Store, family: Family, family_index: int, plan: Plan, seed: int,
              out: Callable[[str], None]) -> SweepResult:
    """Prepare the data, train every configuration as a child run, register the best."""
    data = prepare_data(store, family.dataset, family.loader, seed,
                        family.validation_ratio)
    configs = family.configs(data)
    out(f"\n{family.experiment}: {len(configs)} configurations, {family.epochs} epochs "
        f"each, on {data.processed.name}@{data.processed.version}")
    tags = {"demo": "mltrail", "family": family.key}
    parent = start_run(
        store, family.experiment, name=f"{family.key}-sweep-seed{seed}",
        params={"sweep": family.grid, "data": data.params, "epochs": family.epochs},
        tags={**tags, "role": "sweep"}, datasets=[data.processed],
        seeds={"split": seed},
    )
    children: dict[str, ActiveRun] = {}
    with parent:
        for index, config in enumerate(configs):
            model_seed = derive_seed(seed, family_index, index, 0)
            bootstrap_seed = derive_seed(seed, family_index, index, 1)
            child = parent.child(
                config.name, params=config.params, tags={**tags, "role": "trial"},
                datasets=[data.processed],
                seeds={"split": seed, "model": model_seed, "shuffle": model_seed,
                       "bootstrap": bootstrap_seed},
            )
            with child:
                scores = train_child(child, config, data, family.epochs, model_seed,
                                     bootstrap_seed, plan.bootstrap_resamples)
            children[child.id] = child
            out(f"  {config.name:<28} val_acc {scores.val_acc:.4f}  "
                f"95% CI [{scores.val_acc_low:.4f}, {scores.val_acc_high:.4f}]  "
                f"train_loss {scores.train_loss:.4f}")
        best_run, best_value = store.best_runs(
            "val_acc", k=1, filter=f"parent_run_id = '{parent.id}'")[0]
        parent.log_metric("best_val_acc", best_value, unit="ratio",
                          metric_kind="accuracy", split="validation")
        parent.set_tags({"best_run_id": best_run.id})

    version = children[best_run.id].register_model(
        family.model_name, script_path=__file__,
        description=f"best of sweep {parent.run.name} by val_acc",
        tags={"val_acc": f"{best_value:.4f}", "family": family.key},
    )
    store.set_alias(family.model_name, ALIAS, version.version)
    out(f"  registered {family.model_name} v{version.version} from run {best_run.name} "
        f"(val_acc {best_value:.4f}), alias {ALIAS!r}")
    return SweepResult(
        family=family.key, experiment_id=parent.run.experiment_id,
        parent_run_id=parent.id, child_run_ids=list(children), best_run_id=best_run.id,
        best_val_acc=best_value, raw_dataset=data.raw, processed_dataset=data.processed,
        model_name=family.model_name, model_version=version, group_by=family.group_by,
    )


# ----------------------------------------------------------------------
# report
# ----------------------------------------------------------------------


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Format rows as left-aligned columns under a header and a rule."""
    widths = [max([len(header), *(len(row[i]) for row in rows)])
              for i, header in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths))
        return "  ".join(padded).rstrip()

    return [line(headers), line(["-" * width for width in widths]),
            *(line(row) for row in rows)]


def comparison_lines(store: Store, sweep: SweepResult, count: int = 3) -> list[str]:
    ranked = store.best_runs("val_acc", k=count,
                             filter=f"parent_run_id = '{sweep.parent_run_id}'")
    run_ids = [run.id for run, _ in ranked]
    comparison = store.compare_runs(run_ids)
    rows = []
    for section in ("params", "metrics"):
        for key, values in comparison[section].items():
            if key.startswith("data."):
                continue
            rows.append([f"{section}.{key}", *(display(value) for value in values)])
    intervals = []
    for run_id in run_ids:
        point = store.latest_metrics(run_id).get("val_acc")
        intervals.append(f"[{point.ci_low:.4f}, {point.ci_high:.4f}]"
                         if point is not None and point.ci_low is not None else "")
    rows.append(["val_acc 95% CI", *intervals])
    headers = ["field", *(run["name"] for run in comparison["runs"])]
    return text_table(headers, rows)


def aggregate_lines(store: Store, sweep: SweepResult) -> list[str]:
    groups = store.aggregate("val_acc", group_by=sweep.group_by,
                             filter=f"parent_run_id = '{sweep.parent_run_id}'")
    rows = []
    for group in groups:
        interval = "" if group["ci95_low"] is None else \
            f"[{group['ci95_low']:.4f}, {group['ci95_high']:.4f}]"
        rows.append([display(group["group"]), str(group["count"]),
                     display(group["mean"]), display(group["median"]),
                     display(group["stddev"]), display(group["min"]),
                     display(group["max"]), interval])
    headers = [sweep.group_by, "runs", "mean", "median", "stddev", "min", "max",
               "95% CI of mean"]
    return text_table(headers, rows)


def trace_line(graph: LineageGraph, target_id: str) -> str:
    """Return the shortest lineage path from the graph's root to `target_id` as text."""
    paths = graph.paths_to(target_id)
    if not paths:
        return f"no path from {graph.root} to {target_id} within the traversal depth"
    path = min(paths, key=len)

    def label(node_id: str) -> str:
        node = graph.details.get(node_id)
        if node is None:
            return node_id
        return f"{node.kind.value} {node.label or node_id}"

    parts = [label(graph.root)]
    for edge in path:
        far = edge.upstream if graph.direction == "upstream" else edge.downstream
        parts.append(f"{relation_of(edge, graph.direction)} {label(far)}")
    return " <- ".join(parts)


def report(store: Store, result: DemoResult, out: Callable[[str], None]) -> None:
    for sweep in result.sweeps:
        out(f"\nBest runs of {sweep.family} sweep by val_acc, side by side:")
        for line in comparison_lines(store, sweep):
            out("  " + line)
    for sweep in result.sweeps:
        out(f"\nval_acc of the {sweep.family} sweep grouped by {sweep.group_by}:")
        for line in aggregate_lines(store, sweep):
            out("  " + line)
    for sweep in result.sweeps:
        version = sweep.model_version
        graph = store.upstream(version.id, depth=4)
        out(f"\nLineage of {sweep.model_name} v{version.version} (upstream, 4 hops):")
        for line in lineage_lines(graph):
            out("  " + line)
        out("Trace to the raw dataset:")
        out("  " + trace_line(graph, sweep.raw_dataset.id))


# ----------------------------------------------------------------------
# entry points
# ----------------------------------------------------------------------


def main(store_url: str | None, quick: bool = False, seed: int = 0,
         out: Callable[[str], None] = print) -> DemoResult:
    """Run the demo against the store at `store_url` and return what it recorded.

    `store_url` None means $MLTRAIL_STORE, else the local default store. Every
    line of output goes through `out`.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidInputError(f"seed {seed!r} is invalid; expected an int from 0 to "
                                f"{MAX_SEED}", seed)
    started = time.perf_counter()
    plan = QUICK if quick else FULL
    store = connect(store_url)
    try:
        result = DemoResult(store_url=store.url)
        out(f"mltrail demo: {'quick' if quick else 'full'} mode, seed {seed}, "
            f"store {store.url}")
        for index, family in enumerate((sgd_family(plan), mlp_family(plan))):
            result.sweeps.append(run_sweep(store, family, index, plan, seed, out))
        report(store, result, out)
        result.seconds = time.perf_counter() - started
        out(f"\nfinished in {result.seconds:.1f} s")
        if not store.url.startswith("memory:"):
            out(f"next, try: mltrail --store {store.url} runs list")
        return result
    finally:
        store.close()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mltrail.demo",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--store", metavar="URL",
                        help="store URL; default: $MLTRAIL_STORE, else the local store")
    parser.add_argument("--quick", action="store_true",
                        help="run a reduced sweep that finishes in seconds")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data split, model initialisation and "
                             "bootstrap resampling (default: 0)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args(sys.argv[1:])
    try:
        main(arguments.store, quick=arguments.quick, seed=arguments.seed)
    except MltrailError as error:
        print(f"error: {error_message(error)}", file=sys.stderr)
        sys.exit(1)
