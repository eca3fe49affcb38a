"""Use dropens on any PyTorch model: convert its dropout modules, or add dropout sites.

:func:`convert` replaces, in place, every dropout *module* of a model by a
:class:`dropens.layers.Dropout` with the same drop probability and the same semantics, so that
every strategy of :mod:`dropens.inference` (MC dropout, fixed member masks, the weight-scaling
probe, ...) and every training method can switch it:

==============================================  ===========  ==========================================
torch / torchvision module                      structure    same semantics
==============================================  ===========  ==========================================
``nn.Dropout``                                  ``element``  one Bernoulli draw per unit, ``x / keep``
``nn.Dropout1d`` / ``2d`` / ``3d``              ``channel``  one draw per (example, channel)
``torchvision.ops.DropBlock2d`` / ``3d``        ``block``    same ``block_size``, one mask per channel
``nn.AlphaDropout``, ``nn.FeatureAlphaDropout``  refused      (keeps SELU's mean and variance: not a mask
                                                             of ``x``); converted only when ``dist=`` or
                                                             ``structure=`` says what to use instead
==============================================  ===========  ==========================================

``fast_pool=True`` (default) also swaps each plain ``nn.MaxPool2d(2)`` for
:class:`dropens.pooling.MaxPool2x2`: bit-identical outputs and gradients, faster CPU inference.

In eval mode a converted model computes exactly what it did (the deterministic pass of inverted
dropout is the identity). In training mode the drop statistics are the module's: element and
channel dropout drop each unit (channel) with probability ``p`` and scale the kept ones by
``1 / keep``, as torch does. **DropBlock** is the exception, on purpose: dropens' DropBlock drops
*every position* with probability exactly ``p`` and scales by ``1 / keep``
(:func:`dropens.masks.block_seed_rate`), whereas torchvision's ``drop_block2d`` seeds blocks only
where a whole block fits with ``gamma = p L^2 / (b^2 (L - b + 1)^2)`` (overlaps ignored: it drops
less than ``p``, and the border far less than the centre) and rescales by the batch's measured kept
fraction. "Same drop statistics" for ``block`` therefore means dropens' definition: a converted
DropBlock drops ``p`` per position where torchvision's dropped less. torchvision also shrinks
``block_size`` to a smaller feature map at run time; dropens refuses such a map with one line.

**What cannot be converted**: dropout that a ``forward`` calls *functionally* --
``F.dropout(x, self.p, self.training)``, ``nn.functional.dropout2d``, ``drop_block2d`` -- and the
dropout inside ``nn.MultiheadAttention`` / ``F.scaled_dot_product_attention(dropout_p=...)``:
there is no module to replace, so dropens cannot switch it (in eval mode it is off, so MC
dropout would silently ignore it). :func:`convert` warns about the common case, a module with a
numeric ``drop_rate`` / ``dropout`` / ``dropout_rate`` / ``drop_prob`` / ``attention_dropout``
attribute > 0 and no dropout module below it (torchvision's DenseNet with ``drop_rate > 0``,
attention with dropout); add an explicit site with :func:`add_dropout` instead. Stochastic depth
(``torchvision.ops.StochasticDepth``) drops whole residual branches: not dropout, left alone.

:func:`add_dropout` adds sites to a model that has none: each named module is wrapped
(:class:`DropoutAfter`) so that its output passes through a new :class:`dropens.layers.Dropout`.
Parameter names of a wrapped module gain ``.module`` (``layer4.0.conv1.weight`` becomes
``layer4.module.0.conv1.weight``): load pretrained weights before adding sites.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import re
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dropens import masks
from dropens.errors import ConfigError
from dropens.layers import Dropout, dropout_spec
from dropens.pooling import MaxPool2x2

__all__ = ["FUNCTIONAL_ATTRS", "DropoutAfter", "add_dropout", "convert", "torch_dropout_modules"]

# attributes that usually mean "this module calls dropout functionally in its forward"
FUNCTIONAL_ATTRS = ("drop_rate", "dropout", "dropout_rate", "drop_prob", "attention_dropout")

_STRUCTURE = {
    nn.Dropout: "element",
    nn.Dropout1d: "channel",
    nn.Dropout2d: "channel",
    nn.Dropout3d: "channel",
}
_ALPHA = {nn.AlphaDropout: "element", nn.FeatureAlphaDropout: "channel"}


def _dropblock_types() -> tuple[type, ...]:
    try:
        from torchvision.ops import DropBlock2d, DropBlock3d
    except ImportError:  # torchvision is a dependency, but convert does not need it
        return ()
    return (DropBlock2d, DropBlock3d)


def _known_base(module: nn.Module) -> type | None:
    """The torch/torchvision dropout class whose semantics ``module`` has: its own class, or a
    subclass of one that does not override ``forward``."""
    known = (*_STRUCTURE, *_ALPHA, *_dropblock_types())
    for cls in type(module).__mro__:
        if cls in known:
            return cls if type(module).forward is cls.forward else None
    return None


def _is_dropout_module(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.dropout._DropoutNd, *_dropblock_types()))


def torch_dropout_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of every torch / torchvision dropout module of ``model`` (every path
    of a module registered at several)."""
    return [
        (name, m)
        for name, m in model.named_modules(remove_duplicate=False)
        if _is_dropout_module(m)
    ]


