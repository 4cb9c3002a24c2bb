"""TODO docstring."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class ModelConfig:
    """Keyword arguments of :class:`models.gnn.MultiFidelityNet` (descriptor width is set from the data)."""

    comp_hidden: int = 64
    comp_layers: int = 3
    comp_heads: int = 1
    emb_dim: int = 64
    head_hidden: int = 64
    head_depth: int = 2
    dropout: float = 0.0
    use_descriptors: bool = True
    use_graphs: bool = True
    graph_hidden: int = 64
    graph_layers: int = 3

    def __post_init__(self) -> None:
        if min(self.comp_hidden, self.comp_layers, self.comp_heads, self.emb_dim, self.head_hidden, self.head_depth) < 1:
            raise ValueError("model sizes must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings; ``use_ot=False`` gives the GNN-without-OT baseline.

    ``freeze_encoder`` keeps a pretrained composition encoder fixed while fine-tuning (its
    embeddings are computed once), so fine-tuning costs only the heads: the cheap mode for
    CV on two cores.
    """

    epochs: int = 60
    pretrain_epochs: int = 0
    batch_size: int = 128
    dft_batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 12
    val_fraction: float = 0.15
    w_dft: float = 0.5
    w_exp: float = 1.0
    w_calibrated: float = 0.3
    w_ot: float = 0.05
    use_ot: bool = True
    ot_reg: float = 0.1
    ot_reg_m: float = 1.0
    ot_iters: int = 30
    loss: Literal["l1", "huber"] = "l1"
    clamp_min: float | None = None
    freeze_encoder: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.pretrain_epochs < 0:
            raise ValueError("epochs must be >= 1 and pretrain_epochs >= 0")
        if self.batch_size < 2 or self.dft_batch_size < 2:
            raise ValueError("batch sizes must be >= 2")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if min(self.lr, self.ot_reg, self.ot_reg_m) <= 0:
            raise ValueError("lr, ot_reg and ot_reg_m must be > 0")
        if min(self.w_dft, self.w_exp, self.w_calibrated, self.w_ot, self.weight_decay) < 0:
            raise ValueError("loss weights and weight_decay must be >= 0")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")


__all__ = ["ModelConfig", "TrainConfig"]
