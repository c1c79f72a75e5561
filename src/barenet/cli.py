"""The `barenet` command line: train, evaluate, predict, gradcheck, data.

Every user error ends in one line on stderr, `barenet: error: ...`, and a non-zero exit status
(1 for errors found while running, 2 for bad flags), never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from . import __version__
from .atomic import atomic_write
from .data import datasets
from .errors import BarenetError
from .recipes import RECIPES, get_recipe


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


def _seed(text: str) -> int:
    value = _whole_number(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2^63), not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
    if not (value > 0 and np.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
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


def cmd_train(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    recipe = get_recipe(args.recipe)
    overrides = {
        k: getattr(args, k)
        for k in ("epochs", "lr", "batch_size", "seed")
        if getattr(args, k) is not None
    }
    recipe = dataclasses.replace(recipe, **overrides)
    recipe.check()
    if args.out is None:
        out = _new_run_dir(Path("runs") / f"{recipe.name}-{args.dataset}")
    else:
        out = Path(args.out)
        if (out / "model.npz").exists() and not args.overwrite:
            raise BarenetError(
                f"{out / 'model.npz'} exists; choose another --out or pass --overwrite"
            )
    dataset = _load_dataset(args.dataset, args.data_dir)
    from .modelfile import save_model
    from .train import fit

    _say(f"training recipe '{recipe.name}' on {args.dataset}: {recipe.description}")
    result = fit(recipe, dataset, progress=not args.no_progress, log=_say)
    metadata: dict[str, Any] = {
        "barenet_version": __version__,
        "recipe": recipe.to_dict(),
        "seed": recipe.seed,
        "dataset": {
            "name": dataset.spec.name,
            "md5": dict(zip(datasets.FILES, dataset.spec.md5)),
            "classes": list(dataset.spec.classes),
        },  # fmt: skip
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "train_seconds": result.train_seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = save_model(out / "model.npz", result.model, metadata)
    with atomic_write(out / "history.json", "w") as f:
        json.dump({"recipe": recipe.to_dict(), **result.history.to_dict()}, f, indent=1)
    print(f"validation accuracy {100 * result.val_accuracy:.2f}%")
    print(f"test accuracy       {100 * result.test_accuracy:.2f}%")
    print(
        f"training time       {result.train_seconds:.1f} s ({time.perf_counter() - start:.1f} s in all)"
    )
    print(f"model saved to      {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .modelfile import load_model

    model, meta = load_model(args.model)
    name = args.dataset or meta.get("dataset", {}).get("name", "mnist")
    dataset = _load_dataset(name, args.data_dir)
    from .train import to_inputs

    inputs = to_inputs(dataset.test_images)
    if model.layers[0].config().get("in_features") != inputs.shape[1] or model.num_classes != len(
        dataset.spec.classes
    ):
        raise BarenetError(f"{args.model}: the model's input or output size does not fit {name}")
    predicted = model.predict(inputs)
    y = dataset.test_labels.astype(np.int64)
    C = len(dataset.spec.classes)
    confusion = np.zeros((C, C), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    print(f"{name} test set: {len(y)} images")
    print(f"test accuracy {100 * float(np.mean(predicted == y)):.2f}%")
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


def cmd_predict(args: argparse.Namespace) -> int:
    from .images import load_digit
    from .modelfile import load_model

    model, meta = load_model(args.model)
    from .train import to_inputs

    classes = meta.get("dataset", {}).get("classes") or [str(c) for c in range(model.num_classes)]
    images = np.stack([load_digit(p) for p in args.images])  # (K, 28, 28) uint8
    if model.layers[0].config().get("in_features") != 28 * 28:
        raise BarenetError(f"{args.model}: the model does not take 28x28 images")
    probs = model.predict_proba(to_inputs(images))
    for path, p in zip(args.images, probs):
        c = int(p.argmax())
        print(f"{path}: {classes[c]} ({100 * p[c]:.1f}%)")
    return 0


def cmd_gradcheck(args: argparse.Namespace) -> int:
    from .gradcheck import TOLERANCE, check_all

    results = check_all(seed=args.seed)
    for r in results:
        print(f"{r.name:32s} relative error {r.error:.2e}  {'ok' if r.ok else 'FAILED'}")
    worst = max(results, key=lambda r: r.error)
    print(f"worst relative error {worst.error:.2e} ({worst.name}); tolerance {TOLERANCE:.0e}")
    if not worst.ok:
        raise BarenetError(
            f"gradient check failed: {worst.name} has relative error {worst.error:.2e}"
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="barenet", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"barenet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    data_names = list(datasets.DATASETS)

    p = sub.add_parser("train", help="train a recipe and save the model")
    p.add_argument("--recipe", default="seed", choices=list(RECIPES), help="default: seed")
    p.add_argument("--dataset", default="mnist", choices=data_names, help="default: mnist")
    p.add_argument("--epochs", type=_positive_int, help="override the recipe's epochs")
    p.add_argument("--lr", type=_positive_float, help="override the recipe's peak learning rate")
    p.add_argument("--batch-size", type=_positive_int, help="override the recipe's batch size")
    p.add_argument("--seed", type=_seed, help="override the recipe's seed")
    p.add_argument("--out", help="run directory (default: a new runs/<recipe>-<dataset>[-N])")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    p.add_argument("--data-dir", help="a directory holding the four dataset files (.gz or raw)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy, confusion matrix")
    p.add_argument("model", help="a model.npz file or a run directory")
    p.add_argument("--dataset", choices=data_names, help="default: the model's own")
    p.add_argument("--data-dir", help="a directory holding the four dataset files (.gz or raw)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify 28x28 greyscale digit images")
    p.add_argument("model", help="a model.npz file or a run directory")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...), 28x28")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("gradcheck", help="check every gradient against finite differences")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("data", help="fetch datasets and show the cache")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    q = data_sub.add_parser("fetch", help="fetch datasets into the cache, verified")
    q.add_argument("names", nargs="*", type=_dataset_name, metavar="DATASET",
                   help=f"{' or '.join(data_names)} (default: mnist)")  # fmt: skip
    q.add_argument("--data-dir", help="a directory holding the four dataset files (.gz or raw)")
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
    except OSError as e:  # e.g. --out in a read-only place, a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"barenet: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
