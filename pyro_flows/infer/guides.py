"""Flow guides for Pyro's stochastic variational inference.

A flow guide approximates the posterior over all continuous latent variables of a model,
mapped to one unconstrained vector (Pyro's :class:`~pyro.infer.autoguide.AutoContinuous`),
by a normalizing flow pushed forward from :math:`\\mathcal N(0, I)`.
"""

from __future__ import annotations

import functools
from contextlib import ExitStack
from typing import Callable, Dict, Optional, Sequence, Union

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.distributions.torch_transform import ComposeTransformModule
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroModule, PyroParam
from pyro.params.param_store import param_with_module_name
from torch import nn
from torch.distributions import biject_to
from torch.nn import functional as F

from ..nn import MLP
from ..transforms._arguments import check_bound
from ..transforms.coupling import _soft_bound, affine_coupling
from ..transforms.linear import LocScale, Permutation
from .fused import _fuse
from .noncentered import (
    curvature_centeredness,
    dependent_support_sites,
    loc_scale_sites,
    noncentered_init,
    own_plate_dims,
    plate_dims_taken,
    plate_nesting,
    shape_change_error,
    site_values,
)
from .path_gradient import PathGradientTransformedDistribution, _InversePathGradient

__all__ = ["AutoRealNVP", "guide_real_nvp"]


def _default_hidden_dims(dim: int) -> tuple:
    width = max(64, 4 * dim)
    return (width, width)


def guide_real_nvp(
    latent_dim: int,
    num_layers: int = 8,
    hidden_dims: Optional[Sequence[int]] = None,
    scale_bound: Optional[float] = 4.0,
    permute: bool = True,
    activation: Callable[[], nn.Module] = nn.ReLU,
    seed: int = 0,
) -> ComposeTransformModule:
    """The couplings of :class:`AutoRealNVP`: ``num_layers`` affine couplings with
    half masks of alternating parity and, when ``permute``, a fixed
    :class:`Permutation` before each pair. Usable as an ``init_transform_fn`` of
    :class:`~pyro.infer.autoguide.AutoNormalizingFlow`.

    >>> guide_real_nvp(5, num_layers=2, hidden_dims=(8,))(torch.zeros(5)).shape
    torch.Size([5])
    """
    if latent_dim < 2:
        return ComposeTransformModule([])
    hidden_dims = _default_hidden_dims(latent_dim) if hidden_dims is None else tuple(hidden_dims)
    parts = []
    for i in range(num_layers):
        if permute and i % 2 == 0 and i > 0:
            parts.append(Permutation(latent_dim, seed=seed + i))
        # No bound on the shift here: a model's latent space is not standardized (a
        # posterior can sit far from 0), and the guide's own scales stay near the posterior.
        parts.append(
            affine_coupling(latent_dim, hidden_dims, "half", i % 2, activation, scale_bound, shift_bound=None)
        )
    return ComposeTransformModule(parts)


class _StackedLinears(nn.Module):
    """The linear layers of several MLPs of one shape, as one weight and one bias tensor
    per layer (leading dimension: which MLP).

    With ``lr_scale`` :math:`c \ne 1` each tensor is held as its value divided by
    :math:`c` and read multiplied by :math:`c`. The map is the same; what changes is
    how far Adam moves it: Adam's step of a tensor is about the learning rate whatever
    the scale of its gradient, so the layers' own step becomes :math:`c` times the
    learning rate. The held tensors are then named ``weight{j}_scaled{c}`` (``.`` written
    ``p``), so that a parameter store saved with another :math:`c` cannot be read as
    this one's."""

    def __init__(self, mlps: Sequence[MLP], lr_scale: float = 1.0):
        super().__init__()
        linears = [[layer for layer in mlp if isinstance(layer, nn.Linear)] for mlp in mlps]
        self.num_layers = len(linears[0])
        self.lr_scale = float(lr_scale)
        suffix = "" if self.lr_scale == 1.0 else "_scaled" + f"{self.lr_scale:g}".replace(".", "p")
        self._names = [(f"weight{j}{suffix}", f"bias{j}{suffix}") for j in range(self.num_layers)]
        for j, (wname, bname) in enumerate(self._names):
            weight = torch.stack([layers[j].weight.detach() for layers in linears]) / self.lr_scale
            bias = torch.stack([layers[j].bias.detach() for layers in linears]) / self.lr_scale
            self.register_parameter(wname, nn.Parameter(weight))
            self.register_parameter(bname, nn.Parameter(bias))

    def held(self, j: int) -> tuple:
        """The held weight and bias of layer ``j`` (the values divided by ``lr_scale``).
        Read through ``_parameters``: the path gradient swaps detached views in there."""
        wname, bname = self._names[j]
        return self._parameters[wname], self._parameters[bname]

    def layer(self, j: int) -> tuple:
        """The weight and bias of layer ``j`` (all members)."""
        weight, bias = self.held(j)
        if self.lr_scale != 1.0:
            weight, bias = weight * self.lr_scale, bias * self.lr_scale
        return weight, bias


