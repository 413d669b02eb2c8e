"""The ``autocompress`` command line's grammar: its commands, their arguments and the exit codes.

What each command does is in cli.py (``cmd_*``), which hands its table of them to
:func:`make_parser`; this module imports nothing of the package but its version.
"""

from __future__ import annotations

import argparse
from typing import Callable, Mapping

OK, NOT_MET, BAD_INPUT, INTERRUPTED = 0, 1, 2, 130

EXIT_CODES = f"""exit codes:
  {OK}    success; for run/resume/apply: the budget is met; for check: no regression
  {NOT_MET}    the budget is not met (the best trade-offs found are still written) / check found a regression
       / the exported ONNX model disagrees with PyTorch
  {BAD_INPUT}    bad input: a config/recipe/budget error, a missing file, a callable that cannot be imported,
       bad data or weights, a crafted artifact, an OUT_DIR in use by another run or holding a symlink
  {INTERRUPTED}  interrupted (Ctrl-C): results so far are on disk; `autocompress resume OUT_DIR` continues
"""


# -- parser ------------------------------------------------------------------------------------

def _p_run(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("config", help="run config (YAML): model, weights, data, metric, budget, techniques")
    sp.add_argument("--out", help="output folder (default: the config's out_dir)")
    sp.add_argument("--workers", type=int, help="local worker processes sharing the study (default: config)")
    sp.add_argument("--seed", type=int, help="random seed (default: config)")
    sp.add_argument("--device", help="where fine-tunes run: auto, cpu, cuda, cuda:N (default: config, auto: "
                                     "CUDA if there is one); latency is measured on the target runtime")


def _verbosity(p: argparse.ArgumentParser, top: bool) -> None:
    # on the subcommands too (`autocompress run cfg.yaml -q`); SUPPRESS there keeps a flag given
    # before the subcommand from being reset by the subparser's default
    d = {} if top else {"default": argparse.SUPPRESS}
    p.add_argument("-v", "--verbose", action="count", help="more detail: -v INFO logging (phases, each "
                   "trial's recipe), -vv DEBUG (per layer, every library)", **d)
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only, no progress lines", **d)


# commands whose exit status says more than "it ran": only they print the exit-code table
_EXIT_CODE_COMMANDS = {"run", "resume", "apply", "export", "check", "demo"}


def make_parser(commands: Mapping[str, Callable[[argparse.Namespace], int]]) -> argparse.ArgumentParser:
    """The argument grammar; ``commands`` maps each command's name to its ``cmd_*`` (cli.py)."""
    from autocompress import __version__

    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="autocompress", formatter_class=fmt, epilog=EXIT_CODES,
        description="Compress a trained PyTorch model automatically within a budget, deploy it to ONNX Runtime "
                    "and measure size, latency and accuracy.\nTypical loop: run -> (next sprint) apply -> check in CI.")
    p.add_argument("--version", action="version", version=f"autocompress {__version__}")
    _verbosity(p, top=True)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        epilog = EXIT_CODES if name in _EXIT_CODE_COMMANDS else None
        sp = sub.add_parser(name, help=help_, description=help_, formatter_class=fmt, epilog=epilog)
        sp.set_defaults(func=fn)
        _verbosity(sp, top=False)
        return sp

    models_help = "bundled model: lenet5 (LeNet-5, conv) or lenet300 (LeNet-300-100, MLP) (default lenet5)"
    sp = add("demo", commands["demo"], "compress a bundled LeNet on MNIST and print the before/after table "
                               "(the search stops after 8 trials or 8 minutes; setup and export add a few minutes)")
    sp.add_argument("--model", choices=["lenet5", "lenet300"], default="lenet5", help=models_help)
    sp.add_argument("--out", help="output folder (default: out/demo-MODEL)")
    sp.add_argument("--quick", action="store_true",
                    help="smoke run: at most 2 trials on a data subset with a looser budget, 2 minutes in "
                         "all (on a busy machine the baseline can use them up); not the demo's result")

    sp = add("train", commands["train"], "retrain a bundled baseline (fixed seed) and save its weights")
    sp.add_argument("--model", choices=["lenet5", "lenet300"], default="lenet5", help=models_help)

    _p_run(add("run", commands["run"], "search for the best compression of the config's model within its budget; "
                               "writes OUT/run.yaml, reports, model.onnx (model.pte with budget.runtime: "
                               "executorch), the artifact and recipe.yaml"))

    sp = add("resume", commands["resume"], "continue an interrupted or finished run in OUT_DIR (same study)")
    sp.add_argument("out_dir", help="the output folder of an earlier `autocompress run`")
    sp.add_argument("--workers", type=int, help="worker processes (default: as before)")
    sp.add_argument("--device", help="where fine-tunes run (default: as before)")

    sp = add("apply", commands["apply"], "replay a found recipe on a retrained model of the same architecture, "
                                 "without searching: the work of one trial (its fine-tune included) instead "
                                 "of a whole search")
    sp.add_argument("recipe", help="recipe YAML written by a run (OUT_DIR/recipe.yaml)")
    sp.add_argument("--config", required=True, help="run config naming the model, data and budget")
    sp.add_argument("--weights", help="weights of the retrained model (overrides the config's)")
    sp.add_argument("--out", help="output folder (default: CONFIG out_dir/apply)")
    sp.add_argument("--baseline", help="report.json of the original run, whose fp32 reference the budget "
                                       "is also checked against (default: the one next to RECIPE)")

    sp = add("inspect", commands["inspect"], "per-layer sensitivity of the config's model to pruning (unstructured "
                                     "and channel pruning, one layer at a time, validation split)")
    sp.add_argument("config", help="run config (YAML) naming the model, its weights and data")
    sp.add_argument("--weights", help="weights (overrides the config's)")
    sp.add_argument("--out", help="output folder (default: CONFIG out_dir/inspect)")

    sp = add("export", commands["export"], "export a model (run config) or a compressed artifact to one deployable "
                                   "file (.onnx: ONNX Runtime, .pte: ExecuTorch), checking the runtime "
                                   "against PyTorch")
    sp.add_argument("source", help="run config (.yaml) or compressed storage artifact")
    sp.add_argument("--out", required=True, help="file to write: .onnx (ONNX Runtime) or .pte (ExecuTorch)")
    sp.add_argument("--config", help="run config for the data (when SOURCE is an artifact)")
    sp.add_argument("--weights", help="weights (overrides the config's)")
    sp.add_argument("--input-shape", help="one sample's shape, e.g. 1,28,28 (artifact without --config)")
    sp.add_argument("--atol", type=float, default=1e-3, help="largest allowed |runtime - PyTorch| (default 1e-3)")

    sp = add("check", commands["check"], "CI gate: compare a model with the budget and a baseline report.json; "
                                 "exit 1 on a regression; markdown summary and JUnit XML")
    g = sp.add_argument_group("what to check (the candidate)")
    g.add_argument("--config", help="run config: data, the fp32 reference model (and the candidate if no "
                                    "--onnx/--artifact)")
    g.add_argument("--weights", help="weights for the config's model (overrides the config's)")
    g.add_argument("--onnx", help="candidate ONNX model")
    g.add_argument("--artifact", help="candidate compressed storage artifact")
    g.add_argument("--reference-onnx", help="fp32 ONNX model to time against (default: the config's model)")
    g.add_argument("--data", help="test data when there is no --config: mnist, mnist-flat, FILE.npz or module:function")
    g = sp.add_argument_group("what to compare with")
    g.add_argument("--baseline", help="report.json kept in the repo (its final figures and budget)")
    g.add_argument("--budget", help="budget YAML (default: the baseline report's budget)")
    g.add_argument("--max-drop", type=float, help="allowed accuracy drop, percentage points")
    g.add_argument("--min-size-ratio", type=float, help="at least this many times smaller than fp32")
    g.add_argument("--min-speedup", type=float, help="at least this many times faster than the fp32 reference")
    g.add_argument("--tol-accuracy", type=float, default=0.2,
                   help="points below the baseline report allowed (0.2), widened to 2.576 standard errors "
                        "of the test accuracy when the test set is too small for that")
    g.add_argument("--tol-size", type=float, help="size growth allowed, fraction (default 0.05 for a "
                                                   "deployed file, 0.15 for an entropy-coded storage artifact)")
    g.add_argument("--tol-speedup", type=float, default=0.25,
                   help="speed-up loss allowed, fraction (0.25); fails only when the interleaved ratio's "
                        "~95 %% interval lies below it")
    g.add_argument("--limit", type=int, help="use only N test samples (smoke tests)")
    g = sp.add_argument_group("outputs")
    g.add_argument("--summary", help="write the markdown summary here (for a pull-request comment)")
    g.add_argument("--junit", help="write JUnit XML here")
    return p
