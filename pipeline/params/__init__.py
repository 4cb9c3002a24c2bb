"""The schema of ``params.yaml``: one module, one frozen dataclass per stage section, built on the library's configs.

Each stage's section is validated by :func:`pipeline.config.load_section` into its class here
(``pipeline.params.<stage>``). A class holds only what its stage itself needs (paths, engines,
MLflow tracking, output filters) and embeds the library's configuration dataclasses for
everything else, marked ``inline`` where their keys stand at the section's top level: the
library dataclasses are the single source of every algorithmic setting and its default. The
evaluate stage reads the ``align`` and ``train`` sections through the same classes, so it
refits per fold exactly what those stages run.

This package re-exports nothing on purpose: a stage imports only its own section's module,
so the import closure of each stage (and so its DVC dependencies, which a test checks
against ``dvc.yaml``) holds only the library code that stage runs.
"""
