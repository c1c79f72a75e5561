"""The `barenet` command line: train, evaluate, predict, plot, serve, gradcheck, trace, export, data.

Every user error ends in one line on stderr, `barenet: error: ...`, and a non-zero exit status
(1 for errors found while running, 2 for bad flags), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from ..data import datasets
from ..errors import BarenetError
from ..files.atomic import atomic_write
from ..files.modelfile import default_model_path, member_folder, resolve_all
from ..train.recipes import RECIPES, Recipe, get_recipe
from ..version import __version__


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line instead of argparse's usage + message."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _count(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _seed(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^63), not {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _port(text: str) -> int:
    value = _whole_number(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 1..65535, not {value}")
    return value


def _probability(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def _dataset_name(text: str) -> str:
    if text not in datasets.DATASETS:
        raise argparse.ArgumentTypeError(
            f"unknown dataset {text!r} (choose from {', '.join(datasets.DATASETS)})"
        )
    return text


def _load_dataset(name: str, data_dir: str | None) -> datasets.Dataset:
    return datasets.load(name, data_dir=data_dir, report=_say)


def _new_run_dir(base: Path) -> Path:
    """runs/seed, then runs/seed-2, runs/seed-3, ...: a new run never replaces an old model."""
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _write_history(directory: Path, recipe: dict[str, Any], history: Any) -> None:
    """history.json (recipe + epochs) and history.csv (one row per epoch), atomically."""
    epochs = history.to_dict()["epochs"]
    with atomic_write(directory / "history.json", "w") as f:
        json.dump({"recipe": recipe, "epochs": epochs}, f, indent=1)
    with atomic_write(directory / "history.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=list(epochs[0]) if epochs else ["epoch"])
        writer.writeheader()
        writer.writerows(epochs)


def _dataset_metadata(dataset: datasets.Dataset, source: dict[str, Any] | None = None
                      ) -> dict[str, Any]:  # fmt: skip
    if source is not None:  # your own data: where it came from and how it was prepared
        return {"name": dataset.spec.name, "classes": list(dataset.spec.classes),
                "source": source}  # fmt: skip
    return {
        "name": dataset.spec.name,
        "md5": dict(zip(datasets.FILES, dataset.spec.md5)),
        "classes": list(dataset.spec.classes),
    }


def cmd_train(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    overrides = {
        k: getattr(args, k)
        for k in ("epochs", "lr", "batch_size", "seed", "members", "val_size", "teacher")
        if getattr(args, k) is not None
    }
    if "teacher" in overrides:  # the run keeps where it is, for a resume from anywhere
        overrides["teacher"] = str(Path(overrides["teacher"]).resolve())
    source: dict[str, Any] | None = None  # your own data: where from and how prepared
    if args.ray is not None and args.gpu:
        raise BarenetError("--gpu trains in this process; --ray trains members elsewhere: "
                           "give one of them")  # fmt: skip
    xp = _gpu() if args.gpu else None  # CuPy and a GPU present, before anything is written
    if args.ray is not None and args.watch:
        raise BarenetError("--watch shows one training in this process; --ray trains members "
                           "elsewhere: give one of them")  # fmt: skip
    if args.ray is not None:  # Ray present and the cluster reachable, before anything is written
        from .cluster import connect, import_ray

        connect(args.ray, import_ray())
    if args.resume is not None:
        given = [f"--{k.replace('_', '-')}" for k in ("recipe", "dataset", "out", "data",
                                                       "prepare", "image_size", *overrides)
                 if getattr(args, k) is not None]  # fmt: skip
        if given:
            raise BarenetError(
                f"--resume continues a run as it was started; drop {', '.join(given)}"
            )
        out = Path(args.resume)
        try:
            run = json.loads((out / "run.json").read_text())
            recipe, dataset_name = Recipe.from_dict(run["recipe"]), run["dataset"]
            source = run.get("data")
        except FileNotFoundError:
            raise BarenetError(f"{out}: not a run directory (no run.json)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise BarenetError(f"{out / 'run.json'}: not a valid run description ({e})") from None
        if source is None and dataset_name not in datasets.DATASETS:
            raise BarenetError(f"{out / 'run.json'}: unknown dataset {dataset_name!r}")
        dataset = _load_dataset(dataset_name, args.data_dir) if source is None else \
            _load_own_again(source)  # fmt: skip
    else:
        if args.data is not None and args.dataset is not None:
            raise BarenetError("--data trains on your own data, --dataset on a built-in one: "
                               "give one of them")  # fmt: skip
        if args.data is None and (args.prepare or args.image_size):
            raise BarenetError("--prepare and --image-size apply to your own data (--data PATH)")
        if args.data is not None:
            from ..data.own import load_own

            dataset, own = load_own(args.data, args.prepare or "auto", args.image_size)
            source = own.to_dict()
            dataset_name = dataset.spec.name
            _say(f"{args.data}: {len(dataset.train_labels):,} images in "
                 f"{len(dataset.spec.classes)} classes ({', '.join(dataset.spec.classes[:12])}"
                 f"{', ...' if len(dataset.spec.classes) > 12 else ''}), {own.size}x{own.size}, "
                 f"{_PREPARED[own.prepare]}{', inverted to light on dark' if own.invert else ''}"
                 f"; held out for testing: "
                 f"{len(dataset.test_labels):,}")  # fmt: skip
        else:
            dataset_name = args.dataset or "mnist"
        base = _recipe(args.recipe or "seed", "mnist" if source else dataset_name)
        recipe = dataclasses.replace(base, **overrides)
        if source is not None:
            recipe = _own_val_split(recipe, dataset)
        recipe.check()
        if args.out is None:
            out = _new_run_dir(Path("runs") / f"{recipe.name}-{_slug(dataset_name)}")
        else:
            out = Path(args.out)
            taken = [p for p in ("model.npz", "run.json") if (out / p).exists()]
            if taken and not args.overwrite:
                raise BarenetError(
                    f"{out / taken[0]} exists; choose another --out, pass --overwrite, "
                    f"or continue it with --resume {out}"
                )
        if source is None:
            dataset = _load_dataset(dataset_name, args.data_dir)
        if recipe.val_size >= len(dataset.train_labels):
            raise BarenetError(f"a validation split of {recipe.val_size} images leaves none of "
                               f"{dataset.spec.name}'s {len(dataset.train_labels)} training "
                               "images to train on")  # fmt: skip
    from ..train.monitor import Monitor

    if args.resume is None:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "run.json", "w") as f:
            json.dump({"recipe": recipe.to_dict(), "dataset": dataset_name,
                       **({"data": source} if source else {})}, f, indent=1)  # fmt: skip
    _say(f"training recipe '{recipe.name}' on {dataset_name}: {recipe.description}")
    _say(f"run directory {out} (continue an interrupted run with: barenet train --resume {out})")
    monitor = Monitor(members=recipe.members, classes=list(dataset.spec.classes))
    with _watching(monitor, args):
        return _train_members(args, recipe, dataset, out, monitor, start, source, xp)


def _gpu() -> Any:
    """--gpu: CuPy's module, once it has found a GPU; BarenetError saying what is missing."""
    try:
        import cupy
    except ImportError:
        raise BarenetError("--gpu needs CuPy for your CUDA version (for example pip install "
                           "cupy-cuda12x) and an NVIDIA GPU") from None  # fmt: skip
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CuPy's CUDA errors: no driver, no device
        raise BarenetError(f"--gpu: CuPy finds no GPU ({type(e).__name__}: {e})") from None
    if count < 1:
        raise BarenetError("--gpu: CuPy finds no GPU")
    return cupy


