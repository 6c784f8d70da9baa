r"""Training memory that does not grow with depth: invertible backpropagation.

Ordinary backpropagation through :math:`L` layers stores the activations of all of them.
A flow's layers are invertible, so the input of each layer can be *recomputed from its
output* during the backward pass instead (Gomez et al., 2017, "The Reversible Residual
Network"; Jacobsen et al., 2018, i-RevNet; van de Leemput et al., 2019, MemCNN).
:func:`normalize_recomputing` runs a sequence of layers in the normalizing direction
(data to base, what ``log_prob`` differentiates) without recording a graph and keeps only
the final output; the backward pass walks the layers from the last to the first, rebuilds
each layer's input with its inverse, reruns that one layer under autograd and
backpropagates through it. Peak memory is then that of one layer plus the output, for
any depth, at the price of one extra evaluation of each layer.

For a coupling layer the conditioner sees the unchanged half :math:`x^A`, which is the
same on both sides, so rebuilding the input and rerunning the layer share one conditioner
evaluation (``_coupling_backward``); other layers (ActNorm, 1x1 convolutions,
squeezes) are cheap and take the generic path (``_generic_backward``).

Layers whose normalizing map in train mode depends on statistics of the batch that the
inverse cannot recover (RealNVP's batch normalization *layer*) are rejected; batch
normalization *inside* a coupling's conditioner is fine (the conditioner sees the same
:math:`x^A` again), and its running statistics are restored after the rerun, so they are
updated once per step as without recomputation.

Random layers (dropout in a conditioner, in train mode) draw the same numbers again: the
random state before each layer is kept from the forward pass and restored before the
layer is rerun (and before its input is rebuilt, which needs the same dropout masks), and
the caller's random state is left as the forward pass left it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import List, Sequence, Tuple

import torch
from pyro.distributions.torch_transform import ComposeTransformModule

from .base import FlowTransform
from .coupling import (
    AdditiveCoupling,
    AffineCoupling,
    _ConditionedAdditiveCoupling,
    _ConditionedAffineCoupling,
)
from .normalization import RealNVPBatchNorm

__all__ = ["MemorySaving", "memory_saving", "normalize_recomputing"]


def _check_blocks(blocks: Sequence[torch.nn.Module], name: str) -> None:
    for block in blocks:
        if isinstance(block, RealNVPBatchNorm):
            raise ValueError(
                f"{name}: memory saving cannot rebuild the input of a RealNVPBatchNorm layer from its "
                "output in train mode (it normalizes with the batch's own statistics); build the flow "
                "without batch_norm=True or without memory_saving=True"
            )
        if not isinstance(block, FlowTransform):
            raise TypeError(
                f"{name}: memory saving needs pyro-flows layers (FlowTransform), got {type(block).__name__}"
            )


@contextmanager
def _buffers_kept(block: torch.nn.Module):
    """Rerunning a layer in train mode must not update running statistics a second time."""
    saved = [(b, b.detach().clone()) for b in block.buffers() if b.is_floating_point() or b.dim() == 0]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                if not torch.equal(buffer, value):
                    buffer.copy_(value)


def _differentiable(block: torch.nn.Module) -> List[torch.Tensor]:
    """The tensors of a layer that gradients flow to: its parameters and, for a layer
    conditioned on a context, the context when it requires a gradient (it is held as a
    plain attribute and listed by ``_state_tensors``)."""
    tensors = block._state_tensors() if isinstance(block, FlowTransform) else list(block.parameters())
    return [t for t in tensors if t.requires_grad]


# Layers whose map is a coupling over ``partition`` with ``_shift_log_scale``/``_params``
# of the conditioning half and nothing else: exactly these classes (a subclass may change
# the map). The conditioned ones broadcast their input against the context first, which
# the enclosing flow has done already (``_ConditionedMultiScale``), so the input is final.
_FUSED = (AffineCoupling, AdditiveCoupling, _ConditionedAffineCoupling, _ConditionedAdditiveCoupling)
_AFFINE = (AffineCoupling, _ConditionedAffineCoupling)


def _fusable(block: torch.nn.Module, y: torch.Tensor) -> bool:
    if type(block) not in _FUSED:
        return False
    expand = getattr(block, "_expand", None)  # a conditioned coupling: y already broadcast?
    return expand is None or expand(y).shape == y.shape


def _bindings(blocks) -> list:
    """Where every parameter and buffer of ``blocks`` is held now: ``(module, dict, name,
    tensor)``. The backward pass reruns the layers after the forward pass has returned,
    when ``torch.func.functional_call`` (or any swap of tensors) has already put the
    module's own tensors back; it reruns them with these, the tensors of the forward pass,
    so that gradients reach them (not the module's own) and are computed at their values."""
    bound, stack = [], list(blocks)
    while stack:
        module = stack.pop()
        state = module.__dict__
        for kind in ("_parameters", "_buffers"):
            bound += [(module, kind, name, t) for name, t in state[kind].items() if t is not None]
        stack += (m for m in state["_modules"].values() if m is not None)
    return bound


@contextmanager
def _bound(bindings: list):
    """Put the tensors of ``bindings`` back where they were, for the duration."""
    swapped = []
    try:
        for module, kind, name, tensor in bindings:
            held = module.__dict__[kind]
            if held.get(name) is not tensor:
                swapped.append((held, name, held.get(name)))
                held[name] = tensor
        yield
    finally:
        for held, name, tensor in reversed(swapped):
            held[name] = tensor


def _grad_or_zeros(grad, like):
    return torch.zeros_like(like) if grad is None else grad


def _rng_state(device: torch.device) -> Tuple[torch.Tensor, ...]:
    """The random state a layer on ``device`` draws from (the CPU's, and the GPU's)."""
    if device.type == "cuda":
        return torch.get_rng_state(), torch.cuda.get_rng_state(device)
    return (torch.get_rng_state(),)


def _set_rng_state(device: torch.device, state: Tuple[torch.Tensor, ...]) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)