class _StackedMLP(nn.Module):
    """One MLP of a :class:`_StackedLinears`: the same map as the MLP it was stacked from."""

    def __init__(self, stack: _StackedLinears, index: int, mlp: MLP, input_bound: Optional[float] = None):
        super().__init__()
        self.stack = stack
        self.index = index
        self.input_bound = None if input_bound is None else float(input_bound)
        self.activations = nn.ModuleList(layer for layer in mlp if not isinstance(layer, nn.Linear))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = self.index
        activations = list(self.activations)
        if self.input_bound is not None:
            x = _soft_bound(x, self.input_bound)
        for j in range(self.stack.num_layers):
            weight, bias = self.stack.layer(j)
            x = F.linear(x, weight[i], bias[i])
            if j < len(activations):
                x = activations[j](x)
        return x


def _stack_conditioners(
    couplings: Sequence[nn.Module], input_bound: Optional[float] = None, lr_scale: float = 1.0
) -> None:
    """Put the MLP conditioners of equally shaped couplings into shared stacked tensors
    (which read their inputs soft-clipped to ``±input_bound`` when it is given, and are
    held divided by ``lr_scale``, see :class:`_StackedLinears`).

    Values and gradients are unchanged; what changes is the number of parameter tensors,
    and with it Pyro's per-tensor costs (one ``pyro.param`` per tensor and step, one Adam
    per tensor): 6 tensors in place of 48 for the default 8 couplings (12 when the latent
    dimension is odd and the half masks give two shapes). On the 10-D funnel
    (8 particles, one thread) that cut a step from 13.8 to 10.4 ms, eight schools from 15.1
    to 11.6 ms (median of 200 interleaved steps with and without stacking).
    """
    groups: dict = {}
    for coupling in couplings:
        conditioner = getattr(coupling, "conditioner", None)
        if type(conditioner) is MLP:  # exactly MLP: a subclass may compute something else
            shapes = tuple(tuple(p.shape) for p in conditioner.parameters())
            groups.setdefault(shapes, []).append(coupling)
    for members in groups.values():
        stack = _StackedLinears([c.conditioner for c in members], lr_scale)
        for i, coupling in enumerate(members):
            coupling.conditioner = _StackedMLP(stack, i, coupling.conditioner, input_bound)


def _detach_prototype(guide: AutoContinuous) -> None:
    """Detach the values of the guide's prototype trace. Under a learnable
    reparameterization (Pyro's ``AutoReparam``) a site's initial value is computed from a
    parameter of the model and keeps its graph; ``JitTrace_ELBO`` then refuses it as a
    constant ("Cannot insert a Tensor that requires grad"), as it does for Pyro's own
    ``AutoContinuous`` guides. The values only place the guide's start."""
    for node in guide.prototype_trace.nodes.values():
        value = node.get("value")
        if isinstance(value, torch.Tensor) and value.requires_grad:
            node["value"] = value.detach()


def _restore_and_raise(guide, name: str, transform: nn.Module, own: list, current: list) -> None:
    """Put the guide's own parameters back in ``transform`` (the store's values of other
    shapes replaced them) and say what is wrong."""
    for (pname, mine), (_, theirs) in zip(own, current, strict=True):
        if mine.shape != theirs.shape:
            module, _, leaf = pname.rpartition(".")
            transform.get_submodule(module)._parameters[leaf] = mine
    pname, mine, theirs = next(
        (n, p, q) for (n, p), (_, q) in zip(own, current, strict=True) if p.shape != q.shape
    )
    raise ValueError(
        f"{type(guide).__name__}: Pyro's parameter store holds {name}.{pname} of shape "
        f"{tuple(theirs.shape)}, but this guide's is {tuple(mine.shape)}: the store holds the "
        "parameters of a guide with other settings under the same name. Call "
        "pyro.clear_param_store() before building a new guide, or load a store saved from a "
        "guide with the same settings."
    )


