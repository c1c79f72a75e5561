"""`barenet sweep`: choose a recipe's settings on the validation split, each trial a training as
`barenet train` would run it, on Ray Tune (this machine, or a cluster).

    barenet sweep --recipe cnn --grid lr=0.02,0.05,0.1 --grid batch_size=64,128 --epochs 5 \
        [--random 8 --space l2=1e-5:1e-3:log] [--seeds 2] [--asha] [--ray ADDRESS] --out DIR

A trial is one setting of the recipe's fields: it trains --seeds networks (seeds seed, seed+1,
...) on the training split and scores each on the validation split after every epoch; its
score is the mean (and std) of their final validation accuracies. The test set is never
loaded into a trial. DIR gets:

    results.csv   one row per trial: its fields, val_mean, val_std, epochs, seconds, status
    best.json     the best trial's whole recipe: `barenet train --recipe DIR/best.json`
    tune/         Ray Tune's own record, from which an interrupted sweep resumes (finished
                  trials kept, unfinished ones run again)

--asha stops hopeless trials early (asynchronous successive halving on validation accuracy,
Li et al. 2018). Values: a grid lists them (`--grid conv=32-64,48-96` for tuples); a random
space samples --random settings from LOW:HIGH, uniformly or, with `:log`, log-uniformly
(whole numbers for an integer field).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BarenetError
from ..files.atomic import atomic_write
from ..train.loop import EpochRecord, train
from ..train.monitor import Monitor
from ..train.recipes import Recipe, build_model
from .cluster import connect, import_ray

SWEEPABLE = {f.name: f for f in dataclasses.fields(Recipe) if f.name not in ("name",
             "description", "augment", "members")}  # fmt: skip


def _field_type(name: str) -> Any:
    hints = typing.get_type_hints(Recipe)
    return hints[name]


def parse_value(name: str, text: str) -> Any:
    """A value of recipe field `name` from text: numbers, words, booleans, `a-b-c` tuples."""
    kind = _field_type(name)
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
        if typing.get_origin(kind) is tuple:
            return tuple(int(v) for v in text.split("-") if v)
    except ValueError:
        pass
    raise BarenetError(f"--grid/--space {name}: {text!r} is not a value of this field "
                       f"({getattr(kind, '__name__', kind)})")  # fmt: skip


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        _check_field(name, "--grid")
        if not sep or not values:
            raise BarenetError(f"--grid {item!r}: write FIELD=V1,V2,...")
        grid[name] = [parse_value(name, v) for v in values.split(",")]
    return grid


def parse_space(items: list[str]) -> dict[str, tuple[float, float, bool]]:
    space = {}
    for item in items:
        name, sep, rest = item.partition("=")
        _check_field(name, "--space")
        parts = rest.split(":")
        if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise BarenetError(f"--space {item!r}: write FIELD=LOW:HIGH or FIELD=LOW:HIGH:log")
        if _field_type(name) not in (int, float):
            raise BarenetError(f"--space {name}: only number fields take a range; use --grid")
        try:
            lo, hi = float(parts[0]), float(parts[1])
        except ValueError:
            raise BarenetError(f"--space {item!r}: LOW and HIGH must be numbers") from None
        log = len(parts) == 3
        if not lo < hi or (log and lo <= 0):
            raise BarenetError(
                f"--space {item!r}: needs LOW < HIGH{' and LOW > 0 for log' if log else ''}"
            )
        space[name] = (lo, hi, log)
    return space


def _check_field(name: str, flag: str) -> None:
    if name not in SWEEPABLE:
        raise BarenetError(f"{flag} {name!r}: not a recipe field; fields: "
                           f"{', '.join(sorted(SWEEPABLE))}")  # fmt: skip


class _Reporter(Monitor):
    """Reports each epoch's validation accuracy to Ray Tune (for --asha and the table)."""

    def __init__(self, report: Callable[[dict[str, Any]], None], seed_index: int) -> None:
        super().__init__()
        self.report, self.seed_index = report, seed_index

    def epoch(self, record: EpochRecord, proba: Any, labels: Any, images: Any) -> None:
        self.report({"val_accuracy": record.val_accuracy, "epoch": record.epoch,
                     "seed_index": self.seed_index, "final": False})  # fmt: skip