def _generic_backward(block, y, grad_y, grad_ladj, params, replay):
    """Rebuild the input with the layer's sampling map, rerun the normalizing map under
    autograd, backpropagate. ``replay()`` restores the random state the layer saw in the
    forward pass. Returns ``(x, grad_x, grads of params)``."""
    replay()
    with torch.no_grad():
        x = block._call_and_ladj(y)[0]
    x = x.detach().requires_grad_()
    replay()
    with torch.enable_grad():
        y_again, ladj = block._inverse_and_ladj(x)
    outputs, grads = [y_again], [grad_y]
    if ladj.requires_grad:
        outputs.append(ladj)
        grads.append(grad_ladj)
    found = torch.autograd.grad(outputs, [x, *params], grads, allow_unused=True)
    return x.detach(), found[0], found[1:]


def _coupling_backward(block, y, grad_y, grad_ladj, params, replay):
    """The same for a coupling, with one conditioner evaluation: the conditioner's input
    :math:`x^A = y^A` is known before the input is rebuilt."""
    partition = block.partition
    y_a, y_b = partition.split(y)
    condition = y_a.detach().requires_grad_()
    replay()
    with torch.enable_grad():
        if type(block) in _AFFINE:
            shift, log_scale = block._shift_log_scale(condition)
        else:
            (shift,) = block._params(condition)
            log_scale = None
    with torch.no_grad():  # x^B from y^B (the layer's sampling map)
        x_b = y_b * log_scale.exp() + shift if log_scale is not None else y_b + shift
        x = partition.merge(y_a, x_b)
    x = x.detach().requires_grad_()
    with torch.enable_grad():
        x_a, x_b = partition.split(x)
        if log_scale is None:
            y_again = partition.merge(x_a, x_b - shift)
            outputs, grads = [y_again], [grad_y]
        else:
            y_again = partition.merge(x_a, (x_b - shift) * torch.exp(-log_scale))
            outputs = [y_again, log_scale]
            # d(sum log_scale)/d log_scale = 1: the log-det's gradient spread over the event
            grads = [
                grad_y,
                grad_ladj.reshape(*grad_ladj.shape, *[1] * block.event_dim_).expand_as(log_scale),
            ]
    found = torch.autograd.grad(outputs, [x, condition, *params], grads, allow_unused=True)
    grad_x, grad_condition = found[0], found[1]
    if grad_condition is not None:  # the conditioner's input is x^A: route its gradient back to x
        x_leaf = x.detach().requires_grad_()
        with torch.enable_grad():
            (extra,) = torch.autograd.grad(partition.split(x_leaf)[0], x_leaf, grad_condition)
        grad_x = grad_x + extra
    return x.detach(), grad_x, found[2:]