_PREPARED = {"photo": "prepared as photos of digits are (--prepare resize keeps them as they are)",
             "resize": "kept as they are, in grey (--prepare photo prepares them as digits)",
             "as is": "as the file holds them"}  # fmt: skip


def _recipe_name(text: str) -> str:
    """--recipe: a recipe's name, or a JSON file of one (`barenet sweep`'s best.json)."""
    if text in RECIPES or text.endswith(".json"):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                     f"{', '.join(RECIPES)}, or give a recipe's .json file)")  # fmt: skip


def _recipe(name: str, dataset_name: str) -> Recipe:
    if not name.endswith(".json"):
        return get_recipe(name, dataset_name)
    try:
        recipe = Recipe.from_dict(json.loads(Path(name).read_text()))
        if recipe.teacher:  # a teacher named in a recipe file: from the file's folder
            teacher = str((Path(name).parent / recipe.teacher).resolve())
            recipe = dataclasses.replace(recipe, teacher=teacher)
        return recipe
    except FileNotFoundError:
        raise BarenetError(f"{name}: no such recipe file") from None
    except (ValueError, TypeError, KeyError) as e:
        raise BarenetError(f"{name}: not a recipe ({e})") from None


def _own_source(meta: dict[str, Any]) -> dict[str, Any]:
    """How a model's own data was prepared (metadata dataset.source); {} for a built-in set."""
    d = meta.get("dataset")
    source = d.get("source") if isinstance(d, dict) else None
    return source if isinstance(source, dict) else {}