def _trial(config: dict[str, Any], *, base: dict[str, Any], seeds: int, data: Any,
           classes: int) -> None:  # fmt: skip
    """One trial, in a Ray worker: `seeds` trainings of the recipe with `config`'s fields."""
    from ray import tune
    from threadpoolctl import threadpool_limits

    recipe = Recipe.from_dict({**base, **config})
    x_train, y_train, x_val, y_val = data
    finals: list[float] = []
    start = time.perf_counter()
    with threadpool_limits(1):
        for s in range(seeds):
            seed = recipe.seed + s
            model = build_model(recipe, x_train.shape[1:], classes, seed=seed)
            history = train(model, recipe, x_train, y_train, x_val, y_val, seed=seed,
                            progress=False, monitor=_Reporter(tune.report, s))  # fmt: skip
            finals.append(history.epochs[-1].val_accuracy)
    tune.report({"val_accuracy": float(np.mean(finals)), "val_mean": float(np.mean(finals)),
                 "val_std": float(np.std(finals)), "epoch": recipe.epochs, "seed_index": seeds,
                 "seconds": time.perf_counter() - start, "final": True})  # fmt: skip


def sweep(recipe: Recipe, dataset: Any, *, grid: dict[str, list[Any]],
          space: dict[str, tuple[float, float, bool]], samples: int, seeds: int, asha: bool,
          address: str, out: Path, say: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """Run the sweep (or resume it from out/tune); write results.csv and best.json; return the
    best row."""
    ray = import_ray()
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    if recipe.val_size == 0:
        raise BarenetError("a sweep chooses on the validation split: val_size 0 holds none out")
    for name, values in grid.items():  # every value makes a valid recipe, before any trial
        for v in values:
            _valid(recipe, name, v)
    for name, (lo, hi, _) in space.items():
        for v in (lo, hi):
            _valid(recipe, name, int(v) if _field_type(name) is int else v)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's own tables off: ours instead
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # failures are rows of our table
    connect(address, ray)
    x_train, y_train, x_val, y_val = dataset.split(recipe.val_size)  # never the test set
    fields = [*grid, *space]
    param_space: dict[str, Any] = {k: tune.grid_search(v) for k, v in grid.items()}
    for name, (lo, hi, log) in space.items():
        if _field_type(name) is int:
            param_space[name] = (tune.lograndint if log else tune.randint)(int(lo), int(hi) + 1)
        else:
            param_space[name] = (tune.loguniform if log else tune.uniform)(lo, hi)
    trainable = tune.with_resources(
        tune.with_parameters(
            _trial,
            base=recipe.to_dict(),
            seeds=seeds,
            data=(x_train, y_train, x_val, y_val),
            classes=len(dataset.spec.classes),
        ),  # fmt: skip
        {"cpu": 1},
    )

    class Table(tune.Callback):
        """A row of the table as each trial ends, finished, stopped early or failed."""

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            say(_format(_row(trial, fields), fields))

        on_trial_error = on_trial_complete

    out.mkdir(parents=True, exist_ok=True)
    storage = (out / "tune").resolve()
    run_config = tune.RunConfig(name="sweep", storage_path=str(storage), verbose=0,
                                callbacks=[Table()])  # fmt: skip
    experiment = storage / "sweep"
    if tune.Tuner.can_restore(str(experiment)):
        say(f"resuming the sweep in {out}: finished trials kept, unfinished ones run again")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True,
                                   resume_errored=True)  # fmt: skip
    else:
        scheduler = ASHAScheduler(time_attr="training_iteration", grace_period=1,
                                  reduction_factor=2) if asha else None  # fmt: skip
        tuner = tune.Tuner(trainable, param_space=param_space, run_config=run_config,
                           tune_config=tune.TuneConfig(metric="val_accuracy", mode="max",
                                                       num_samples=max(samples, 1),
                                                       scheduler=scheduler))  # fmt: skip
    say(f"sweep of recipe '{recipe.name}': {', '.join(fields)}; {seeds} seed(s) a trial; "
        f"scored on the {len(y_val):,} validation images")  # fmt: skip
    results = tuner.fit()
    table = [_row(results[i], fields) for i in range(len(results))]
    table.sort(key=lambda r: r["trial"])
    _write_csv(out / "results.csv", table, fields)
    finished = [r for r in table if r["status"] == "finished"]
    if not finished:
        raise BarenetError(f"no trial finished (see {out / 'results.csv'})")
    best = max(finished, key=lambda r: (r["val_mean"], -r["val_std"]))
    chosen = dataclasses.replace(recipe, name=f"{recipe.name}-sweep",
                                 description=f"{recipe.description} Settings chosen by barenet "
                                 f"sweep on validation: {settings_text(best, fields)}.",
                                 **{k: best[k] for k in fields})  # fmt: skip
    with atomic_write(out / "best.json", "w") as f:
        json.dump(chosen.to_dict(), f, indent=1)
    return best