def _overrides(**given: Any) -> dict[str, Any]:
    return {k: v for k, v in given.items() if v is not None}


def _new_layer(name: str, module: nn.Module, overrides: dict[str, Any]) -> Dropout:
    """The dropens layer that replaces ``module`` (at ``name``), or a one-line ConfigError."""
    kind = type(module).__name__
    base = _known_base(module)
    spec: dict[str, Any] = {"p": float(module.p)}
    if base in _ALPHA or base is None:
        if "dist" not in overrides and "structure" not in overrides:
            why = (
                "keeps the mean and variance of SELU activations (alpha dropout), not a mask of x"
                if base in _ALPHA
                else "overrides forward, so dropens cannot know what it computes"
            )
            raise ConfigError(
                f"cannot convert {name!r} ({kind}): it {why}; pass structure= (and dist=) to "
                f"replace it by that dropens dropout anyway (its training statistics change), or "
                f"remove it"
            )
        spec["structure"] = _ALPHA.get(base, "element")
    elif base in _STRUCTURE:
        spec["structure"] = _STRUCTURE[base]
    else:  # torchvision DropBlock2d / DropBlock3d
        spec.update(structure="block", block_size=int(module.block_size))
    spec.update(overrides)
    try:
        full = dropout_spec(spec)
    except ConfigError as err:
        raise ConfigError(f"cannot convert {name!r} ({kind}): {err}") from None
    return Dropout(**full, site=name)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def _device_of(model: nn.Module) -> torch.device:
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def convert(
    model: nn.Module,
    *,
    p: float | None = None,
    dist: str | None = None,
    structure: str | None = None,
    scale: str | None = None,
    block_size: int | None = None,
    share_channels: bool | None = None,
    fast_pool: bool = True,
) -> list[str]:
    """Replace, in place, every dropout module of ``model`` by a :class:`dropens.layers.Dropout`
    with the same ``p`` and semantics (module docstring: the table, DropBlock, what cannot be
    converted).

    Args:
        model: any ``nn.Module``; modified in place (a module registered at several places stays
            one module, shared, after conversion).
        p, dist, structure, scale, block_size, share_channels: when given, override the spec of
            *every* converted site (e.g. ``p=0.1`` everywhere, or ``scale="none"``); otherwise
            each site keeps its own ``p`` and structure, ``dist="bernoulli"``, ``scale="inverted"``.
        fast_pool: also swap every plain ``nn.MaxPool2d(2)`` (kernel and stride 2, no padding,
            dilation 1, floor mode, no indices) for :class:`dropens.pooling.MaxPool2x2`: the same
            outputs bit for bit and the same gradients (it is an ``nn.MaxPool2d``; under autograd
            it runs the native kernel), 6-8x faster in CPU inference without gradients, where MC
            dropout spends much of its time (``benchmarks/bench_pool.py``). ``False`` leaves
            pooling alone. Swapped pools are not in the returned names.

    Returns:
        The names of the converted dropout modules (``model.named_modules`` paths), in module order.

    Raises:
        ConfigError (one line): an alpha-dropout module without ``dist``/``structure`` override,
            a subclass whose ``forward`` is its own, ``model`` itself a dropout module, a spec
            dropens does not support (``p = 1``, DropBlock with a non-Bernoulli ``dist``).

    Warns:
        UserWarning (one line): modules that look like they call dropout functionally (a numeric
        ``drop_rate``/``dropout``... attribute > 0 and no dropout module below them).
    """
    overrides = _overrides(
        p=p,
        dist=dist,
        structure=structure,
        scale=scale,
        block_size=block_size,
        share_channels=share_channels,
    )
    found = torch_dropout_modules(model)
    if any(name == "" for name, _ in found):
        raise ConfigError(
            f"cannot convert the model itself ({type(model).__name__} is a dropout module); "
            "convert the model that contains it"
        )
    device = _device_of(model)
    made: dict[int, Dropout] = {}
    for name, module in found:  # build every layer first: refuse before changing anything
        if id(module) not in made:
            layer = _new_layer(name, module, overrides).to(device)
            made[id(module)] = layer.train(module.training)  # a model in eval() stays in eval()
    for name, module in found:
        _set_module(model, name, made[id(module)])
    if fast_pool:
        _swap_pools(model)
    _warn_functional(model)
    return [name for name, _ in found]


