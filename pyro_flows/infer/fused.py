"""A stack of vector affine couplings and permutations run as one transform.

A flow guide's couplings are small (a few hundred to a few thousand weights each), so a
step's cost is the number of tensor operations and the Python around each, not the
arithmetic. :class:`_FusedCouplings` runs a whole stack in one ``_call_and_ladj`` (and one
``_inverse_and_ladj``) with the same values as the layers one by one, and fewer
operations:

* one cache entry, one input check and one module call for the stack, not one per layer
  (and no :class:`~torch.distributions.transforms.ComposeTransform` walking a dozen
  parts' domains when a distribution is built);
* stacked conditioner tensors (:func:`~pyro_flows.infer.guides._stack_conditioners`)
  are split into the layers' weights by one ``unbind`` per tensor and pass, not one
  ``select`` per layer (and, in the backward pass, one ``stack`` instead of a
  zero-filled copy per layer);
* the log-scale's soft bound :math:`b \\tanh(\\tilde s / b) = 2b\\,\\sigma(2\\tilde s / b) - b`
  reads :math:`2\\tilde s / b` from the conditioner's last layer with the log-scale rows
  of its stacked weight and bias multiplied by :math:`2 / b` once per pass (the same
  numbers up to rounding, exactly the same for a power-of-two bound);
* as in :class:`~pyro_flows.transforms.AffineCoupling`, :math:`x^B e^{s} + t` is one
  ``addcmul`` and the inverse reads :math:`-s` from the bound directly; the
  log-determinant is one sum over the concatenated log-scales of all layers.

Only stacks it can reproduce exactly are fused (:func:`_fuse` returns ``None`` otherwise):
:class:`~pyro_flows.transforms.AffineCoupling` layers on vectors with a contiguous half
partition and a stacked MLP conditioner with parameter-free activations, and
:class:`~pyro_flows.transforms.Permutation` layers.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..transforms.base import FlowTransform
from ..transforms.coupling import AffineCoupling, _soft_bound
from ..transforms.linear import Permutation
from ..transforms.masks import IndexPartition

__all__: List[str] = []


class _FusedCouplings(FlowTransform):
    """Affine couplings (stacked MLP conditioners) and permutations on vectors of size
    ``dim``, applied in order by one transform; see the module docstring.

    Built by :func:`_fuse` from the layers it replaces; it reads their stacked conditioner
    tensors (:class:`~pyro_flows.infer.guides._StackedLinears`, held here as submodules) and
    copies what else it needs (partitions, bounds, permutations)."""

    def __init__(self, dim: int, stacks: Sequence[nn.Module], plan: list, perms: Sequence[torch.Tensor]):
        super().__init__(event_shape=(dim,))
        self.stacks = nn.ModuleList(stacks)
        # plan entries: ("perm", index into perms) or
        # ("coupling", stack index, member index, a_first, sizes, scale bound, shift bound,
        #  activations, input bound)
        self._plan = plan
        self.activations = nn.ModuleList(
            act for step in plan if step[0] == "coupling" for act in step[7] if act is not None
        )
        for k, perm in enumerate(perms):
            self.register_buffer(f"perm{k}", perm.clone(), persistent=False)
            self.register_buffer(f"inverse_perm{k}", torch.argsort(perm), persistent=False)
        self._num_perms = len(perms)

    def _weights(self, row_scales: dict) -> list:
        """The layers' weights for one pass: per stack and layer, the members' weights and
        biases (one ``unbind`` each), the last layer's log-scale rows divided by the bound."""
        out = []
        for s, stack in enumerate(self.stacks):
            layers = []
            for j in range(stack.num_layers):
                row_scale = row_scales.get(s) if j == stack.num_layers - 1 else None
                if row_scale is None:
                    weight, bias = stack.layer(j)
                else:  # the row factors include the stack's lr_scale
                    weight, bias = stack.held(j)
                    weight = weight * row_scale.unsqueeze(-1)
                    bias = bias * row_scale
                layers.append((weight.unbind(0), bias.unbind(0)))
            out.append(layers)
        return out

    def _row_scales(self) -> dict:
        """Per stack whose members share one scale bound :math:`b`: the factors of its last
        layer's held rows (:math:`c` on the shift rows, :math:`2c/b` on the log-scale rows,
        :math:`c` the stack's ``lr_scale``), kept between calls in the dtype and on the
        device of the weights."""
        scales = self.__dict__.get("_row_scale_cache")

        def in_place_of_weights(s, t):
            bias = self.stacks[s].held(0)[1]
            return t.dtype == bias.dtype and t.device == bias.device

        if scales is not None and all(in_place_of_weights(s, t) for s, t in scales.items()):
            return scales
        scales = {}
        for s, stack in enumerate(self.stacks):
            bounds = {step[5] for step in self._plan if step[0] == "coupling" and step[1] == s}
            if len(bounds) != 1 or None in bounds:
                continue
            (bound,) = bounds
            bias = stack.held(stack.num_layers - 1)[1]
            rows = bias.shape[-1]
            scale = torch.full((rows,), stack.lr_scale, dtype=bias.dtype, device=bias.device)
            scale[rows // 2 :] = stack.lr_scale * 2.0 / bound
            scales[s] = scale
        self.__dict__["_row_scale_cache"] = scales
        return scales

    def _conditioner(self, x_a, layers, i, activations, input_bound, inputs=None):
        # ``inputs``, if a list, receives each linear layer's input (for the score pass)
        h = x_a if input_bound is None else _soft_bound(x_a, input_bound)
        last = len(layers) - 1
        for j, (weights, biases) in enumerate(layers):
            if inputs is not None:
                inputs.append(h)
            h = F.linear(h, weights[i], biases[i])
            if j < last:
                act = activations[j]
                h = torch.relu_(h) if act is None else act(h)
        return h

    def _call_and_ladj(self, x):
        y, ladj, _ = self._forward(x)
        return y, ladj

    def supports_score(self) -> bool:
        """Whether :meth:`_call_ladj_and_score` can run: ReLU conditioners, no shift clamp."""
        return all(
            step[0] == "perm" or (step[6] is None and all(a is None for a in step[7])) for step in self._plan
        )

    def _call_ladj_and_score(self, x, score):
        r"""The forward pass and, from the score :math:`\nabla_x \log q(x)` of its input
        density, the score of the output density (see
        :meth:`~pyro_flows.infer.PathGradientTransformedDistribution.rsample`)."""
        return self._forward(x, score)

    def _forward(self, x, score=None):
        scaled = self._row_scales()
        weights = self._weights(scaled)
        log_scales = []
        for step in self._plan:
            if step[0] == "perm":
                perm = self._buffers[f"perm{step[1]}"]
                x = x.index_select(-1, perm)
                if score is not None:
                    score = score.index_select(-1, perm)
                continue
            _, s, i, a_first, sizes, bound, shift_bound, activations, input_bound = step
            first, second = x.split_with_sizes(sizes, -1)
            x_a, x_b = (first, second) if a_first else (second, first)
            inputs = [] if score is not None else None
            shift, raw = self._conditioner(x_a, weights[s], i, activations, input_bound, inputs).chunk(2, -1)
            if shift_bound is not None:
                shift = shift.clamp(-shift_bound, shift_bound)
            if bound is None:
                log_scale = raw
            elif s in scaled:  # raw is 2 s / b already
                log_scale = torch.sigmoid(raw).mul(2.0 * bound).sub_(bound)
            else:
                log_scale = _soft_bound(raw, bound)
            scale = log_scale.exp()
            y_b = torch.addcmul(shift, x_b, scale)
            x = torch.cat([x_a, y_b] if a_first else [y_b, x_a], -1)
            log_scales.append(log_scale)
            if score is not None:
                with torch.no_grad():
                    score = self._coupling_score(
                        score, step, x_b, scale, log_scale, s in scaled, weights[s], inputs
                    )
        return x, self._ladj(x, log_scales), score

    @staticmethod
    def _coupling_score(score, step, x_b, scale, log_scale, scaled, layers, inputs):
        r"""The score at a coupling's output from the score :math:`g` at its input. With
        :math:`y^B = x^B e^{s} + t`, :math:`s, t` functions of :math:`x^A = y^A`:

        .. math::

            g_y^B = g^B e^{-s}, \qquad
            g_y^A = g^A - J_s^\top (1 + x^B \odot g^B) - J_t^\top g_y^B,

        the solution of :math:`J^\top g_y = g - \nabla_x \log|\det J|`; the products
        with the conditioner's Jacobians are one backward pass through its layers (ReLU)."""
        _, _, i, a_first, sizes, bound, _, _, input_bound = step
        first, second = score.split_with_sizes(sizes, -1)
        g_a, g_b = (first, second) if a_first else (second, first)
        g_yb = g_b / scale
        # cotangents of the conditioner's outputs: the shift, then the raw log-scale
        d_log_scale = 1 + x_b * g_b
        if bound is not None:
            slope = 1 - (log_scale / bound).square()
            d_log_scale = d_log_scale * (slope * (0.5 * bound) if scaled else slope)
        cotangent = torch.cat([g_yb, d_log_scale], -1)
        for j in range(len(layers) - 1, -1, -1):
            cotangent = cotangent @ layers[j][0][i]
            if j > 0:  # through the ReLU: its output is the next layer's input
                cotangent = cotangent * (inputs[j] > 0)
        if input_bound is not None:
            cotangent = cotangent * (1 - (inputs[0] / input_bound).square())
        g_ya = g_a - cotangent
        return torch.cat([g_ya, g_yb] if a_first else [g_yb, g_ya], -1)

    def _inverse_and_ladj(self, y):
        scaled = self._row_scales()
        weights = self._weights(scaled)
        neg_log_scales = []
        for step in reversed(self._plan):
            if step[0] == "perm":
                y = y.index_select(-1, self._buffers[f"inverse_perm{step[1]}"])
                continue
            _, s, i, a_first, sizes, bound, shift_bound, activations, input_bound = step
            first, second = y.split_with_sizes(sizes, -1)
            y_a, y_b = (first, second) if a_first else (second, first)
            shift, raw = self._conditioner(y_a, weights[s], i, activations, input_bound).chunk(2, -1)
            if shift_bound is not None:
                shift = shift.clamp(-shift_bound, shift_bound)
            if bound is None:
                neg_log_scale = -raw
            elif s in scaled:  # raw is 2 s / b already
                neg_log_scale = torch.sigmoid(raw).mul(-2.0 * bound).sub_(-bound)
            else:
                neg_log_scale = _soft_bound(raw, bound, -1.0)
            x_b = (y_b - shift) * neg_log_scale.exp()
            y = torch.cat([y_a, x_b] if a_first else [x_b, y_a], -1)
            neg_log_scales.append(neg_log_scale)
        return y, -self._ladj(y, neg_log_scales)

    @staticmethod
    def _ladj(x, log_scales):
        if not log_scales:
            return x.new_zeros(x.shape[:-1])
        return torch.cat(log_scales, -1).sum(-1) if len(log_scales) > 1 else log_scales[0].sum(-1)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_row_scale_cache", None)  # rebuilt on first use
        return state

    def extra_repr(self) -> str:
        couplings = sum(step[0] == "coupling" for step in self._plan)
        return f"{super().extra_repr()}, couplings={couplings}, permutations={self._num_perms}"


def _fuse(parts: Sequence[nn.Module], dim: int) -> Optional[_FusedCouplings]:
    """One :class:`_FusedCouplings` doing what ``parts`` do in order, or ``None`` if some
    part is not one it reproduces exactly (see the module docstring)."""
    from .guides import _StackedMLP  # guides imports this module

    if not parts:
        return None
    stacks, plan, perms = [], [], []
    for part in parts:
        if type(part) is Permutation:
            plan.append(("perm", len(perms)))
            perms.append(part.perm)
            continue
        if type(part) is not AffineCoupling or part.event_shape != torch.Size([dim]):
            return None
        partition, conditioner = part.partition, part.conditioner
        if type(partition) is not IndexPartition or not partition.contiguous or partition.dim != -1:
            return None
        if type(conditioner) is not _StackedMLP:
            return None
        activations = []
        for act in conditioner.activations:
            if any(True for _ in act.parameters()) or any(True for _ in act.buffers()):
                return None
            # an in-place ReLU after a linear layer: the same as MLP's own (nothing else
            # reads the linear layer's output)
            activations.append(None if type(act) is nn.ReLU else act)
        if len(activations) != conditioner.stack.num_layers - 1:
            return None
        stack = conditioner.stack
        index = next((k for k, s in enumerate(stacks) if s is stack), None)
        if index is None:
            index = len(stacks)
            stacks.append(stack)
        sizes = list(partition.ordered_sizes)
        plan.append(
            (
                "coupling",
                index,
                conditioner.index,
                partition.a_first,
                sizes,
                part.scale_bound,
                part.shift_bound,
                tuple(activations),
                conditioner.input_bound,
            )
        )
    return _FusedCouplings(dim, stacks, plan, perms)