def _own_val_split(recipe: Recipe, dataset: datasets.Dataset) -> Recipe:
    """Own data's validation split as MNIST's: a twelfth of the training set, at most the
    recipe's."""
    n = len(dataset.train_labels)
    return dataclasses.replace(recipe, val_size=min(recipe.val_size, max(1, n // 12)))


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.") or "data"


def _load_own_again(source: dict[str, Any]) -> datasets.Dataset:
    """A resumed run's own data, loaded and prepared as at the start, and checked unchanged."""
    from ..data.own import load_own

    layout_is_folder = source.get("layout") == "folder"
    dataset, own = load_own(source["path"], source["prepare"] if layout_is_folder else "auto",
                            int(source["size"]) if layout_is_folder else None,
                            source.get("invert") if layout_is_folder else None)  # fmt: skip
    if own.fingerprint != source.get("fingerprint"):
        raise BarenetError(f"{source['path']}: the data changed since the run started; start a "
                           "new run (or put the data back)")  # fmt: skip
    return dataset


@contextlib.contextmanager
def _watching(monitor: Any, args: argparse.Namespace) -> Iterator[None]:
    """While training: the live page when --watch asks for it, and Ctrl-C as a clean stop
    (the current step ends, then the model, history and checkpoint are saved; a second Ctrl-C
    aborts at once)."""
    from .live import Watch

    watch = Watch(monitor, args.host, args.port) if args.watch else None
    if watch is not None:
        _say(f"watch it learn: {watch.url} (pause, resume and stop from the page)")

    def interrupt(signum: int, frame: Any) -> None:
        if monitor.stop_requested:
            raise KeyboardInterrupt
        _say("stopping after this step: the model and history will be saved "
             "(Ctrl-C again aborts)")  # fmt: skip
        monitor.stop()

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupt) if in_main else None
    try:
        yield
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        if watch is not None:
            watch.close()


def _train_members(args: argparse.Namespace, recipe: Recipe, dataset: datasets.Dataset,
                   out: Path, monitor: Any, start: float,
                   source: dict[str, Any] | None, xp: Any = None) -> int:  # fmt: skip
    from ..files.modelfile import load_model, save_model
    from ..train.ensemble import ensemble_classes
    from ..train.loop import fit, to_inputs
    from ..train.monitor import json_number

    trained: dict[int, tuple[Any, Path]] = {}  # member index -> (model, model file)
    todo = []
    train_seconds = 0.0  # training in this process
    run_seconds = 0.0  # the epochs' time over the whole run, earlier processes' too (a resume)
    for k in range(recipe.members):
        where = member_folder(out, recipe.members, k)
        if args.resume is not None and (where / "model.npz").exists():
            model, meta = load_model(where / "model.npz")
            if not meta.get("stopped_at"):
                _say(f"member {k + 1}/{recipe.members} already trained: {where / 'model.npz'}")
                trained[k] = (model, where / "model.npz")
                run_seconds += float(meta.get("train_seconds") or 0.0)
                continue
            _say(f"member {k + 1}/{recipe.members} was stopped early: continuing it")
        todo.append(k)

    def save(k: int, result: Any) -> bool:
        """Member k's model, history and events; True when it was stopped early."""
        nonlocal train_seconds, run_seconds
        where = member_folder(out, recipe.members, k)
        member_seconds = sum(e.seconds for e in result.history.epochs)  # over the whole run
        train_seconds += result.train_seconds
        run_seconds += member_seconds
        stopped = result.history.stopped_at
        metadata: dict[str, Any] = {
            "barenet_version": __version__,
            "recipe": recipe.to_dict(),
            "seed": recipe.seed + k,
            "dataset": _dataset_metadata(dataset, source),
            "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy,
            "train_seconds": member_seconds,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **({"stopped_at": stopped} if stopped else {}),
        }
        path = save_model(where / "model.npz", result.model, metadata)
        _write_history(where, recipe.to_dict(), result.history)
        if not stopped:  # the model is saved: nothing left to resume
            (where / "checkpoint.npz").unlink(missing_ok=True)
        trained[k] = (result.model, path)
        if recipe.members > 1 and not stopped:
            _say(f"member {k + 1}: validation {_percent(result.val_accuracy)}, "
                 f"test {_percent(result.test_accuracy)}")  # fmt: skip
        return bool(stopped)

    stopped: tuple[int, Any] | None = None  # (k, Result) of a member stopped early

    if args.ray is not None and todo:
        from .cluster import train_members_on_ray

        for k, result in train_members_on_ray(
            args.ray, recipe, dataset, out, todo, checkpoint_minutes=args.checkpoint_minutes,
            threads=args.threads_per_member, say=_say,
        ):  # fmt: skip
            if save(k, result) and stopped is None:
                stopped = (k, result)
    for k in todo if args.ray is None else []:
        where = member_folder(out, recipe.members, k)
        if recipe.members > 1:
            _say(f"member {k + 1}/{recipe.members} (seed {recipe.seed + k})")
        where.mkdir(parents=True, exist_ok=True)
        monitor.member = k + 1
        result = fit(recipe, dataset, seed=recipe.seed + k, progress=not args.no_progress,
                     log=_say, checkpoint_seconds=60 * args.checkpoint_minutes, monitor=monitor,
                     checkpoint=where / "checkpoint.npz", resume=args.resume is not None,
                     xp=xp)  # fmt: skip
        monitor.save(where / "watch.json")
        if save(k, result) or (monitor.stop_requested and k != todo[-1]):
            _say(f"stopped: the model as it stands is saved; continue the run with: "
                 f"barenet train --resume {out}")  # fmt: skip
            stopped = (k, result)
            break
    test: float | None = None  # None: not measured (the run stopped before its end)
    if stopped is not None:  # the test set is read once, when the run has finished
        k, result = stopped
        what = f"member {k + 1} as it stands: " if recipe.members > 1 else ""
        val, saved = result.val_accuracy, trained[k][1]
    else:
        models = [trained[k][0] for k in sorted(trained)]
        paths = [trained[k][1] for k in sorted(trained)]
        _, _, x_val, y_val = dataset.split(recipe.val_size)
        val = math.nan  # trained on every training image: none held out
        with _images_bar(0, "the ensemble", args.no_progress) as bar:

            def accuracy(x: np.ndarray, y: np.ndarray) -> float:
                classes, _ = ensemble_classes(models, to_inputs(x), bar.update, _planned(bar))
                return float(np.mean(classes == y))

            if x_val is not None and y_val is not None:
                val = accuracy(x_val, y_val)
            test = (
                accuracy(dataset.test_images, dataset.test_labels)
                if len(dataset.test_labels)
                else math.nan
            )
        if recipe.members > 1:
            with atomic_write(out / "ensemble.json", "w") as f:
                json.dump({"members": [str(p.relative_to(out)) for p in paths],
                           "val_accuracy": json_number(val), "test_accuracy": json_number(test)},
                          f, indent=1)  # fmt: skip
        what = f"ensemble of {len(models)} " if len(models) > 1 else ""
        saved = paths[0] if len(paths) == 1 else out
    print(
        f"{what}validation accuracy {_percent(val)}"
        + (": trained on every training image (val_size 0)" if math.isnan(val) else "")
    )
    if test is None:
        print(f"{what}test accuracy       not measured: the run stopped before its end (the "
              f"test set is read when it finishes)")  # fmt: skip
    elif math.isnan(test):
        print(f"{what}test accuracy       none: the data has no held-out test set (measure "
              f"one with: barenet evaluate {out} --data HELD_OUT)")  # fmt: skip
    else:
        print(f"{what}test accuracy       {100 * test:.2f}%")
    wall = time.perf_counter() - start
    if args.resume is None:  # all of it in this process
        print(f"training time       {train_seconds:.1f} s ({wall:.1f} s in all)")
    else:
        print(f"training time       {run_seconds:.1f} s over the whole run, {train_seconds:.1f} s "
              f"of it in this process ({wall:.1f} s in all)")  # fmt: skip
    print(f"model saved to      {saved}")
    return 0


def _percent(fraction: float) -> str:
    """An accuracy as a percentage, or "none" where it was not measured (NaN)."""
    return "none" if math.isnan(fraction) else f"{100 * fraction:.2f}%"


def _check_fits(models: Sequence[Any], inputs: int, classes: int | None, what: str) -> None:
    for m in models:
        if m.input_size != inputs or (classes is not None and m.num_classes != classes):
            raise BarenetError(f"the model's input or output size does not fit {what}")


MODEL_DATASET_HELP = "the model's own (the default; mnist for a file that names none)"


def _models_test_set(
    args: argparse.Namespace, models: Sequence[Any], metas: Sequence[dict[str, Any]]
) -> tuple[datasets.Dataset, np.ndarray]:
    """The test set to measure models on, and its inputs (N, H*W): that of --dataset or of the
    dataset they were trained on (ensemble.load_ensemble has made sure the members agree);
    MNIST for a file that names none. A model trained on one dataset measured on another would
    print a meaningless accuracy: refused."""
    from ..train.ensemble import dataset_name
    from ..train.loop import to_inputs

    own_source = _own_source(metas[0])
    if getattr(args, "data", None) is not None:  # a held-out set of one's own
        from ..data.own import held_out

        if args.dataset:
            raise BarenetError("--data measures on your own held-out set, --dataset on a "
                               "built-in one: give one of them")  # fmt: skip
        source = own_source or {"prepare": "photo", "size": 28}  # MNIST's digits: as photos
        dataset = held_out(args.data, source, _class_names(models, metas))
        inputs = to_inputs(dataset.test_images)
        _check_fits(models, inputs.shape[1], len(dataset.spec.classes), str(args.data))
        return dataset, inputs
    if own_source:
        raise BarenetError(f"the model was trained on your own data ({own_source.get('path')}): "
                           "measure it on a held-out set with --data PATH")  # fmt: skip
    own = dataset_name(metas[0])
    if args.dataset and own and args.dataset != own:
        raise BarenetError(
            f"the model was trained on {own}, not {args.dataset}: leave --dataset out"
        )
    name = args.dataset or own or "mnist"
    dataset = _load_dataset(name, args.data_dir)
    inputs = to_inputs(dataset.test_images)
    _check_fits(models, inputs.shape[1], len(dataset.spec.classes), name)
    return dataset, inputs


def _models_validation_set(
    args: argparse.Namespace, models: Sequence[Any], metas: Sequence[dict[str, Any]]
) -> tuple[datasets.Dataset, np.ndarray, np.ndarray]:
    """The validation split the models were trained beside: the last val_size images of their
    training set (their recipe's val_size, which all must share), its inputs and labels. For
    choosing among models and ensembles without reading the test set."""
    from ..train.ensemble import dataset_name
    from ..train.loop import to_inputs

    if args.data is not None or args.dataset is not None:
        raise BarenetError("--validation measures on the models' own validation split: leave "
                           "--data and --dataset out")  # fmt: skip
    sizes = {(meta.get("recipe") or {}).get("val_size") for meta in metas}
    if sizes == {0}:
        raise BarenetError("--validation: the models were trained on every training image "
                           "(val_size 0); there is no validation split to measure them on")  # fmt: skip
    if len(sizes) != 1 or not isinstance(size := sizes.pop(), int) or size < 1:
        raise BarenetError("--validation needs models that were trained beside the same "
                           "validation split (their files name different ones, or none)")  # fmt: skip
    own_source = _own_source(metas[0])
    if own_source:
        dataset = _load_own_again(own_source)
    else:
        dataset = _load_dataset(dataset_name(metas[0]) or "mnist", args.data_dir)
    if size >= len(dataset.train_labels):
        raise BarenetError(f"the models' validation split ({size} images) does not fit "
                           f"{dataset.spec.name}'s {len(dataset.train_labels)} training images")  # fmt: skip
    _, _, x_val, y_val = dataset.split(size)
    assert x_val is not None and y_val is not None  # size >= 1, checked above
    inputs = to_inputs(x_val)
    _check_fits(models, inputs.shape[1], len(dataset.spec.classes), dataset.spec.name)
    return dataset, inputs, y_val


def _class_names(models: Sequence[Any], metas: Sequence[dict[str, Any]]) -> list[str]:
    """The class names the models' metadata holds (checked by load_model), else "0", "1", ..."""
    named = (metas[0].get("dataset") or {}).get("classes")
    return list(named) if named else [str(c) for c in range(models[0].num_classes)]


def cmd_sweep(args: argparse.Namespace) -> int:
    from .cluster import import_ray

    import_ray()  # one line saying what to install, before anything else
    from .sweep import parse_grid, parse_space, sweep

    grid, space = parse_grid(args.grid), parse_space(args.space)
    if not grid and not space:
        raise BarenetError("nothing to sweep: give --grid FIELD=V1,V2,... or --random N with "
                           "--space FIELD=LOW:HIGH")  # fmt: skip
    if space and not args.random:
        raise BarenetError("--space ranges need --random N (how many settings to sample)")
    if args.data is not None and args.dataset is not None:
        raise BarenetError("--data is your own data, --dataset a built-in one: give one of them")
    if args.data is not None:
        from ..data.own import load_own

        dataset, _ = load_own(args.data)
        dataset_name = "mnist"
    else:
        dataset_name = args.dataset or "mnist"
        dataset = _load_dataset(dataset_name, args.data_dir)
    recipe = _recipe(args.recipe or "seed", dataset_name)
    if args.epochs:
        recipe = dataclasses.replace(recipe, epochs=args.epochs)
    if args.data is not None:
        recipe = _own_val_split(recipe, dataset)
    out = Path(args.out)
    best = sweep(recipe, dataset, grid=grid, space=space, samples=args.random, seeds=args.seeds,
                 asha=args.asha, address=args.ray, out=out, say=_say)  # fmt: skip
    from .sweep import settings_text

    fields = [*grid, *space]
    print(
        f"best: {settings_text(best, fields)}: validation {100 * best['val_mean']:.2f}%"
        + (f" ± {100 * best['val_std']:.2f}" if args.seeds > 1 else "")
    )
    print(f"results: {out / 'results.csv'}; train it: barenet train --recipe {out / 'best.json'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..train.ensemble import deciding_members, ensemble_classes, load_ensemble

    files = [file for path in args.models for file in resolve_all(path)]
    models, metas = load_ensemble(files)
    if args.validation:
        dataset, inputs, y = _models_validation_set(args, models, metas)
        where, kind = f"{dataset.spec.name} validation split (held out in training)", "validation"
    else:
        dataset, inputs = _models_test_set(args, models, metas)
        y = dataset.test_labels
        where = f"held-out set {args.data}" if args.data else f"{dataset.spec.name} test set"
        kind = "test"
    C = len(dataset.spec.classes)
    y = y.astype(np.int64)
    undecided = 0  # inputs the later members of an ensemble went through (`ensemble_classes`)
    with _images_bar(0, "evaluating", args.no_progress) as bar:
        if args.members and len(models) > 1:
            bar.total = len(models) * len(y)
            predicted = _report_members(models, files, inputs, y, kind, bar).argmax(axis=1)
        else:
            predicted, undecided = ensemble_classes(models, inputs, bar.update, _planned(bar))
    confusion = np.zeros((C, C), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    what = f", an ensemble of {len(models)} models" if len(models) > 1 else ""
    print(f"{where}: {len(y)} images{what}")
    k = deciding_members(len(models))
    if k < len(models) and not args.members:
        print(
            f"members 1-{k} settled the vote on {len(y) - undecided} images; "
            f"{_member_range(k + 1, len(models))} went through the other {undecided}"
        )
    print(f"{kind} accuracy {100 * float(np.mean(predicted == y)):.2f}%")
    print("per-class accuracy:")
    for c, label in enumerate(dataset.spec.classes):
        total = confusion[c].sum()
        print(
            f"  {c} {label:12s} {100 * confusion[c, c] / max(total, 1):6.2f}%  ({confusion[c, c]}/{total})"
        )
    print("confusion matrix (rows: true class, columns: predicted class):")
    print("      " + "".join(f"{c:>6d}" for c in range(C)))
    for c in range(C):
        print(f"{c:>6d}" + "".join(f"{v:>6d}" for v in confusion[c]))
    return 0


def _planned(bar: Any) -> Any:
    """A function that adds n (member, image) pairs to the progress bar's total."""

    def planned(n: int) -> None:
        bar.total += n
        bar.refresh()

    return planned


def _member_range(first: int, last: int) -> str:
    """'member 5' or 'members 4-5'."""
    return f"member {first}" if first == last else f"members {first}-{last}"


def _images_bar(total: int, what: str, off: bool) -> Any:
    """A progress bar over `total` images on stderr: shown on a terminal unless off, gone
    when done (a record ensemble takes minutes to go through the test set)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="image", leave=False, mininterval=0.5,
                disable=True if off else None)  # fmt: skip


def _report_members(
    models: Sequence[Any], files: Sequence[Path], inputs: np.ndarray, y: np.ndarray, kind: str,
    bar: Any,
) -> np.ndarray:  # fmt: skip
    """Print each member's accuracy and that of the first k members together (the order given:
    how the ensemble grows), then the members' mean and std; return the members' mean class
    probabilities, (N, C), summed in the order `average_proba` sums them. bar: the progress
    bar (tqdm), updated as the members go through the images."""
    from ..train.ensemble import members_proba

    probas = members_proba(models, inputs, progress=bar.update)
    bar.close()  # the lines below replace it
    total = np.empty(0)
    accuracies = []
    print(f"members ({kind} accuracy alone; the first k together):")
    for k, (proba, file) in enumerate(zip(probas, files), 1):
        total = proba if k == 1 else total + proba
        accuracies.append(float(np.mean(proba.argmax(axis=1) == y)))
        together = float(np.mean(total.argmax(axis=1) == y))  # argmax of the sum = of the mean
        print(f"  {k:>3d}  {100 * accuracies[-1]:6.2f}%  {100 * together:6.2f}%  {file}")
    a = np.array(accuracies)
    print(f"members' mean {100 * a.mean():.2f}% ± {100 * a.std():.2f} (std over {len(a)}), "
          f"lowest {100 * a.min():.2f}%, highest {100 * a.max():.2f}%")  # fmt: skip
    return total / len(models)


def cmd_predict(args: argparse.Namespace) -> int:
    from ..data.images import load_digit
    from ..train.ensemble import average_proba, load_ensemble
    from ..train.loop import to_inputs

    # Model paths (.npz files, run directories) come first, then the images.
    split = next((i for i, a in enumerate(args.paths) if not _is_model_path(a)), len(args.paths))
    model_paths, image_paths = args.paths[:split], args.paths[split:]
    if not image_paths:
        raise BarenetError("no image to classify: give one or more image files after the model")
    models, metas = load_ensemble(model_paths or [default_model_path()])
    classes = _class_names(models, metas)
    source = _own_source(metas[0])
    side = int(source.get("size", 28))
    if source.get("prepare") == "resize" or (source and side != 28):
        from ..data.own import load_resized  # kept as they are, as the model's data was

        invert = bool(source.get("invert", False))
        images = np.stack([load_resized(p, side, invert) for p in image_paths])
    else:
        images = np.stack([load_digit(p) for p in image_paths])  # (K, 28, 28) uint8
    _check_fits(models, side * side, None, f"{side}x{side} images")
    probs = average_proba(models, to_inputs(images))
    if args.show is not None:
        from PIL import Image

        show = Path(args.show)
        show.mkdir(parents=True, exist_ok=True)
    for path, image, p in zip(image_paths, images, probs):
        top = np.argsort(-p)[:3]
        guesses = ", ".join(f"{classes[c]} {100 * p[c]:.1f}%" for c in top)
        verdict = classes[top[0]] if p[top[0]] >= args.min_confidence else "not sure"
        print(f"{path}: {verdict}  ({guesses})")
        if args.show is not None:
            seen = show / f"{Path(path).stem}-28x28.png"
            with atomic_write(seen) as f:
                Image.fromarray(image).save(f, format="PNG")
    return 0


def _is_model_path(text: str) -> bool:
    p = Path(text)
    return p.suffix == ".npz" or p.is_dir()


def cmd_plot(args: argparse.Namespace) -> int:
    from ..train.ensemble import average_proba, load_ensemble
    from .plots import plot_confusion, plot_curves, plot_first_layer, plot_mistakes

    source = Path(args.model)
    files = resolve_all(source)
    models, metas = load_ensemble(files)
    dataset, inputs = _models_test_set(args, models, metas)  # refusals before any writing
    C = len(dataset.spec.classes)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    histories = []
    for file in files:
        try:
            histories.append(json.loads((file.parent / "history.json").read_text()))
        except FileNotFoundError:
            pass
        except ValueError as e:
            raise BarenetError(f"{file.parent / 'history.json'}: not valid JSON ({e})") from None
    if histories:
        written.append(plot_curves(histories, out / "curves.png"))
    else:
        _say(f"no history.json next to {files[0]}: no training curves")
    proba = average_proba(models, inputs)
    y = dataset.test_labels.astype(np.int64)
    confusion = np.zeros((C, C), dtype=np.int64)
    np.add.at(confusion, (y, proba.argmax(axis=1)), 1)
    classes = list(dataset.spec.classes)
    written.append(plot_confusion(confusion, classes, out / "confusion.png"))
    written.append(plot_mistakes(dataset.test_images, y, proba, classes, out / "mistakes.png"))
    written.append(plot_first_layer(models[0], dataset.test_images.shape[1:], out / "weights.png"))
    for path in written:
        print(path)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ..train.ensemble import load_ensemble
    from .serve import serve

    models, metas = load_ensemble(args.models or [default_model_path()])
    classes = _class_names(models, metas)
    run = None
    if len(args.models) == 1 and Path(args.models[0]).is_dir():
        from .live import monitor_of_run

        try:  # the run's training page beside the draw page; the draw page without it
            run = monitor_of_run(Path(args.models[0]))
        except BarenetError as e:
            _say(f"no training page for {args.models[0]}: {e}")
    serve(models, classes, args.host, args.port, args.min_confidence, run=run)
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from ..nn.gradcheck import TOLERANCE, check_all

    results = check_all(seed=args.seed)
    width = max(len(r.name) for r in results)
    for r in results:
        print(f"{r.name:{width}s}  relative error {r.error:.2e}  {'ok' if r.ok else 'FAILED'}")
    worst = max(results, key=lambda r: r.error)
    print(f"worst relative error {worst.error:.2e} ({worst.name}); tolerance {TOLERANCE:.0e}")
    if not worst.ok:
        raise BarenetError(
            f"gradient check failed: {worst.name} has relative error {worst.error:.2e}"
        )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import math

    from ..files.onnxfile import export_onnx, parameters_in
    from ..train.ensemble import load_ensemble

    if args.web is not None:
        return _export_web(args)
    if not args.paths:
        raise BarenetError("give the ONNX file to write (MODEL... FILE.onnx), or --web DIR")
    *model_paths, target = args.paths
    if Path(target).suffix != ".onnx":
        raise BarenetError(f"the last argument names the ONNX file to write: {target!r} does "
                           "not end in .onnx")  # fmt: skip
    models, metas = load_ensemble(model_paths or [default_model_path()])
    side = math.isqrt(models[0].input_size)
    if side * side != models[0].input_size:
        raise BarenetError("ONNX export needs a model of square images")
    meta = {k: v for k, v in metas[0].items() if k in ("recipe", "dataset", "barenet_version")}
    meta["members"] = [m.get("seed") for m in metas]
    path = export_onnx(models, target, image_shape=(side, side),
                       classes=_class_names(models, metas), metadata=meta)  # fmt: skip
    what = f"an ensemble of {len(models)} models" if len(models) > 1 else "one model"
    print(f"{path}: {what}, {parameters_in(models):,} weights; input 'image' (N, 1, {side}, "
          f"{side}) in [0, 1], output 'probabilities' (N, {models[0].num_classes})")  # fmt: skip
    return 0


def _export_web(args: argparse.Namespace) -> int:
    from ..train.ensemble import load_ensemble
    from .webdemo import export_web

    onnx = [p for p in args.paths if p.endswith(".onnx")]
    if onnx:
        raise BarenetError(f"--web writes a folder; {onnx[0]} names an ONNX file: give one or "
                           "the other")  # fmt: skip
    models, metas = load_ensemble(args.paths or [default_model_path()])
    meta = metas[0]
    recipe = (meta.get("recipe") or {}).get("name", "a model")
    val = meta.get("val_accuracy")
    what = f"an ensemble of {len(models)} '{recipe}' networks" if len(models) > 1 else \
        f"a '{recipe}' network"  # fmt: skip
    about = f"The network: {what}."
    if isinstance(val, float) and not math.isnan(val):  # NaN: trained on every image
        about = f"The network: {what}, {100 * val:.2f}% on its validation digits."
    path = export_web(models, _class_names(models, metas), args.web, about=about,
                      version=__version__, source=_own_source(meta))  # fmt: skip
    size = sum(f.stat().st_size for f in path.iterdir())
    print(f"{path}/: index.html, barenet.js, prepare.js, pad.js, model.js ({size / 1e6:.1f} MB); put the "
          f"folder on any static web host, or open {path / 'index.html'} in a browser")  # fmt: skip
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from ..nn.trace import SUSPECT, trace
    from ..train.ensemble import load_ensemble
    from ..train.recipes import build_model

    if args.recipe is not None and args.model is not None:
        raise BarenetError("give a model or --recipe, not both")
    if args.recipe is not None:
        name = args.dataset or "mnist"
        dataset = _load_dataset(name, args.data_dir)
        recipe = get_recipe(args.recipe, name)
        model = build_model(recipe, dataset.test_images.shape[1:], len(dataset.spec.classes),
                            seed=args.seed)  # fmt: skip
        what = f"recipe {recipe.name!r}, untrained (initial weights, seed {args.seed})"
    else:
        models, metas = load_ensemble([args.model or default_model_path()])
        if len(models) > 1:
            raise BarenetError("trace one model at a time: give one member's model.npz")
        model = models[0]
        dataset, _ = _models_test_set(args, models, metas)
        what = str(args.model or default_model_path())
    from ..nn.model import to_inputs

    x = to_inputs(dataset.test_images[: args.batch])
    y = dataset.test_labels[: args.batch].astype(np.int64)
    print(f"{what}: {args.batch} {dataset.spec.name} test images, float64, training mode")
    rows = trace(model, x, y, entries=args.entries, seed=args.seed)
    print(f"{'':>3} {'layer':24s} {'output':>18s} {'mean':>9s} {'std':>9s} {'zeros':>6s} "
          f"{'|dL/dout|':>10s} {'|dL/dparams|':>22s} {'grad error':>10s}")  # fmt: skip
    for r in rows:
        norms = " ".join(f"{k} {v:.2e}" for k, v in r.param_grad_norms.items())
        print(f"{r.index:>3} {r.name:24s} {str(r.shape):>18s} {r.mean:>9.3f} {r.std:>9.3f} "
              f"{100 * r.zeros:>5.1f}% {r.grad_norm:>10.2e} {norms:>22s} {r.error:>10.1e}")  # fmt: skip
    worst = max(rows, key=lambda r: r.error)
    print(f"worst gradient error {worst.error:.1e} (layer {worst.index}, {worst.name}); "
          f"correct gradients stay below {SUSPECT:.0e}")  # fmt: skip
    wrong = [r for r in rows if r.error > SUSPECT]
    if wrong:
        # a wrong backward pass spoils the gradients of every layer below it too: the
        # deepest layer that fails is the one to look at
        r = wrong[-1]
        raise BarenetError(
            f"layer {r.index} ({r.name}): its gradients disagree with finite differences "
            f"(relative error {r.error:.1e}); check its backward pass"
        )
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    for name in args.names or ["mnist"]:
        spec = datasets.get_spec(name)
        path = datasets.fetch(
            spec, sources=datasets.default_sources(spec, args.data_dir), report=_say
        )
        print(f"{name}: ready in {path}")
    return 0


def cmd_data_info(args: argparse.Namespace) -> int:
    print(f"cache: {datasets.cache_root()} (set BARENET_DATA to move it)")
    for name in args.names or list(datasets.DATASETS):
        spec = datasets.get_spec(name)
        states = datasets.check_cache(spec)
        ok = all(s == "ok" for _, s in states)
        print(
            f"{name}: {'ready, MD5 checksums hold' if ok else 'not ready (barenet data fetch ' + name + ')'}"
        )
        for (path, state), md5 in zip(states, spec.md5):
            print(f"  {path}  {state}  (expected MD5 {md5})")
    return 0


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    """--data-dir, the same for every command that reads a dataset."""
    p.add_argument("--data-dir", help="a directory holding the four dataset files (.gz or raw)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="barenet", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"barenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    data_names = list(datasets.DATASETS)

    p = sub.add_parser("train", help="train a recipe and save the model")
    p.add_argument("--recipe", type=_recipe_name, metavar="RECIPE",
                   help=f"{', '.join(RECIPES)} (default: seed), or a recipe's .json file "
                   "(barenet sweep writes one)")  # fmt: skip
    p.add_argument("--dataset", choices=data_names,
                   help="default: mnist; a recipe may have settings of its own for a dataset "
                   "(mlp and cnn on fashion-mnist)")  # fmt: skip
    p.add_argument("--data", metavar="PATH",
                   help="your own data: a folder of class folders of images, a CSV file "
                   "(label,pixel0,...) or a folder of IDX files (docs/own-data.md)")  # fmt: skip
    p.add_argument("--prepare", choices=["auto", "photo", "resize"],
                   help="--data images: 'photo' prepares them as barenet predict prepares a "
                   "photo of a digit, 'resize' keeps them as they are (in grey, resized); "
                   "default auto: resize when all are at most 64 pixels a side")  # fmt: skip
    p.add_argument("--image-size", type=_positive_int, metavar="N",
                   help="--data images with --prepare resize: N x N (default: their "
                   "commonest size)")  # fmt: skip
    p.add_argument("--epochs", type=_positive_int, help="override the recipe's epochs")
    p.add_argument("--lr", type=_positive_float, help="override the recipe's peak learning rate")
    p.add_argument("--batch-size", type=_positive_int, help="override the recipe's batch size")
    p.add_argument("--seed", type=_seed, help="override the recipe's seed")
    p.add_argument(
        "--members",
        type=_positive_int,
        help="train an ensemble of this many networks (seeds seed, seed+1, ...)",
    )
    p.add_argument("--val-size", type=_count, metavar="N",
                   help="override the recipe's validation split, the last N training images "
                   "(0: train on all of them, with settings fixed beforehand: no validation "
                   "figure)")  # fmt: skip
    p.add_argument("--gpu", action="store_true",
                   help="train on an NVIDIA GPU through CuPy: the same layers and gradients, "
                   "the arrays on the GPU (docs/speed.md)")  # fmt: skip
    p.add_argument("--teacher", metavar="MODEL",
                   help="distil: also learn the probabilities of this trained model or ensemble "
                   "(one that held out the validation split; docs/backprop.md section 10)")  # fmt: skip
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its last checkpoint")  # fmt: skip
    p.add_argument("--out", help="run directory (default: a new runs/<recipe>-<dataset>[-N])")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    _add_data_dir(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint-minutes", type=_positive_float, default=10.0, metavar="M",
                   help="also save a checkpoint within an epoch once M minutes have passed "
                   "since the last one (default 10)")  # fmt: skip
    p.add_argument("--watch", action="store_true",
                   help="serve a live page of the training: curves, filters, mistakes, and "
                   "pause, resume and stop buttons")  # fmt: skip
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="--watch: where the page listens (default: 127.0.0.1, this machine only)",
    )
    p.add_argument("--port", type=_port, default=8000, help="--watch: default 8000")
    p.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="train the members in parallel as Ray tasks: 'local' (the default) "
                   "starts Ray here, host:port joins a cluster (pip install '.[ray]'; "
                   "docs/scale.md)")  # fmt: skip
    p.add_argument(
        "--threads-per-member",
        type=_positive_int,
        default=1,
        metavar="N",
        help="--ray: CPUs (BLAS threads) each member's task takes (default 1)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="choose a recipe's settings on validation, trials on Ray Tune")
    p.add_argument("--recipe", type=_recipe_name, metavar="RECIPE", help="the recipe to vary "
                   "(default: seed)")  # fmt: skip
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="FIELD=V1,V2,...",
        help="every value of a recipe field (tuples as 32-64); repeat for more fields",
    )
    p.add_argument(
        "--random",
        type=_positive_int,
        default=0,
        metavar="N",
        help="N settings sampled from the --space ranges (with --grid: N per grid point)",
    )
    p.add_argument("--space", action="append", default=[], metavar="FIELD=LOW:HIGH[:log]",
                   help="a range to sample a number field from")  # fmt: skip
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=1,
        metavar="K",
        help="networks per trial (seeds seed..seed+K-1): its score is their mean",
    )
    p.add_argument("--epochs", type=_positive_int, help="override the recipe's epochs")
    p.add_argument("--asha", action="store_true", help="stop hopeless trials early (ASHA)")
    p.add_argument(
        "--ray",
        default="local",
        metavar="ADDRESS",
        help="'local' (default: Ray on this machine) or a cluster's host:port",
    )
    p.add_argument("--dataset", type=_dataset_name, help="default: mnist")
    p.add_argument("--data", metavar="PATH", help="your own data (as barenet train --data)")
    p.add_argument("--out", required=True, help="where results.csv, best.json and Tune's "
                   "record go (an interrupted sweep there resumes)")  # fmt: skip
    _add_data_dir(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy, confusion matrix")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="model.npz files or run directories; several are averaged as an "
                   "ensemble")  # fmt: skip
    p.add_argument("--validation", action="store_true",
                   help="measure on the validation split the models were trained beside (the "
                   "last images of the training set, as the recipe holds them out), not the "
                   "test set: for choosing among models without reading the test set")  # fmt: skip
    p.add_argument("--members", action="store_true",
                   help="for several models: each one's accuracy, the first k together (k = "
                   "1, 2, ...), and the members' mean and std, before the ensemble's")  # fmt: skip
    p.add_argument("--dataset", choices=data_names, help=MODEL_DATASET_HELP)
    p.add_argument("--data", metavar="PATH",
                   help="a held-out set of your own, in a --data layout of barenet train; "
                   "class names must be among the model's")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_data_dir(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify 28x28 greyscale digit images")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="[MODEL...] IMAGE",
        help="models (.npz files or run directories; several are averaged; default: "
        "the model that ships with barenet), then photos or scans of one digit each "
        "(PNG, JPEG, ...; any size, dark ink on light paper or the reverse)",
    )
    p.add_argument(
        "--min-confidence",
        type=_probability,
        default=0.5,
        metavar="P",
        help="below this probability, say 'not sure' (default: 0.5)",
    )
    p.add_argument("--show", metavar="DIR",
                   help="write the 28x28 image the network saw for each input to DIR")  # fmt: skip
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("plot", help="training curves, confusion matrix, mistakes, weights (PNG)")
    p.add_argument("model", help="a run directory (with history.json) or a model.npz file")
    p.add_argument("--out", help="where to write the PNG files (default: <run dir>/plots)")
    p.add_argument("--dataset", choices=data_names, help=MODEL_DATASET_HELP)
    p.add_argument("--data", metavar="PATH",
                   help="a held-out set of your own, in a --data layout of barenet train; "
                   "class names must be among the model's")  # fmt: skip
    _add_data_dir(p)
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("serve", help="a local web page: draw a digit, see the network read it")
    p.add_argument(
        "models",
        nargs="*",
        metavar="MODEL",
        help="model.npz files or run directories (default: the packaged model)",
    )
    p.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1 (this machine only)")
    p.add_argument("--port", type=_port, default=8000, help="default: 8000")
    p.add_argument(
        "--min-confidence",
        type=_probability,
        default=0.5,
        metavar="P",
        help="below this probability the page says 'not sure' (default: 0.5)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("gradcheck", help="check every gradient against finite differences")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("export", help="write a model or an ensemble as an ONNX file, or as a "
                       "static web page that runs it in the browser")  # fmt: skip
    p.add_argument("paths", nargs="*", metavar="MODEL... FILE.onnx",
                   help="models (default: the packaged one), then the ONNX file to write")  # fmt: skip
    p.add_argument("--web", metavar="DIR",
                   help="instead, write a draw-a-digit page for any static web host into DIR "
                   "(the network computed in the browser)")  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("trace", help="one small batch through a model, layer by layer, with "
                       "every gradient checked")  # fmt: skip
    p.add_argument("model", nargs="?", help="a model file or run directory (default: the "
                   "packaged model)")  # fmt: skip
    p.add_argument("--recipe", choices=list(RECIPES), help="trace a recipe's untrained network")
    p.add_argument("--dataset", type=_dataset_name, help=MODEL_DATASET_HELP)
    p.add_argument("--batch", type=_positive_int, default=4, help="images (default 4)")
    p.add_argument("--entries", type=_positive_int, default=3,
                   help="entries of each input and parameter checked (default 3)")  # fmt: skip
    p.add_argument("--seed", type=_seed, default=0, help="which entries, masks and weights")
    p.add_argument("--data-dir", help="a directory holding the dataset's files")
    p.set_defaults(func=cmd_trace)

    p = sub.add_parser("data", help="fetch datasets and show the cache")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    q = data_sub.add_parser("fetch", help="fetch datasets into the cache, verified")
    q.add_argument("names", nargs="*", type=_dataset_name, metavar="DATASET",
                   help=f"{' or '.join(data_names)} (default: mnist)")  # fmt: skip
    _add_data_dir(q)
    q.set_defaults(func=cmd_data_fetch)
    q = data_sub.add_parser("info", help="where the files are and whether their checksums hold")
    q.add_argument("names", nargs="*", type=_dataset_name, metavar="DATASET", help="default: all")
    q.set_defaults(func=cmd_data_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BarenetError as e:
        print(f"barenet: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("barenet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`barenet evaluate ... | head`): no error
        # stdout's last flush at exit would fail again: point it at nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # e.g. --out in a read-only place, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"barenet: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