def _swap_pools(model: nn.Module) -> None:
    """Every plain ``nn.MaxPool2d(2)`` of ``model`` := one :class:`MaxPool2x2` (shared where the
    pool was shared)."""
    made: dict[int, MaxPool2x2] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if name and MaxPool2x2.replaces(module):
            new = made.setdefault(id(module), MaxPool2x2().train(module.training))
            _set_module(model, name, new)


def _functional_suspects(model: nn.Module) -> list[str]:
    """Modules with a numeric dropout-like attribute > 0 and no dropout module below them."""
    suspects = []
    for name, module in model.named_modules():
        if any(isinstance(m, Dropout) or _is_dropout_module(m) for m in module.modules()):
            continue
        for attr in FUNCTIONAL_ATTRS:
            value = module.__dict__.get(attr)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                suspects.append(f"{name or type(model).__name__}.{attr}={value}")
                break
    return suspects


def _warn_functional(model: nn.Module) -> None:
    suspects = _functional_suspects(model)
    if suspects:
        shown = ", ".join(suspects[:3]) + (
            f" and {len(suspects) - 3} more" if len(suspects) > 3 else ""
        )
        warnings.warn(
            f"{type(model).__name__} looks like it calls dropout functionally ({shown}) with no "
            "dropout module to convert: dropens cannot switch that dropout (MC dropout would "
            "ignore it); add a site with dropens.add_dropout(model, after=[...]) instead",
            UserWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- add_dropout


class DropoutAfter(nn.Module):
    """``dropout(module(*args))``: a module whose output passes through a dropout site.

    Attributes other than ``module`` and ``dropout`` are read from the wrapped module (so code
    that reads e.g. ``layer.out_channels`` keeps working); indexing reads the wrapped module too.
    """

    def __init__(self, module: nn.Module, dropout: Dropout) -> None:
        super().__init__()
        self.module = module
        self.dropout = dropout

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        out = self.module(*args, **kwargs)
        if not isinstance(out, Tensor):
            raise ConfigError(
                f"dropout site {self.dropout.site!r}: the wrapped {type(self.module).__name__} "
                f"returns a {type(out).__name__}, not a tensor; add dropout after a module that "
                "returns one tensor"
            )
        return self.dropout(out)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            wrapped = self.__dict__.get("_modules", {}).get("module")
            if wrapped is None:
                raise
            return getattr(wrapped, name)

    def __getitem__(self, index: Any) -> Any:
        return self.module[index]


def _calls_in_forward(parent: nn.Module, leaf: str) -> int:
    """How often ``parent.forward``'s source calls ``self.<leaf>(`` (0 when it has no source)."""
    try:
        source = inspect.getsource(type(parent).forward)
    except (OSError, TypeError):
        return 0
    return len(re.findall(rf"self\.{re.escape(leaf)}\s*\(", source))


def _matches(names: Sequence[str], patterns: Sequence[str], model: nn.Module) -> list[str]:
    chosen: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(
                f"add_dropout: after={pattern!r} is not valid; give module names or glob patterns"
            )
        hits = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            near = difflib.get_close_matches(pattern, list(names), n=3, cutoff=0.5)
            hint = f"did you mean {', '.join(near)}? " if near else ""
            top = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"add_dropout: after={pattern!r} matches no module of {type(model).__name__}; "
                f"{hint}its top-level modules: {', '.join(top[:12])}"
            )
        chosen += [n for n in hits if n not in chosen]
    for a in chosen:
        inner = [b for b in chosen if b.startswith(a + ".")]
        if inner:
            raise ConfigError(
                f"add_dropout: {a!r} and {inner[0]!r} are both selected, one inside the other: "
                "dropout would apply twice; choose narrower names or patterns"
            )
    return chosen