_TWICE = (
    "MemorySaving: cannot differentiate twice (create_graph=True, e.g. a gradient penalty or "
    "score matching): its backward pass recomputes the layers without a graph; build the flow "
    "without memory_saving=True for second derivatives"
)


class _Refused(torch.autograd.Function):
    """The identity on ``gradients`` whose backward pass raises: the first-order
    gradients of a ``create_graph=True`` backward pass, tied to the input and parameters
    of the stack (``anchors``) so that any second derivative that reaches them raises
    instead of coming out as ``None`` (the graph-less gradients have no path to them,
    and ``torch.autograd.grad(..., inputs)`` skips what leads to no input)."""

    @staticmethod
    def forward(ctx, count, *tensors):
        return tuple(g.clone() for g in tensors[:count])

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(_TWICE)


def _refusing_second_derivatives(gradients, anchors):
    present = [i for i, g in enumerate(gradients) if g is not None]
    anchors = [t for t in anchors if t.requires_grad]
    if not present or not anchors:
        return gradients
    tied = _Refused.apply(len(present), *[gradients[i] for i in present], *anchors)
    out = list(gradients)
    for i, g in zip(present, tied, strict=True):
        out[i] = g
    return tuple(out)


class _InvertibleBackprop(torch.autograd.Function):
    """``(x, *params) -> (y, ladj)`` through ``blocks`` in the normalizing direction,
    saving only ``y`` (and a reference to the input ``x``, which its caller holds anyway,
    to refuse second derivatives that reach it)."""

    @staticmethod
    def forward(ctx, blocks, event_dim, x, *params):
        states = []
        with torch.no_grad():
            y, ladj = x, None
            for block in blocks:
                states.append(_rng_state(x.device))
                y, block_ladj = block._inverse_and_ladj(y)
                ladj = block_ladj if ladj is None else ladj + block_ladj
        if ladj is None:
            ladj = x.new_zeros(x.shape[: x.dim() - event_dim])
        if y.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
            y = y.clone()  # an output must not be a view of an input
        ctx.blocks = blocks
        ctx.params = params
        ctx.bindings = _bindings(blocks)
        ctx.rng_states = states
        device = x.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, y)
        return y, ladj

    @staticmethod
    def backward(ctx, grad_y, grad_ladj):
        x, y = ctx.saved_tensors
        twice = torch.is_grad_enabled()  # create_graph=True: a second derivative may follow
        with _bound(ctx.bindings), torch.no_grad():
            grads = _InvertibleBackprop._recompute(ctx, y.detach(), grad_y, grad_ladj)
        if twice:
            grads = _refusing_second_derivatives(grads, [x, *ctx.params])
        return (None, None, *grads)

    @staticmethod
    def _recompute(ctx, y, grad_y, grad_ladj):
        grad_y = _grad_or_zeros(grad_y, y)
        if grad_ladj is None:
            grad_ladj = y.new_zeros(y.shape[: y.dim() - ctx.blocks[0].event_dim_] if ctx.blocks else ())
        position = {id(p): i for i, p in enumerate(ctx.params)}
        param_grads: List[torch.Tensor] = [None] * len(ctx.params)
        device, enabled, dtype = ctx.autocast
        on = y.device
        # the reruns draw the forward pass's random numbers again, then the caller's state returns
        forked = torch.random.fork_rng([on] if on.type == "cuda" else [])
        with forked, torch.autocast(device, dtype=dtype, enabled=enabled):
            for block, state in zip(reversed(ctx.blocks), reversed(ctx.rng_states), strict=True):
                params = [p for p in _differentiable(block) if id(p) in position]
                backward = _coupling_backward if _fusable(block, y) else _generic_backward
                with _buffers_kept(block):
                    y, grad_y, grads = backward(
                        block, y, grad_y, grad_ladj, params, lambda s=state: _set_rng_state(on, s)
                    )
                for p, g in zip(params, grads, strict=True):
                    if g is not None:
                        i = position[id(p)]
                        param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
        return (grad_y, *param_grads)


