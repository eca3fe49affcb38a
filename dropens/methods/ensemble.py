"""``ensemble``: ``K`` independent copies of the backbone, trained at once in one process, vectorized.

The explicit ensemble that dropout is compared with (Lakshminarayanan et al. 2017, "deep
ensembles", without adversarial training): ``K`` networks with their own initializations, each
optionally with dropout (``method.member_dropout``), all seeing the same batches.

Vectorization. The ``K`` copies are stacked with ``torch.func.stack_module_state``: every parameter
is one ``nn.Parameter`` of shape ``[K, ...]`` and every buffer (BatchNorm running statistics,
dropout layer seeds) one tensor ``[K, ...]``, held by :class:`StackedEnsemble` under the same names as
in the backbone (so Lightning, the optimizer and checkpoints see ordinary parameters). The forward
pass is ``vmap(functional_call)`` over the member axis, with ``randomness="different"`` (each member
draws its own dropout masks). BatchNorm in train mode updates each member's running statistics.

Initialization. Member ``k`` of a run with seed ``s`` is the backbone built right after
``torch.manual_seed(s * 1000 + k)`` (:func:`init_seed`) — the network a single run would build
with that seed — so member ``k`` can be reproduced alone (``K < 1000`` keeps the seeds of runs with
different ``s`` apart).

Independence. The loss is the **sum** over members of each member's mean cross-entropy, so the
gradient of member ``k``'s parameters is exactly the gradient of training it alone. AdamW and SGD
(with momentum and weight decay) update every parameter element-wise, so each member's update is the
one it would get alone: training the stacked ensemble equals training the ``K`` networks one after
the other on the same batches (tested in float64 to 1e-9; in float32 the stacked matmuls sum in
another order, and Adam's ``g / (|g| + eps)`` amplifies that rounding on near-zero gradients to
~1e-5 after one step, so float32 trajectories drift apart over hundreds of steps, as two BLAS builds
would). What would couple the members and break
this: gradient clipping by norm (``trainer.gradient_clip_val``: one norm over all members, so one
member's large gradient shrinks every member's step), and optimizers that are not element-wise
(layer-wise trust ratios as in LARS/LAMB; not offered here).

Inference protocol (``predict(model, x, "members")``): the backbone has ``n_members = K`` and
``stacked_members = True``; its ``forward`` takes ``K * B`` rows stacked member-major ``(m b)`` and
returns ``(K * B, C)``, rows ``k*B .. (k+1)*B - 1`` from member ``k``. There is no deterministic pass
of "the" network: the evaluation plan is the members, alone and aggregated. (Member masks,
``control.member``, do not apply: each member's dropout layers sample, in training, with
``member_dropout=true``.)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from dropens.errors import ConfigError
from dropens.layout import unstack
from dropens.methods.base import (
    StackedMembersMethod,
    check_member_dropout,
    member_dropout_spec,
    warn_coupled_clipping,
)
from dropens.methods.subnets import check_k
from dropens.models import build_model


def init_seed(seed: int, k: int) -> int:
    """Init seed of member ``k`` of a run with seed ``seed``: ``seed * 1000 + k``."""
    return int(seed) * 1000 + int(k)


def _set_tensor(module: nn.Module, name: str, value: Tensor, parameter: bool) -> None:
    *path, leaf = name.split(".")
    owner = module.get_submodule(".".join(path)) if path else module
    if parameter:
        owner._parameters[leaf] = nn.Parameter(value)
    else:
        owner._buffers[leaf] = value  # keeps the buffer's persistence flag


class StackedEnsemble(nn.Module):
    """``K`` copies of one architecture as one module: parameters and buffers ``[K, ...]``.

    Args:
        members: ``K >= 1`` modules of identical structure (their values are copied, not shared).

    Attributes:
        net: the architecture, holding the stacked tensors under the backbone's own names
            (``net.classifier.weight`` is ``[K, C, F]``). Do not call it directly.
        n_members: ``K``.
        stacked_members: ``True`` (the ``members`` inference protocol, see the module docstring).

    Shapes: :meth:`forward` ``(K * B, ...) -> (K * B, C)`` member-major; :meth:`forward_members`
    ``(B, ...) -> [K, B, C]`` (every member on the same inputs).
    """

    stacked_members: ClassVar[bool] = True

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member (method.k >= 1)")
        self.n_members = len(members)
        params, buffers = stack_module_state(list(members))
        self.net = copy.deepcopy(members[0])
        for name, value in params.items():
            _set_tensor(self.net, name, value.detach().clone(), parameter=True)
        for name, value in buffers.items():
            _set_tensor(self.net, name, value.clone(), parameter=False)

    def _vmapped(self, x: Tensor, x_dim: int | None) -> Tensor:
        params = dict(self.net.named_parameters())
        buffers = dict(self.net.named_buffers())

        def call(p: dict[str, Tensor], b: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(self.net, (p, b), (xb,))

        return vmap(call, in_dims=(0, 0, x_dim), randomness="different")(params, buffers, x)

    def forward_members(self, x: Tensor) -> Tensor:
        """``[K, B, C]``: every member on the same batch ``x`` ``(B, ...)`` (no copy of ``x``)."""
        return self._vmapped(x, None)

    def forward(self, x: Tensor) -> Tensor:
        """``(K * B, ...)`` stacked member-major ``->`` logits ``(K * B, C)``."""
        k = self.n_members
        if x.shape[0] % k:
            raise ConfigError(
                f"batch of {x.shape[0]} rows is not a multiple of the {k} ensemble members "
                "(layout (m b): stack the input once per member)"
            )
        out = self._vmapped(unstack(x, k), 0)
        return out.reshape(-1, out.shape[-1])

    def member(self, k: int) -> nn.Module:
        """A standalone copy of member ``k`` (an ordinary backbone with member ``k``'s values)."""
        single = copy.deepcopy(self.net)
        for name, value in self.net.named_parameters():
            _set_tensor(single, name, value.detach()[k].clone(), parameter=True)
        for name, value in self.net.named_buffers():
            _set_tensor(single, name, value[k].clone(), parameter=False)
        return single

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}"


