"""The ``matshift`` command: one sub-command per pipeline stage, plus predict and doctor.

Stage modules are imported only when their sub-command runs, so ``matshift --help`` stays
fast. Every expected failure (bad parameters, bad input, unwritable output) ends with a
one-paragraph message and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from models import OutputError
from models.parallel import WorkerDied
from pipeline.config import ConfigError
from pipeline.errors import MatshiftError

# name -> (module, one-line help). Each module exposes add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "fetch": ("pipeline.fetch", "read DFT and experimental sources into data/raw/"),
    "featurize": ("pipeline.featurize", "crystal graphs and composition descriptors into data/features/"),
    "align": ("pipeline.align", "unbalanced OT from DFT to experiment into data/aligned/<property>/"),
    "surrogate": ("pipeline.surrogate", "the stacked models' DFT surrogate, fitted once on DFT labels into "
                  "data/surrogates/<property>/"),
    "pretrain": ("pipeline.pretrain", "the train stage's DFT-only GNN pretraining, computed once into "
                 "data/pretrained/<property>/"),
    "train": ("pipeline.train", "train the served stacked model with its prediction intervals, the GNN ensemble "
              "and the baselines into data/models/<property>/; log and register them in MLflow"),
    "metal": ("pipeline.metal", "metal / non-metal classifier for band-gap predictions, cross-validated, into "
              "data/models/metal/"),
    "evaluate": ("pipeline.evaluate", "leak-free out-of-distribution evaluation into metrics/ and plots/"),
    "report": ("pipeline.report", "regenerate the README results table from metrics/*.json"),
    "predict": ("pipeline.predict", "predict measured properties for formulas or CIF files"),
    "doctor": ("pipeline.doctor", "check the environment, the data mirror, fetched data and models"),
}

EXIT_USAGE = 2
EXIT_FAILURE = 1


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Build the parser, importing only ``command``'s module to declare its options (start-up time)."""
    parser = argparse.ArgumentParser(
        prog="matshift",
        description=(
            "Predict experimentally measured materials properties from DFT data: fetch, "
            "featurize, align simulation to experiment with unbalanced optimal transport, "
            "train a multi-fidelity stacked model (served) and GNNs, evaluate them out of "
            "distribution, and predict new materials. "
            "`dvc repro` runs the stages in order; each also runs alone."
        ),
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or step lines: only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        mod = _import(module) if name == command else None
        if mod is not None:
            mod.add_arguments(p)
    return parser


def _command_of(argv: Sequence[str]) -> str | None:
    """Return the sub-command named in ``argv``: the first word that is not a top-level option."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:  # stage not written yet
            return None
        raise


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_of(argv))
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.quiet:
        # MLflow configures its own logger (INFO, not propagated) and draws its own artifact bars
        # when it is imported: its settings, set before that, so -q quiets it too (a user's own wins)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    mod = _import(args._module)
    if mod is None:
        print(f"matshift: the '{args.command}' command is not available in this version", file=sys.stderr)
        return EXIT_USAGE
    try:
        redirect = contextlib.nullcontext()  # -q: no bars
        if not args.quiet:
            # tqdm: imported for a stage that draws bars, not for `--help` or -q
            from tqdm.contrib.logging import logging_redirect_tqdm

            redirect = logging_redirect_tqdm()  # a log line is written above the bars, not through them
        with redirect:
            return int(mod.run(args) or 0)
    except (ConfigError, MatshiftError, OutputError, WorkerDied) as exc:
        if args.debug:
            raise
        print(f"matshift {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"matshift {args.command}: interrupted; no partial output was kept", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"matshift {args.command}: unexpected error: {type(exc).__name__}: {exc}\n"
            "Run again with `matshift --debug ...` for the traceback and report it.",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