def normalize_recomputing(
    blocks: Sequence[FlowTransform], x: torch.Tensor, event_dim: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Run ``blocks`` (in normalizing order, data side first) on ``x`` with each layer's
    ``_inverse_and_ladj``; return the base-side value and the summed log-determinant
    (of the sampling direction, as the layers report it), shape ``batch_shape``.

    With gradients enabled, only the output is kept for the backward pass, which rebuilds
    every layer's input from its output (see the module docstring). Caches of the layers
    are bypassed: they would keep every activation alive. Gradients equal those of
    ordinary backpropagation up to the round-off of the inverse; they cannot be
    differentiated again (``create_graph=True`` then raises when the second derivative is
    taken).
    """
    blocks = list(blocks)
    if not torch.is_grad_enabled():
        y, ladj = x, x.new_zeros(x.shape[: x.dim() - event_dim])
        for block in blocks:
            y, block_ladj = block._inverse_and_ladj(y)
            ladj = ladj + block_ladj
        return y, ladj
    params, seen = [], set()
    for block in blocks:
        for p in _differentiable(block):
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return _InvertibleBackprop.apply(blocks, event_dim, x, *params)


def normalizing_blocks(transform: torch.nn.Module) -> List[FlowTransform]:
    """The layers of ``transform`` in normalizing order (data side first)."""
    parts = transform.parts if isinstance(transform, ComposeTransformModule) else [transform]
    blocks = []
    for part in reversed(list(parts)):  # Pyro composes from the base side
        blocks.extend(normalizing_blocks(part) if isinstance(part, ComposeTransformModule) else [part])
    return blocks


class MemorySaving(FlowTransform):
    r"""A stack of flow layers trained with memory that does not grow with its depth.

    The same map, inverse and log-determinant as ``transform`` (a
    :class:`~pyro.distributions.torch_transform.ComposeTransformModule` of pyro-flows
    layers, e.g. couplings): in the normalizing direction (``log_prob``) only the
    output of the whole stack is kept for the backward pass, which rebuilds each layer's
    input from its output with the layer's inverse and backpropagates through one layer
    at a time (:func:`normalize_recomputing`). The sampling direction is run as usual.

    :param transform: the stack; its data side and base side must have the same shape
        ``event_shape``.
    :param event_shape: the event shape on both sides.

    >>> from pyro.distributions.torch_transform import ComposeTransformModule
    >>> from pyro_flows.transforms import image_affine_coupling
    >>> stack = ComposeTransformModule([image_affine_coupling((2, 4, 4), "checkerboard", p % 2,
    ...     hidden_channels=8, num_blocks=1, batch_norm=False) for p in range(4)])
    >>> layer = MemorySaving(stack, (2, 4, 4))
    >>> x = torch.randn(3, 2, 4, 4)
    >>> u = layer.inv(x)
    >>> layer.log_abs_det_jacobian(u, x).shape
    torch.Size([3])
    """

    def __init__(self, transform: torch.nn.Module, event_shape):
        super().__init__(event_shape=event_shape)
        blocks = normalizing_blocks(transform)
        _check_blocks(blocks, "MemorySaving")
        self.transform = transform

    def _call_and_ladj(self, u):
        x = self.transform(u)
        return x, self.transform.log_abs_det_jacobian(u, x)

    def _inverse_and_ladj(self, x):
        return normalize_recomputing(normalizing_blocks(self.transform), x, self.event_dim_)


def memory_saving(transform: torch.nn.Module, event_shape) -> MemorySaving:
    """Wrap a stack of layers in :class:`MemorySaving`.

    >>> from pyro.distributions.torch_transform import ComposeTransformModule
    >>> from pyro_flows.transforms import act_norm, invertible_1x1_conv
    >>> layer = memory_saving(ComposeTransformModule([act_norm(2), invertible_1x1_conv(2)]), (2, 3, 3))
    >>> layer.inv(torch.randn(4, 2, 3, 3)).shape
    torch.Size([4, 2, 3, 3])
    """
    return MemorySaving(transform, event_shape)