# what usually breaks torch.func.vmap, by a fragment of its error message
_VMAP_CAUSES = (
    ("inplace", "an in-place operation writes a member's values into a tensor shared by all"),
    ("in-place", "an in-place operation writes a member's values into a tensor shared by all"),
    (".item()", "data-dependent Python control flow (.item() / bool of a tensor)"),
    ("data-dependent", "data-dependent Python control flow (.item() / bool of a tensor)"),
    ("running_mean", "BatchNorm running statistics that are not per-member buffers"),
    ("running_var", "BatchNorm running statistics that are not per-member buffers"),
)


def check_vectorized(stacked: StackedEnsemble, input_shape: Sequence[int], target: str) -> None:
    """Run the stacked members once in train and once in eval mode on two zero inputs; a model
    ``torch.func.vmap`` cannot batch is refused (no silent fallback to a loop over members).

    The RNG is forked and every buffer (BatchNorm statistics) restored, so training starts where
    it would without the check.

    Raises:
        ConfigError: one line naming the model, what breaks (in-place writes into shared tensors,
            data-dependent control flow, BatchNorm buffers, ...) and the way out.
    """
    x = torch.zeros(2 * stacked.n_members, *input_shape)  # (m b), each member its own rows
    buffers = {name: b.clone() for name, b in stacked.named_buffers()}
    training = [(m, m.training) for m in stacked.modules()]
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            stacked.train()
            stacked(x)
            stacked.eval()
            stacked(x)
    except ConfigError:
        raise
    except Exception as err:
        text = " ".join(str(err).split()) or type(err).__name__
        cause = next(
            (why for key, why in _VMAP_CAUSES if key in text), "an operation vmap cannot batch"
        )
        raise ConfigError(
            f"method=ensemble trains the K members vectorized (torch.func.vmap), which "
            f"model.target={target!r} does not support: {cause} ({type(err).__name__}: "
            f"{text[:200]}); train the members as separate runs (seed=0,1,...) or use method=subnets"
        ) from None
    finally:
        for m, flag in training:
            m.training = flag
        with torch.no_grad():
            for name, b in stacked.named_buffers():
                b.copy_(buffers[name])


def ensemble_loss(member_logits: Tensor, y: Tensor) -> Tensor:
    """``sum_k mean_b CE(logits[k, b], y[b])`` of member logits ``[K, B, C]`` and labels ``[B]``.

    The sum (not the mean) gives every member the gradient it would get trained alone.
    """
    k, b, c = member_logits.shape
    per_row = F.cross_entropy(member_logits.reshape(k * b, c), y.repeat(k), reduction="none")
    return per_row.reshape(k, b).mean(dim=1).sum()


class Ensemble(StackedMembersMethod):
    """``K`` independently initialized backbones trained together, vectorized (module docstring)."""

    name: ClassVar[str] = "ensemble"

    @classmethod
    def validate(cls, cfg: Mapping[str, Any]) -> None:
        method = cfg["method"]
        check_k(method["k"])
        check_member_dropout(cfg)
        warn_coupled_clipping(cfg, "ensemble")

    @classmethod
    def build_member(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int, k: int
    ) -> nn.Module:
        """Member ``k`` as a single backbone, initialized from :func:`init_seed` (global RNG
        untouched). With ``member_dropout=false`` its dropout layers are at ``p = 0``."""
        dropout = member_dropout_spec(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(cfg["seed"], k))
            return build_model(cfg["model"], dropout, input_shape, n_classes)

    @classmethod
    def build_backbone(
        cls, cfg: Mapping[str, Any], input_shape: tuple[int, ...], n_classes: int
    ) -> nn.Module:
        k = check_k(cfg["method"]["k"])
        stacked = StackedEnsemble(
            [cls.build_member(cfg, input_shape, n_classes, i) for i in range(k)]
        )
        if cfg["model"].get("name") == "custom":  # the built-in backbones are torch.func-safe
            check_vectorized(stacked, input_shape, str(cfg["model"].get("target")))
        return stacked

    # ------------------------------------------------------------------ training

    def training_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Sum over members of their mean cross-entropy (see :func:`ensemble_loss`)."""
        return ensemble_loss(self.backbone.forward_members(x), y)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = self.training_loss(x, y)
        # logged per member (sum / K), comparable with the train/loss of the other methods
        self.log(
            "train/loss",
            loss.detach() / self.backbone.n_members,
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=len(y),
        )
        return loss

    # ------------------------------------------------------------------ validation