def _refuse_foreign_parameters(guide, name: str, store, current: list) -> None:
    """Raise if the store holds parameters under the flow's name that the flow does not
    have: a store saved by a guide of other settings (another ``flow_lr_scale`` holds the
    conditioners under other names), whose values would otherwise be silently ignored."""
    own = {param_with_module_name(name, pname) for pname, _ in current}
    prefix = param_with_module_name(name, "")
    foreign = sorted(k for k in store.keys() if k.startswith(prefix) and k not in own)
    if foreign:
        raise ValueError(
            f"{type(guide).__name__}: Pyro's parameter store holds {foreign[0]}"
            + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "")
            + ", which this guide does not have: the store holds the parameters of a guide "
            "with other settings under the same name (a conditioner held as "
            "'weight0_scaled0p3' belongs to flow_lr_scale=0.3, a plain 'weight0' to "
            "flow_lr_scale=1, the default of AutoRealNVP before 2026-12-02). Build the "
            "guide with the settings of the saved one, or call pyro.clear_param_store() "
            "before building a new guide."
        )


def _refuse_subsampled_latents(guide) -> None:
    """A flow guide holds one joint vector of every latent element, which cannot follow a
    plate's subsample from step to step: refuse latent sites in subsampled plates
    (subsampled observed sites are fine) instead of fitting meaningless values."""
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        for frame in site["cond_indep_stack"]:
            if frame.full_size is not None and frame.full_size != frame.size:
                raise ValueError(
                    f"{type(guide).__name__}: latent site {name!r} is in the subsampled plate "
                    f"{frame.name!r} (size {frame.full_size}, subsample {frame.size}); a flow guide "
                    "models all latent elements jointly and cannot follow a subsample. Subsample "
                    "only observed sites, or guide the local latents with an amortized or "
                    "per-element guide (e.g. AutoNormal) in an AutoGuideList."
                )


#: the settings of ``noncentered``
_NONCENTERED = (False, True, "auto", "learn")

#: how many argument signatures a guide remembers as checked (see ``_arguments_key``)
_CHECKED_KEYS = 64


def _arguments_key(args, kwargs):
    """What of a model's arguments can change its latent shapes, as a hashable key: the
    shapes of tensors (and of anything with a ``shape``), plain values that can be sizes
    (a size passed as an ``int``, a mode as a ``str``), and the same inside tuples,
    lists and dicts; floats (an annealing factor that changes every step) and other
    objects by type only."""

    def key(value):
        if isinstance(value, (bool, int, str, type(None))):
            return (type(value).__name__, value)
        shape = getattr(value, "shape", None)
        if shape is not None:
            try:
                return (type(value).__name__, tuple(shape))
            except TypeError:
                pass
        if isinstance(value, (tuple, list)):
            return (type(value).__name__, tuple(key(v) for v in value))
        if isinstance(value, dict):
            return (
                "dict",
                tuple(sorted(((repr(k), key(v)) for k, v in value.items()), key=lambda kv: kv[0])),
            )
        return ("object", type(value).__name__)

    return key(tuple(args)), key(dict(kwargs))


def _cuda_devices(values) -> list:
    return sorted({v.device.index or 0 for v in values if torch.is_tensor(v) and v.device.type == "cuda"})


def _trace_aside(model, args, kwargs, tensors):
    """A trace of ``model(*args, **kwargs)`` that leaves the caller as it was: the random
    streams forked (on the CUDA devices of ``tensors`` too), the model's plates on their
    own dimensions, nothing seen by enclosing handlers; ``None`` if the model cannot run
    so."""
    try:
        with torch.random.fork_rng(devices=_cuda_devices(tensors)), own_plate_dims(), poutine.block():
            return poutine.trace(model).get_trace(*args, **kwargs)
    except Exception:
        return None


class _SiteBuffers(nn.Module):
    """Per-site tensors held as buffers (site names may hold dots, buffer names may not)."""

    def __init__(self, values: Dict[str, torch.Tensor]):
        super().__init__()
        self._names = {}
        for k, name in enumerate(sorted(values)):
            self.register_buffer(f"site{k}", values[name])
            self._names[name] = f"site{k}"

    def as_dict(self) -> Dict[str, torch.Tensor]:
        return {name: self._buffers[key] for name, key in self._names.items()}


