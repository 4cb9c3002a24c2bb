"""``matshift doctor``: check the environment, the mirror, stage outputs and models.

Each check reports ``ok``, ``warn`` or ``fail`` with what to do about it. The exit code is
1 when any check fails, so scripts can call ``matshift doctor`` before a long run. The
value of ``MP_API_KEY`` is never printed, only whether it is set.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from models.properties import PROPERTY_NAMES

Status = Literal["ok", "warn", "fail"]

# import name -> distribution name
PACKAGES = {
    "torch": "torch",
    "torch_geometric": "torch-geometric",
    "pymatgen": "pymatgen",
    "matminer": "matminer",
    "ot": "POT",
    "mlflow": "mlflow",
    "dvc": "dvc",
    "pandas": "pandas",
    "sklearn": "scikit-learn",
    "lightgbm": "lightgbm",
    "crepes": "crepes",
}


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: %(default)s)")
    parser.add_argument("--dvc-file", type=Path, default=Path("dvc.yaml"), help="pipeline file (default: %(default)s)")


def check_python() -> list[Check]:
    v = sys.version_info
    ok = v >= (3, 11)
    return [
        Check(
            "python",
            "ok" if ok else "fail",
            f"Python {v.major}.{v.minor}.{v.micro}",
            "" if ok else "use Python 3.11 or newer (bash scripts/setup.sh)",
        )
    ]


def check_packages() -> list[Check]:
    out = []
    for name, dist in PACKAGES.items():
        try:
            importlib.import_module(name)
        except ImportError as exc:
            out.append(Check(f"package {dist}", "fail", f"cannot import: {exc}", "run bash scripts/setup.sh"))
            continue
        out.append(Check(f"package {dist}", "ok", importlib.metadata.version(dist)))
    return out


def check_device() -> list[Check]:
    try:
        # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
        import torch
    except ImportError:
        return []
    if torch.cuda.is_available():
        return [Check("device", "ok", f"CUDA GPU: {torch.cuda.get_device_name(0)}")]
    return [Check("device", "ok", "CPU only (a GPU is used automatically when present)")]


def check_mirror(params: dict) -> list[Check]:
    mirror = Path(str(params.get("fetch", {}).get("mirror", "../shared/datasets")))
    if not mirror.is_dir():
        return [
            Check(
                "data mirror",
                "fail",
                f"{mirror} does not exist",
                "put the offline mirror (shared/datasets) beside the checkout or set fetch.mirror in params.yaml",
            )
        ]
    files = sorted(p for p in mirror.rglob("*") if p.is_file() and not p.name.startswith(("LICENSE", "README")))
    return [Check("data mirror", "ok" if files else "fail", f"{mirror}: {len(files)} data files")]


def check_outputs(dvc_file: Path, params: dict) -> list[Check]:
    if not dvc_file.is_file():
        return [Check("pipeline", "fail", f"{dvc_file} not found", "run matshift from the repository root")]
    try:
        stages = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, yaml.YAMLError) as exc:
        return [Check("pipeline", "fail", f"cannot read {dvc_file}: {exc}", "fix the YAML syntax")]
    properties = params.get("properties", list(PROPERTY_NAMES))
    out = []
    for stage, spec in stages.items():
        items = [str(p) for p in spec.get("foreach", [])] if "foreach" in spec else [None]
        body = spec.get("do", spec)
        if isinstance(spec.get("foreach"), str):  # ${properties}
            items = [str(p) for p in properties]
        for item in items:
            label = stage if item is None else f"{stage}@{item}"
            missing = []
            for entry in body.get("outs", []):
                path = next(iter(entry)) if isinstance(entry, dict) else entry
                path = str(path).replace("${item}", item or "")
                if not Path(path).exists():
                    missing.append(path)
            if missing:
                out.append(Check(f"stage {label}", "warn", f"missing {', '.join(missing)}", f"run dvc repro {stage}"))
            else:
                out.append(Check(f"stage {label}", "ok", "outputs present"))
    return out


def check_secrets() -> list[Check]:
    if os.environ.get("MP_API_KEY"):
        return [Check("MP_API_KEY", "ok", "set (value not shown); the mp_api source can be used")]
    return [Check("MP_API_KEY", "ok", "not set: the Materials Project API source is off; the offline mirror is used")]


def run(args: argparse.Namespace) -> int:
    try:
        params = yaml.safe_load(Path(args.params).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        params = {}
        checks = [Check("params", "fail", f"cannot read {args.params}: {exc}", "run matshift from the repository root")]
    else:
        checks = [Check("params", "ok", str(args.params))]
    steps: list[Callable[[], list[Check]]] = [
        check_python,
        check_packages,
        check_device,
        lambda: check_mirror(params),
        lambda: check_outputs(Path(args.dvc_file), params),
        check_secrets,
    ]
    for step in steps:
        checks.extend(step())
    width = max(len(c.name) for c in checks)
    for c in checks:
        line = f"{c.status.upper():4}  {c.name:<{width}}  {c.detail}"
        if c.fix:
            line += f"  -> {c.fix}"
        print(line)
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    print(f"\n{len(checks)} checks: {failed} failed, {warned} warnings")
    return 1 if failed else 0