def _valid(recipe: Recipe, name: str, value: Any) -> None:
    try:
        dataclasses.replace(recipe, **{name: value}).check()
    except BarenetError as e:
        raise BarenetError(f"{name}={value}: {e}") from None


def _row(trial: Any, fields: list[str]) -> dict[str, Any]:
    """A trial (a live Trial, or a finished Result) as a row of results.csv."""
    last = getattr(trial, "last_result", None) or getattr(trial, "metrics", None) or {}
    config = getattr(trial, "config", None) or last.get("config", {})
    done = bool(last.get("final"))
    trial_id = getattr(trial, "trial_id", None) or last.get("trial_id", "")
    error = getattr(trial, "error", None)
    path = getattr(trial, "error_file", None)
    if not error and path and Path(path).is_file():  # a live trial: its error, as Tune saved it
        error = Path(path).read_text(errors="replace")
    if done:
        status = "finished"
    elif error or getattr(trial, "status", "") == "ERROR":
        status = "failed: " + (str(error).strip().splitlines() or ["see tune/"])[-1][:200]
    else:
        status = f"stopped early after epoch {last.get('epoch')}"
    return {
        "trial": str(trial_id),
        **{k: config.get(k) for k in fields},
        "val_mean": last.get("val_mean", math.nan) if done else last.get("val_accuracy", math.nan),
        "val_std": last.get("val_std", math.nan),
        "seeds": last.get("seed_index", 0) if done else 0,
        "epochs": last.get("epoch"),
        "seconds": round(float(last.get("seconds", last.get("time_total_s", math.nan))), 1),
        "status": status,
    }


def settings_text(row: dict[str, Any], fields: list[str]) -> str:
    def show(v: Any) -> str:
        if isinstance(v, tuple | list):
            return "-".join(str(x) for x in v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={show(row[k])}" for k in fields)


def _format(row: dict[str, Any], fields: list[str]) -> str:
    val = row["val_mean"]
    score = "-" if math.isnan(val) else f"{100 * val:.2f}%"
    if row["status"] == "finished" and row["seeds"] > 1:
        score += f" ± {100 * row['val_std']:.2f}"
    return (
        f"trial {row['trial']}: {settings_text(row, fields)}  validation {score}  ({row['status']})"
    )


def _write_csv(path: Path, table: list[dict[str, Any]], fields: list[str]) -> None:
    columns = ["trial", *fields, "val_mean", "val_std", "seeds", "epochs", "seconds", "status"]
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in table:
            writer.writerow({k: "-".join(map(str, v)) if isinstance(v, tuple | list) else v
                             for k, v in row.items()})  # fmt: skip