def add_dropout(
    model: nn.Module,
    after: str | Sequence[str],
    *,
    example: Tensor | None = None,
    **spec: Any,
) -> list[str]:
    """Add dropout sites to ``model``, in place: every module named by ``after`` is wrapped
    (:class:`DropoutAfter`) so that its output passes through a new
    :class:`dropens.layers.Dropout` of ``spec``.

    Args:
        after: module names (``model.named_modules`` paths, e.g. ``"layer4"``) or glob patterns
            (``fnmatch``: ``"features.*"``; ``*`` also matches dots).
        example: optional inputs ``[N, *input_shape]``: one forward in eval mode then checks that
            no chosen module is called more than once (see Raises) and that ``structure`` fits the
            output there (flat ``(N, F)`` outputs always get ``element``, as flat sites of the
            built-in backbones do).
        **spec: the :class:`dropens.layers.Dropout` arguments ``p, dist, structure, scale,
            block_size, share_channels`` (defaults as ``Dropout``: ``p = 0.5``, element, inverted).

    Returns:
        The names of the wrapped modules (each site is ``"<name>"``; its layer
        ``"<name>.dropout"``).

    Raises:
        ConfigError (one line): a name or pattern that matches nothing (naming close ones), one
            chosen module inside another, a module registered at several places or called
            several times per forward (one ``ReLU`` used twice: dropout after it would apply at
            every use; seen in the parent's ``forward`` source, or counted with ``example``), the
            root module, an invalid spec.
    """
    patterns = [after] if isinstance(after, str) else list(after)
    full = dropout_spec(spec)
    paths: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(name)
    names = [n for n, _ in model.named_modules() if n]
    chosen = _matches(names, patterns, model)
    modules = {name: model.get_submodule(name) for name in chosen}
    for name, module in modules.items():
        where = paths[id(module)]
        if len(where) > 1:
            raise ConfigError(
                f"add_dropout: {name!r} ({type(module).__name__}) is one module registered at "
                f"{where}: dropout after it would apply at every use; give each use its own module"
            )
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        calls = _calls_in_forward(parent, leaf)
        if calls > 1:
            raise ConfigError(
                f"add_dropout: {name!r} ({type(module).__name__}) is called {calls} times in "
                f"{type(parent).__name__}.forward (one module reused): dropout after it would "
                "apply at every call; choose another module, or give each call its own module"
            )
    shapes = _probe(model, list(modules.values()), example, chosen) if example is not None else {}
    for name, module in modules.items():
        layer_spec = dict(full)
        shape = shapes.get(name)
        if shape is not None and len(shape) < 3:
            layer_spec["structure"] = "element"
        if shape is not None:
            masks.check_input(shape, layer_spec["structure"], layer_spec["block_size"], name)
        layer = Dropout(**layer_spec, site=name).to(_device_of(module))
        wrapper = DropoutAfter(module, layer)
        wrapper.training = layer.training = module.training  # not .train(): keeps mixed states
        _set_module(model, name, wrapper)
    return chosen


def _probe(
    model: nn.Module, modules: list[nn.Module], example: Tensor, names: list[str]
) -> dict[str, tuple[int, ...]]:
    """One eval-mode forward of ``example``: the output shape of every module (refusing one
    called more than once)."""
    calls: dict[int, list[tuple[int, ...]]] = {id(m): [] for m in modules}

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        shape = tuple(output.shape) if isinstance(output, Tensor) else ()
        calls[id(module)].append(shape)

    handles = [m.register_forward_hook(hook) for m in modules]
    training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(example.to(_device_of(model)))
    finally:
        for h in handles:
            h.remove()
        for m, flag in training:
            m.training = flag
    out = {}
    for name, module in zip(names, modules):
        seen = calls[id(module)]
        if len(seen) > 1:
            raise ConfigError(
                f"add_dropout: {name!r} ({type(module).__name__}) is called {len(seen)} times per "
                "forward (one module reused): dropout after it would apply at every call; give "
                "each call its own module"
            )
        if seen:
            out[name] = seen[0]
    return out
