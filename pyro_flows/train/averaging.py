r"""An exponential moving average (EMA, Polyak averaging) of a model's weights, for
evaluation and sampling.

Training keeps updating the live parameters :math:`\theta_t`; the average

.. math::

    \bar\theta_1 = \theta_1, \qquad
    \bar\theta_t = d_t\,\bar\theta_{t-1} + (1 - d_t)\,\theta_t, \qquad
    d_t = \min\!\Big(d, \frac{1 + t}{10 + t}\Big)

(:math:`t` the number of earlier updates) smooths out the last steps' noise. The warm-up
of :math:`d_t` makes the average follow the weights closely early on, when they move
fast, and settle to the full ``decay`` :math:`d` later (a window of about
:math:`1/(1-d)` steps). Buffers (batch-norm statistics, ActNorm flags) are not averaged:
the model's own are used.

>>> net = torch.nn.Linear(1, 1, bias=False)
>>> ema = WeightAverage(net, decay=0.5)
>>> for w in (1.0, 3.0):
...     _ = net.weight.data.fill_(w)
...     ema.update()
>>> round(float(ema.shadow[0]), 4)   # 1, then d_1 = min(0.5, 2/11) = 2/11: 2/11 + 9/11 * 3
2.6364
>>> with ema.applied():
...     float(net.weight.detach())
2.6363635063171387
>>> float(net.weight.detach())
3.0
"""

from __future__ import annotations

import contextlib
from typing import Dict, List

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The EMA of the trainable parameters of ``module``; it follows the module's moves
    (``module.to(device, dtype)``) at the next :meth:`update` or :meth:`applied`.

    :param module: the model trained in place.
    :param float decay: :math:`d` in :math:`(0, 1)`.
    """

    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the averaging decay must be in (0, 1), got {decay}")
        self.module = module
        self.decay = float(decay)
        self.params: List[nn.Parameter] = [p for p in module.parameters() if p.requires_grad]
        self.shadow: List[torch.Tensor] = []
        self.num_updates = 0

    def current_decay(self) -> float:
        """:math:`d_t` of the next update (0 for the first, which copies the weights)."""
        if self.num_updates == 0:
            return 0.0
        t = self.num_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights into the average (call after each optimizer step)."""
        if self.num_updates == 0:
            self.shadow = [p.detach().clone() for p in self.params]
        else:
            d = self.current_decay()
            self._follow_moves()
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)
        self.num_updates += 1

    def _follow_moves(self) -> None:
        """Keep the average on the parameters' device and dtype after ``module.to(...)``."""
        self.shadow = [
            s if s.dtype == p.dtype and s.device == p.device else s.to(device=p.device, dtype=p.dtype)
            for s, p in zip(self.shadow, self.params, strict=True)
        ]

    @contextlib.contextmanager
    def applied(self):
        """Within the block the module holds the averaged weights; the live ones come back
        afterwards (also on an exception). Before any update it holds its own."""
        if not self.shadow:
            yield self.module
            return
        self._follow_moves()
        live = [p.detach().clone() for p in self.params]
        try:
            with torch.no_grad():
                for p, s in zip(self.params, self.shadow, strict=True):
                    p.copy_(s)
            yield self.module
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, live, strict=True):
                    p.copy_(w)

    def averaged_state_dict(self) -> Dict[str, torch.Tensor]:
        """The module's ``state_dict`` with the averaged weights (copies)."""
        with self.applied():
            return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def state_dict(self) -> dict:
        """What a checkpoint needs to continue the average."""
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": list(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        """Continue the average of :meth:`state_dict`. A checkpoint of another ``decay``
        is refused: continued with this one's, the average would be neither run's."""
        decay = state.get("decay")
        if decay is not None and float(decay) != self.decay:
            raise ValueError(
                f"the averaged weights were taken with decay {float(decay)}, this average's is "
                f"{self.decay}: build the WeightAverage with the checkpoint's decay"
            )
        shadow = state["shadow"]
        if len(shadow) not in (0, len(self.params)) or any(
            s.shape != p.shape for s, p in zip(shadow, self.params, strict=False)
        ):
            raise ValueError("the averaged weights do not fit the model's parameters")
        self.num_updates = int(state["num_updates"])
        self.shadow = [
            s.detach().to(device=p.device, dtype=p.dtype).clone()
            for s, p in zip(shadow, self.params[: len(shadow)], strict=True)
        ]
