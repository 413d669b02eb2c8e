"""``autocompress`` command line: a thin table from command to library function.

Each ``cmd_*`` reads its arguments, resolves the run config (``autocompress.runconfig``), calls one
library function, writes the reports, and turns the outcome into an exit code. Heavy modules are
imported inside the commands so ``autocompress --help`` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from autocompress.cli_parser import BAD_INPUT, EXIT_CODES, INTERRUPTED, NOT_MET, OK, make_parser  # noqa: F401

log = logging.getLogger("autocompress.cli")



# -- helpers ---------------------------------------------------------------------------------

def _config(path: str, out: str | None = None, **overrides: Any):
    from autocompress.runconfig import load_config

    cfg = load_config(path)
    if out is not None:
        cfg.out_dir = out
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, v)
    cfg.revalidate()
    return cfg


def _finish(result: Any, out: Path, what: str) -> int:
    """Make sure the result and its reports are on disk, print the table and the verdict."""
    from autocompress.report import before_after_table, headline

    if not (out / "report.json").exists():   # compress/apply_recipe export as they finish
        result.export(out)
    report = result.to_dict()
    print("\n".join(headline(report) + [""]))
    print(before_after_table(report))
    verdict = "budget met" if result.met else "budget NOT met"
    print(f"\n{what}: {verdict}. {report.get('message', '')}".rstrip())
    if not result.met and report.get("blocking_layers"):
        print("layers that block it: " + ", ".join(report["blocking_layers"]))
    written = sorted(p.name for p in out.iterdir() if p.is_file() and p.suffix in (".html", ".md", ".json", ".onnx",
                                                                                   ".pte", ".acz", ".yaml"))
    print(f"results in {out}: {', '.join(written)}")
    return OK if result.met else NOT_MET


def _interruptible(out: Path, fn: Callable[[], int]) -> int:
    try:
        return fn()
    except KeyboardInterrupt:
        log.warning("interrupted: results so far are in %s; continue with `autocompress resume %s`", out, out)
        return INTERRUPTED


# -- commands ----------------------------------------------------------------------------------

def cmd_demo(a: argparse.Namespace) -> int:
    from autocompress.demo import run_demo

    return run_demo(a.model, Path(a.out or f"out/demo-{a.model}"), a.quick)


def cmd_train(a: argparse.Namespace) -> int:
    from autocompress.baselines import train_baseline

    _, acc = train_baseline(a.model, save=True)
    print(f"{a.model}: test accuracy {100 * acc:.2f} %")
    return OK


def _resolve(cfg: Any, weights: str | None = None) -> tuple[Any, Any, Any]:
    from autocompress.data_checks import warn_data_pitfalls
    from autocompress.runconfig import load_data, load_metric, load_model

    model, data = load_model(cfg, weights=weights), load_data(cfg)
    from autocompress.validate import check_run_inputs
    check_run_inputs(model, data, class_labels=cfg.metric is None)   # bad input fails before any write
    if cfg.metric is None:   # top-1 models only: a custom metric's outputs are not class scores
        warn_data_pitfalls(model, data)
    return model, data, load_metric(cfg)


def _search(cfg: Any, resolved: tuple[Any, Any, Any], resume: bool) -> int:
    model, data, metric = resolved
    out = Path(cfg.out_dir)

    def go() -> int:
        from autocompress.runconfig import model_factory
        from autocompress.search import ResultOptions, SearchOptions, TrainingOptions, compress

        result = compress(model, data, cfg.budget,
                          search=SearchOptions(techniques=list(cfg.techniques), storage=cfg.storage, seed=cfg.seed,
                                               workers=cfg.workers, resume=resume),
                          training=TrainingOptions(evaluate=metric, device=cfg.device),
                          results=ResultOptions(out_dir=out, title=f"autocompress run: {cfg.model}",
                                                model_factory=model_factory(cfg)))
        return _finish(result, out, "resumed run" if resume else "run")
    return _interruptible(out, go)


def cmd_run(a: argparse.Namespace) -> int:
    cfg = _config(a.config, a.out, workers=a.workers, seed=a.seed, device=a.device)
    resolved = _resolve(cfg)          # a config that cannot load fails before anything is written
    out = Path(cfg.out_dir).resolve()
    cfg.out_dir = str(out)
    from autocompress.safefs import DirLock

    with DirLock(out):                # a second run on this folder stops here, before touching it
        # resolved copy (absolute out_dir and base_dir): `resume OUT_DIR` needs nothing else
        cfg.to_yaml(out / "run.yaml")
        return _search(cfg, resolved, resume=False)


def cmd_resume(a: argparse.Namespace) -> int:
    from autocompress.config import ConfigError

    path = Path(a.out_dir) / "run.yaml"
    if not path.exists():
        raise ConfigError(f"{a.out_dir} has no run.yaml: resume continues a folder made by `autocompress run`")
    cfg = _config(str(path), workers=a.workers, device=a.device)
    cfg.out_dir = str(Path(a.out_dir).resolve())
    return _search(cfg, _resolve(cfg), resume=True)


def cmd_apply(a: argparse.Namespace) -> int:
    from autocompress.config import ConfigError

    if not Path(a.recipe).exists():
        raise ConfigError(f"recipe file {a.recipe} does not exist (a run writes it as OUT_DIR/recipe.yaml)")
    cfg = _config(a.config)
    original = _original_report(a)
    out = Path(a.out or Path(cfg.out_dir) / "apply").resolve()
    model, data, metric = _resolve(cfg, a.weights)

    def go() -> int:
        from autocompress.runconfig import model_factory
        from autocompress.search import apply_recipe

        result = apply_recipe(model, Path(a.recipe), data, out_dir=out, budget=cfg.budget, evaluate=metric,
                              seed=cfg.seed, model_factory=model_factory(cfg))
        code = _finish(result, out, "apply (relative to the weights given)")
        return max(code, _versus_original(result, original, cfg.budget))
    return _interruptible(out, go)


def _original_report(a: argparse.Namespace) -> dict | None:
    from autocompress.check import read_baseline

    path = Path(a.baseline) if a.baseline else Path(a.recipe).parent / "report.json"
    if a.baseline or path.exists():
        return read_baseline(path)
    log.warning("no report.json next to %s: the budget is checked only relative to the weights given "
                "(pass --baseline RUN/report.json to compare with the original reference)", a.recipe)
    return None


def _versus_original(result: Any, original: dict | None, budget: Any) -> int:
    from autocompress.check import against_original

    if original is None:
        return OK
    ok, sentence = against_original(result.to_dict(), original, budget)
    print(f"apply (relative to the original reference): {'budget met' if ok else 'budget NOT met'}; {sentence}")
    return OK if ok else NOT_MET


def cmd_inspect(a: argparse.Namespace) -> int:
    from autocompress.report import sensitivity_tables, write_inspect
    from autocompress.runconfig import load_data, load_model
    from autocompress.search import inspect

    cfg = _config(a.config)
    out = Path(a.out or Path(cfg.out_dir) / "inspect")
    sens = inspect(load_model(cfg, weights=a.weights), load_data(cfg), out)
    paths = write_inspect(sens, out, title=f"Per-layer sensitivity of {cfg.model}")
    print(sensitivity_tables(sens))
    print(f"written: {paths['md']}")
    return OK


def cmd_export(a: argparse.Namespace) -> int:
    import torch

    from autocompress.check import _load_compressed
    from autocompress.config import ConfigError
    from autocompress import targets

    src = Path(a.source)
    try:   # the runtime from the file asked for: .onnx -> ONNX Runtime, .pte -> ExecuTorch
        target = targets.for_file(a.out)
    except targets.UnknownTargetError as e:
        raise ConfigError(f"--out: {e}") from None
    if not src.exists():
        raise ConfigError(f"{src} does not exist: pass a run config (.yaml) or a compressed artifact")
    cfg_path = a.source if src.suffix in (".yaml", ".yml") else a.config
    cfg = _config(cfg_path) if cfg_path else None
    data = None
    if cfg is not None:
        from autocompress.runconfig import load_data, load_model
        data = load_data(cfg)
    if src.suffix in (".yaml", ".yml"):
        model = load_model(cfg, weights=a.weights)
    else:
        from autocompress.runconfig import model_factory
        model = _load_compressed(src, model_factory(cfg) if cfg is not None else None)
    if data is not None:
        x = data.example_input(64)
    else:
        shape = _input_shape(a.input_shape, model)
        x = torch.rand(64, *shape, generator=torch.Generator().manual_seed(0))
        from autocompress.validate import probe
        probe(model, x[:1], "--input-shape")     # a shape that does not fit: exit 2 naming it
    path = target.export(model.eval(), x[:1], a.out)
    try:
        rep = target.parity(model, path, x, atol=a.atol)
    except targets.ParityError as e:
        log.error("%s", e)
        return NOT_MET
    print(f"exported {path} ({target.size(path)} bytes); {target.label} matches PyTorch: max |diff| "
          f"{rep.max_abs_diff:.2e}, top-1 agreement {rep.top1_agreement:.2%} on {rep.samples} inputs")
    if data is not None:
        acc = target.accuracy(path, data.loader('test', 1000))
        print(f"test accuracy on {target.label}: {100 * acc:.2f} %")
    return OK


def _input_shape(text: str | None, model: Any) -> tuple[int, ...]:
    from autocompress.config import ConfigError

    if text:
        try:
            return tuple(int(s) for s in text.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape: expected comma-separated integers like 1,28,28, got {text!r}") from None
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ConfigError("the input shape is unknown: pass --config CONFIG.yaml (its data) or --input-shape C,H,W")
    return tuple(shape)


def cmd_check(a: argparse.Namespace) -> int:
    import dataclasses

    from autocompress.check import Tolerance, budget_from, check, read_baseline, write_outputs
    from autocompress.search.budget import Budget

    baseline = read_baseline(a.baseline) if a.baseline else None
    budget = Budget.from_yaml(a.budget) if a.budget else None
    flags = {k: v for k, v in (("max_drop", a.max_drop), ("min_size_ratio", a.min_size_ratio),
                               ("min_speedup", a.min_speedup)) if v is not None}
    if flags:   # flags override single fields of the budget file / the baseline report's budget
        budget = dataclasses.replace(budget_from(baseline, budget), **flags)
    result = check(config=_config(a.config) if a.config else None, weights=a.weights, onnx=a.onnx,
                   artifact=a.artifact, reference_onnx=a.reference_onnx, data=a.data, baseline=baseline,
                   budget=budget, tolerance=Tolerance(a.tol_accuracy, a.tol_size, a.tol_speedup),
                   limit=a.limit)
    write_outputs(result, a.summary, a.junit)
    print(result.to_markdown())
    return OK if result.passed else NOT_MET


# -- parser (the grammar is in cli_parser.py) ----------------------------------------------------

COMMANDS = {"demo": cmd_demo, "train": cmd_train, "run": cmd_run, "resume": cmd_resume, "apply": cmd_apply, "inspect": cmd_inspect, "export": cmd_export, "check": cmd_check}


def build_parser() -> argparse.ArgumentParser:
    return make_parser(COMMANDS)


def _setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Default: warnings plus one progress line per trial (search/progress.py); -v our INFO lines,
    -vv DEBUG for every library; -q warnings only. basicConfig leaves a host's (or pytest's)
    handlers alone."""
    from autocompress.search import progress

    verbose = verbose or 0
    level = logging.WARNING if quiet or not verbose else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("autocompress").setLevel(level)
    if verbose < 2:   # the ONNX exporter warns about optional torchvision ops on every export
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    progress.set_enabled(not quiet)
    if quiet:
        os.environ["TQDM_DISABLE"] = "1"   # tqdm reads defaults from TQDM_* variables


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(getattr(args, "verbose", 0) or 0, getattr(args, "quiet", False))
    from autocompress.check import CheckInputError
    from autocompress.config import ConfigError
    from autocompress.data import DataError
    from autocompress.models import WeightsError
    from autocompress.safefs import BusyError, UnsafePathError

    try:
        return args.func(args)
    except (ConfigError, DataError, WeightsError, CheckInputError, FileNotFoundError, BusyError,
            UnsafePathError) as e:
        log.error("%s", e)
        log.debug("details", exc_info=True)
        return BAD_INPUT
    except KeyboardInterrupt:
        log.warning("interrupted")
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