class AutoRealNVP(AutoContinuous):
    r"""A RealNVP guide over all continuous latent variables of a model.

    The posterior over the unconstrained latent vector :math:`\theta` is

    .. math::

        \theta = \mu + \sigma \odot g(z), \qquad z \sim \mathcal N(0, I),

    with :math:`g` a stack of affine couplings (:func:`guide_real_nvp`) that starts as
    the identity, and :math:`\mu` started at the model's initial point
    (``init_loc_fn``), :math:`\sigma` at ``init_scale``. The location-scale sites enter
    :math:`\theta` in partially non-centered coordinates chosen from the model at its
    initial point (``noncentered="auto"``, below); with ``noncentered=False`` the guide
    before training equals an :class:`~pyro.infer.autoguide.AutoNormal` started the same
    way.

    It is an :class:`~pyro.infer.autoguide.AutoContinuous` guide: it works with
    :class:`~pyro.infer.Predictive`, ``Trace_ELBO``/``TraceMeanField_ELBO`` with
    vectorised particles, and NeuTra (:func:`~pyro_flows.infer.neutra_mcmc`; Pyro's plain
    :class:`~pyro.infer.reparam.NeuTraReparam` only with ``noncentered=False``, see
    :meth:`get_posterior`). Its parameters live in Pyro's parameter store
    (``pyro.get_param_store().save/load``). Latent sites in subsampled plates are refused
    (one joint flow cannot follow a subsample), and so are arguments under which a latent
    site has another shape than when the guide was built (the error names the site and
    both shapes; observed sites may change size); ``median`` and ``quantiles`` have no
    closed form: estimate them from draws.

    Batch norm is deliberately not used: in a guide the flow only runs in the sampling
    direction, where RealNVP batch norm would use running statistics that never update.

    :param callable model: a Pyro model.
    :param int num_layers: number of coupling layers.
    :param hidden_dims: conditioner hidden sizes; default two layers of
        ``max(64, 4 * latent_dim)``.
    :param float scale_bound: soft bound of each coupling's log-scale (4: funnel-like
        posteriors need scales of :math:`e^{\pm 4}` between their neck and mouth).
    :param bool permute: fixed permutations between coupling pairs.
    :param float init_scale: initial :math:`\sigma` (default 1.0; a narrower start helped the
        funnel's k-hat a little but hurt the banana and eight schools, see docs/inference.md).
    :param callable init_loc_fn: per-site initialisation (default ``init_to_median``).
    :param path_gradient: score the guide's samples with the flow's parameters
        detached (:class:`~pyro_flows.infer.PathGradientTransformedDistribution`), so
        ``Trace_ELBO`` gets the lower-variance "sticking the landing" gradient (Roeder et
        al., 2017); values are unchanged, a step costs one extra inverse pass (with the
        default flow, a backward pass through each conditioner while sampling instead).
        ``"inverse"``: always through the inverse pass (the same gradients, rounded
        differently in float32: it reproduces runs made before 2026-12-01 exactly). Set
        ``False`` for importance-weighted objectives (``RenyiELBO``), where it is biased.
    :param float input_bound: the conditioners read their inputs soft-clipped,
        :math:`b \tanh(x^A / b)` (default 4; ``None``: as they are). A ReLU network's
        shift and log-scale grow linearly with its input, so without the clip the first
        steps of Adam at lr 1e-2 (which move every weight by about the learning rate) can
        compound through the couplings: on eight schools, draws of 2,000 to 58,000
        within six steps (three seeds), where the model's log-density overflows float32.
        The coupling stays exactly invertible (the conditioner may be any function of
        :math:`x^A`); see docs/inference.md for its effect on accuracy.
    :param noncentered: ``True``: model every latent site drawn from a location-scale
        family (``Normal``, ``StudentT``, ``Cauchy``, ``Laplace``, ``Gumbel``) in
        non-centered coordinates, :math:`x = \mu + \sigma u` with the site's own location
        and scale (which may depend on other latent variables), and map the flow's draws
        of :math:`u` to the model's sites by running the model
        (:mod:`pyro_flows.infer.noncentered`). The model stays as written; the guide
        then fits hierarchical posteriors (funnels) that it misses in the model's own
        coordinates, and a step runs the model once more. ``"auto"`` (default): the
        partial non-centering :math:`x = \mu + \sigma^{1 - c} (u - c \mu)` of Pyro's
        ``LocScaleReparam`` with a centeredness :math:`c \in [0, 1)` per element fixed at
        the start from how strongly the rest of the model pins the site there
        (:func:`~pyro_flows.infer.noncentered.curvature_centeredness`: near 0 where the
        prior dominates, near 1 where the data do), so that weakly informed
        hierarchies are fitted non-centered and well-informed ones nearly centered
        (kept in Pyro's parameter store, not optimized, so that a saved store restores
        it with the parameters).
        ``"learn"``: a centeredness per site learnt with the guide (started at 1/2).
        ``False``: the model's own coordinates (the default until 2026-12-01).
    :param float flow_lr_scale: the couplings' conditioner weights are held divided by
        this factor :math:`c` and read multiplied by it, so that an Adam-type optimizer
        (whose step of a tensor is about the learning rate whatever the scale of its
        gradient) moves the flow at :math:`c` times the learning rate and
        :math:`\mu, \sigma` at the full rate (under plain SGD the factor acts squared).
        With the default 0.3, Adam at lr 1e-2 no longer collapses the guide on eight
        schools (one seed in five did with 1), and at lr 3e-3 the KL is lower too (see
        docs/inference.md). ``1``: the parameterization before 2026-12-02, whose saved
        parameter stores load only into a guide with ``flow_lr_scale=1``.

    >>> import pyro, pyro.distributions as dist
    >>> def model():
    ...     pyro.sample("a", dist.Normal(0.0, 1.0))
    ...     pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    >>> guide = AutoRealNVP(model, num_layers=2, hidden_dims=(8,))
    >>> sorted(guide())
    ['a', 'b']
    """

    #: run the couplings and permutations as one transform (:mod:`pyro_flows.infer.fused`):
    #: the same values and gradients as the layers one by one, with fewer operations
    _fused = True

    def __init__(
        self,
        model,
        num_layers: int = 8,
        hidden_dims: Optional[Sequence[int]] = None,
        scale_bound: Optional[float] = 4.0,
        permute: bool = True,
        init_scale: float = 1.0,
        init_loc_fn: Callable = init_to_median,
        activation: Callable[[], nn.Module] = nn.ReLU,
        path_gradient: Union[bool, str] = True,
        input_bound: Optional[float] = 4.0,
        noncentered: Union[bool, str] = "auto",
        flow_lr_scale: float = 0.3,
    ):
        super().__init__(model, init_loc_fn=init_loc_fn)
        # the model without AutoContinuous's InitMessenger, for the runs that set every
        # latent site themselves (that messenger would draw an initial value per site and
        # step, only for it to be replaced); kept out of nn.Module's registries
        self.__dict__["model_as_written"] = model
        if noncentered not in _NONCENTERED:
            raise ValueError(f"noncentered must be False, True, 'auto' or 'learn', got {noncentered!r}")
        self.noncentered = noncentered
        self.noncentered_sites = frozenset()
        # latent sites whose support depends on other latent values (set up with the prototype)
        self.dependent_support_sites = frozenset()
        self.num_layers = num_layers
        self.hidden_dims = hidden_dims
        self.scale_bound = scale_bound
        self.permute = permute
        self.init_scale = init_scale
        self.activation = activation
        if path_gradient not in (True, False, "inverse"):
            raise ValueError(f"path_gradient must be True, False or 'inverse', got {path_gradient!r}")
        self.path_gradient = path_gradient
        self.input_bound = check_bound(input_bound, "input_bound", type(self).__name__)
        if not (isinstance(flow_lr_scale, (int, float)) and 0 < flow_lr_scale < float("inf")):
            raise ValueError(f"flow_lr_scale must be a positive number, got {flow_lr_scale!r}")
        self.flow_lr_scale = float(flow_lr_scale)
        self.transform = None

    def _setup_sites(self, *args, **kwargs):
        # AutoContinuous's prototype (the latent sites and their shapes), shared by the
        # flow guides before each builds its flow
        AutoContinuous._setup_prototype(self, *args, **kwargs)
        _detach_prototype(self)
        _refuse_subsampled_latents(self)
        # a support that depends on other latents (Uniform(0, t), t latent) must be mapped
        # with the draw's own bounds, not those at the initial point (which AutoContinuous
        # uses): such models take the path that runs the model, whatever ``noncentered``
        self.dependent_support_sites = dependent_support_sites(
            self.model_as_written, self.prototype_trace, args, kwargs
        )
        self._model_plate_nesting = self._plate_nesting(args, kwargs)
        # the arguments whose latent shapes are known to be those of the prototype
        self.__dict__["_checked_arguments"] = {_arguments_key(args, kwargs)}
        if self.noncentered:
            self.noncentered_sites = loc_scale_sites(self.prototype_trace)
        if self.noncentered == "auto":
            # fixed, from the curvature at the initial point: buffers, so that they follow
            # .to(device) and are saved with the guide's state_dict, and kept in Pyro's
            # parameter store too (not traced, so never optimized), so that a store saved
            # and loaded into a new guide restores them with the parameters they go with
            # (the initial point, hence the curvature, is random)
            store = pyro.get_param_store()
            keys = {name: self._centeredness_key(name) for name in self.noncentered_sites}
            if all(key in store for key in keys.values()):
                centered = {name: store[key].detach().clone() for name, key in keys.items()}
            else:
                centered = curvature_centeredness(
                    self.model_as_written, self.prototype_trace, self.noncentered_sites, args, kwargs
                )
            self.centeredness = _SiteBuffers(centered)
            self._stored_centeredness = {}
        if self.noncentered == "learn":
            # one centeredness per site, started half-way, as Pyro's AutoReparam does
            self.centeredness = PyroModule()
            for name in sorted(self.noncentered_sites):
                like = self.prototype_trace.nodes[name]["value"]
                half = torch.full((), 0.5, dtype=like.dtype, device=like.device)
                deep_setattr(self.centeredness, name, PyroParam(half, constraints.unit_interval))

    def site_centeredness(self) -> dict:
        """The non-centered sites and their centeredness (``None`` when fully
        non-centered; per element from the curvature with ``noncentered="auto"``; the
        learnt values, in [0, 1], with ``noncentered="learn"``)."""
        if self.noncentered == "auto":
            return self._synced_centeredness()
        if self.noncentered != "learn":
            return dict.fromkeys(self.noncentered_sites)
        return {
            name: functools.reduce(getattr, name.split("."), self.centeredness)
            for name in self.noncentered_sites
        }

    def _centeredness_key(self, name: str) -> str:
        return f"{self._pyro_name}.curvature_centeredness.{name}"

    def _synced_centeredness(self) -> dict:
        """The curvature centeredness, with the parameter store as the source of truth
        as for the guide's parameters: a value loaded into the store replaces the
        buffer's; a store cleared since gets the buffer's back."""
        store = pyro.get_param_store()
        buffers = self.centeredness.as_dict()
        for name, buffer in buffers.items():
            key = self._centeredness_key(name)
            value = store.setdefault(key, lambda buffer=buffer: buffer.detach().clone())
            if value is not self._stored_centeredness.get(name):
                if value.shape != buffer.shape:
                    raise ValueError(
                        f"{type(self).__name__}: Pyro's parameter store holds {key} of shape "
                        f"{tuple(value.shape)}, but this guide's is {tuple(buffer.shape)}: the "
                        "store was saved from a guide of another model. Call "
                        "pyro.clear_param_store() before building a new guide."
                    )
                with torch.no_grad():
                    buffer.copy_(value)
                self._stored_centeredness[name] = value
        return buffers

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # A loaded curvature centeredness goes to the parameter store as well (where the
        # loaded conditioners are, written in place): left there, the store's value (of
        # this guide's own random initial point) would be saved with the loaded parameters
        # by pyro.get_param_store().save(), and a guide loaded from that store would
        # describe another posterior.
        buffers = self._modules.get("centeredness")
        if self.noncentered != "auto" or not isinstance(buffers, _SiteBuffers):
            return
        store = pyro.get_param_store()
        for name, buffer in buffers.as_dict().items():
            value = state_dict.get(f"{prefix}centeredness.{buffers._names[name]}")
            if isinstance(value, torch.Tensor) and value.shape == buffer.shape:
                store[self._centeredness_key(name)] = value.detach().to(buffer).clone()

    def __getstate__(self):
        state = super().__getstate__()
        # the store's tensors last synced into the centeredness buffers: they carry the
        # store's weak reference to their unconstrained values, which cannot be pickled;
        # without them the copy syncs from its own store on first use
        if "_stored_centeredness" in state:
            state["_stored_centeredness"] = {}
        return state

    def _setup_prototype(self, *args, **kwargs):
        self._setup_sites(*args, **kwargs)
        couplings = guide_real_nvp(
            self.latent_dim,
            self.num_layers,
            self.hidden_dims,
            self.scale_bound,
            self.permute,
            self.activation,
        )
        loc = self._init_loc()
        like = {"dtype": loc.dtype, "device": loc.device}  # the model's, as Pyro's autoguides
        couplings = couplings.to(**like)
        _stack_conditioners(couplings.parts, self.input_bound, self.flow_lr_scale)
        parts = list(couplings.parts)
        fused = _fuse(parts, self.latent_dim) if self._fused else None
        if fused is not None:
            parts = [fused]
        loc_scale = LocScale(loc, self.init_scale).to(**like)
        self.transform = ComposeTransformModule([*parts, loc_scale])

    def _init_loc(self):
        if not self.noncentered_sites:
            return super()._init_loc()
        parts = []
        centeredness = self.site_centeredness()
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            if name in centeredness:
                centered = centeredness[name]
                centered = None if centered is None else centered.detach()
                parts.append(noncentered_init(site, centered).reshape(-1))
            else:
                parts.append(biject_to(site["fn"].support).inv(site["value"].detach()).reshape(-1))
        return torch.cat(parts)

    def _site_shapes(self) -> dict:
        """The latent sites' shapes when the guide was built."""
        return {name: site["value"].shape for name, site in self.prototype_trace.iter_stochastic_nodes()}

    def _plate_nesting(self, args, kwargs) -> int:
        """How many plate dimensions the model uses, those of its observed sites included
        (the prototype trace holds the latent sites only), from a run at the prototype's
        values on the plates' own dimensions."""
        values = {name: site["value"] for name, site in self.prototype_trace.iter_stochastic_nodes()}
        trace = _trace_aside(
            poutine.condition(self.model_as_written, data=values), args, kwargs, values.values()
        )
        # a model that cannot run so: the latent sites' plates at least
        return plate_nesting(self.prototype_trace if trace is None else trace)

    def _check_latent_shapes(self, args, kwargs) -> None:
        """Refuse, naming the site and its shapes, arguments under which a latent site of
        the model has another shape than the guide was built with (a plate of another
        size, say). The plain path does not run the model, which would otherwise fail
        later with an error about broadcasting or Pyro's replay; so the model runs once (a
        prior draw, the random stream left as it was) for each new signature of the
        arguments (their shapes and plain values, see ``_arguments_key``)."""
        checked = self.__dict__.setdefault("_checked_arguments", set())
        key = _arguments_key(args, kwargs)
        try:
            if key in checked:
                return
        except TypeError:  # an argument that cannot be hashed: not followed
            return
        expected = self._site_shapes()
        trace = _trace_aside(self.model_as_written, args, kwargs, args)
        if trace is None:  # a prior draw the model cannot take: nothing to compare
            return
        for name, site in trace.iter_stochastic_nodes():
            if name in expected and site["value"].shape != expected[name]:
                raise shape_change_error(name, site["value"].shape, expected[name])
        if len(checked) >= _CHECKED_KEYS:
            checked.clear()
        checked.add(key)

    def _model_site_values(self, latent: torch.Tensor, args, kwargs):
        """The latent sites' values and Delta log-densities for a draw of the latent
        vector, from a run of the model (:func:`~pyro_flows.infer.noncentered.site_values`).

        The draw's batch dimensions come from the plates enclosing the guide, which may
        hold dimensions of the model's own plates: :class:`~pyro.infer.Predictive` places
        its draws left of the guide's plates only, at -1 for a guide of global latents
        whatever plates the model's observed sites use. The model then runs with the
        draws left of all its plates and its plates on their own dimensions, and the
        values are given back the shapes of the enclosing plates."""
        centeredness = self.site_centeredness()
        shapes = self._site_shapes()
        nesting = getattr(self, "_model_plate_nesting", 0)
        if not plate_dims_taken(nesting):
            unconstrained = {site["name"]: u for site, u in self._unpack_latent(latent)}
            return site_values(
                self.model_as_written, unconstrained, centeredness, args, kwargs, shapes=shapes
            )
        batch = latent.shape[:-1]
        moved = latent.reshape(-1, *(1,) * nesting, latent.shape[-1])
        unconstrained = {site["name"]: u for site, u in self._unpack_latent(moved)}
        with own_plate_dims():
            values, log_densities = site_values(
                self.model_as_written, unconstrained, centeredness, args, kwargs, shapes=shapes
            )
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            event_dim = site["fn"].event_dim
            value = values[name]
            try:
                shape = torch.broadcast_shapes(batch + (1,) * event_dim, site["value"].shape)
            except RuntimeError:
                shape = None
            if shape is None or shape.numel() != value.numel():
                raise ValueError(
                    f"{type(self).__name__}: the plates enclosing the guide (batch shape "
                    f"{tuple(batch)}) overlap the plates of site {name!r} (shape "
                    f"{tuple(site['value'].shape)}); place them left of the model's plates "
                    "(e.g. max_plate_nesting of the ELBO or of Predictive)"
                )
            run_batch = value.shape[: value.dim() - event_dim]
            values[name] = value.reshape(shape)
            if name in log_densities:
                log_density = log_densities[name].expand(run_batch)
                log_densities[name] = log_density.reshape(shape[: len(shape) - event_dim])
        return values, log_densities

    def forward(self, *args, **kwargs):
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        if not self.noncentered and not self.dependent_support_sites:
            self._check_latent_shapes(args, kwargs)
            return super().forward(*args, **kwargs)
        latent = self.sample_latent(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        values, log_densities = self._model_site_values(latent, args, kwargs)
        result = {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            log_density = log_densities[name] if poutine.get_mask() is not False else 0.0
            delta = dist.Delta(values[name], log_density=log_density, event_dim=site["fn"].event_dim)
            with ExitStack() as stack:
                for frame in self._cond_indep_stacks[name]:
                    stack.enter_context(plates[frame.name])
                result[name] = pyro.sample(name, delta)
        return result

    def _synced_transform(self):
        # ``pyro.module`` with update_module_params=True makes the parameter store the
        # source of truth: after ``pyro.get_param_store().load(...)`` the loaded values
        # replace the module's own (the plain attribute access only registers them).
        # Read through _modules: PyroModule's attribute access would register the whole
        # flow with the parameter store once more on every read.
        transform = self._modules["transform"]
        own = self.__dict__.get("_own_parameters")
        if own is None or own[0] is not transform:
            own = (transform, list(transform.named_parameters()))
        name = self._pyro_get_fullname("transform")
        pyro.module(name, transform, update_module_params=True)
        # The store wins: values saved by a guide of other settings under the same name
        # would otherwise fail deep inside the flow (or, with equal shapes, be used).
        current = list(transform.named_parameters())
        if any(p.shape != q.shape for (_, p), (_, q) in zip(current, own[1], strict=True)):
            _restore_and_raise(self, name, transform, own[1], current)
        self.__dict__["_own_parameters"] = (transform, current)
        store = pyro.get_param_store()
        if len(store) != self.__dict__.get("_store_size_checked"):  # something was added or loaded
            _refuse_foreign_parameters(self, name, store, current)
            self.__dict__["_store_size_checked"] = len(store)
        return transform

    def median(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form median: estimate it from draws, e.g. "
            "pyro_flows.infer.guide_samples(model, guide, 1000) or pyro.infer.Predictive"
        )

    def quantiles(self, quantiles, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} has no closed-form quantiles: estimate them from draws, e.g. "
            "torch.quantile(pyro_flows.infer.guide_samples(model, guide, 1000)[site], q, dim=0)"
        )

    def get_base_dist(self):
        loc = self._modules["transform"].parts[-1].loc
        return dist.Normal(torch.zeros_like(loc), torch.ones_like(loc)).to_event(1)

    def get_transform(self, *args, **kwargs):
        return self._synced_transform()

    def get_posterior(self, *args, **kwargs):
        """The flow's distribution over the latent vector. With ``noncentered`` set it is
        over the non-centered coordinates :math:`u` of the location-scale sites, not the
        model's unconstrained values: draw model-space values by calling the guide (or
        with :class:`~pyro.infer.Predictive`), and run NeuTra through
        :func:`~pyro_flows.infer.neutra_mcmc`, which maps :math:`u` back; Pyro's plain
        ``NeuTraReparam`` would read :math:`u` as the model's coordinates (its chain still
        targets the posterior, but the flow no longer preconditions it)."""
        transform = self._synced_transform()
        if self.path_gradient == "inverse":
            return _InversePathGradient(self.get_base_dist(), [transform])
        if self.path_gradient:
            return PathGradientTransformedDistribution(self.get_base_dist(), [transform])
        return dist.TransformedDistribution(self.get_base_dist(), transform)
