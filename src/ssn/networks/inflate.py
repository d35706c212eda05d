"""Start a 3D network from a trained 2D one ("inflation").

A 2D kernel ``w`` of shape (O, I, kh, kw) becomes a 3D kernel of shape (O, I, kh, kw, kd) that
is ``w`` on its middle slice along the inflated axis and zero elsewhere. A 3D convolution with it
computes, on each slice of a volume, what the 2D convolution computes on that slice alone. With
no pooling along the inflated axis (:class:`~ssn.networks.unet.UNet` with ``pool=[2, 2, 1]``),
the whole inflated network is then the 2D network applied slice by slice, exactly with no
normalisation, batch normalisation in eval mode, or instance normalisation taken per slice
(``norm="slice-instance"``, :class:`~ssn.networks.layers.SliceInstanceNorm`). Plain instance
normalisation (``"instance"``) takes its statistics over the whole volume instead, so the start
is close to the 2D network but not equal to it. Training in 3D starts from there and can learn
what crosses slices.

Carreira and Zisserman (I3D, CVPR 2017) inflated image networks for video by repeating each
kernel along time, divided by its depth; placing it on the middle slice instead keeps the 2D
network's outputs unchanged, slice by slice, so a 3D run starts where the 2D model stands.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["inflate_weight", "inflate_state_dict"]

#: a deterministic network's logits are an SSN's mean logits, so either head starts the other
_ALIASES = {
    "head.weight": "head.mean.weight",
    "head.bias": "head.mean.bias",
    "head.mean.weight": "head.weight",
    "head.mean.bias": "head.bias",
}


def inflate_weight(weight: Tensor, shape: tuple[int, ...], axis: int = -1) -> Tensor:
    """A (O, I, *K) kernel of one spatial dimension fewer than ``shape`` placed on the middle
    slice of a zero kernel of ``shape`` along spatial ``axis`` (of the target's spatial axes).

    Raises:
        ConfigError: shapes that do not match but for the inflated axis, or an even kernel size
            along it (a kernel of 2, say, of a transposed convolution that upsamples along the
            axis), which has no middle slice.
    """
    if not _fits(weight, shape, axis):
        raise ConfigError(f"a kernel of shape {tuple(weight.shape)} cannot be inflated to {tuple(shape)}")
    where = axis % (len(shape) - 2)
    depth = shape[2 + where]
    if depth % 2 == 0:
        raise ConfigError(
            f"a kernel of shape {tuple(shape)} has an even size ({depth}) along the inflated axis, so no "
            "middle slice: build the 3D U-Net with no pooling along that axis (pool [2, 2, 1])"
        )
    out = weight.new_zeros(shape)
    index: list[slice | int] = [slice(None)] * len(shape)
    index[2 + where] = depth // 2
    out[tuple(index)] = weight
    return out


def inflate_state_dict(
    source: Mapping[str, Tensor], model: nn.Module, axis: int = -1
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """The weights of ``model`` (3D) taken from ``source`` (a 2D model's, or a model's of the same
    dimensions): tensors of equal shape are copied, kernels one dimension short are inflated along
    spatial ``axis`` (:func:`inflate_weight`).

    Returns:
        (the full state dict to load, the keys left at their initial values because ``source``
        has no such tensor, the keys of ``source`` not used).

    Raises:
        ConfigError: a tensor present in both with shapes that inflation does not reconcile
            (other channel counts, ranks or classes).
    """
    state = model.state_dict()
    checked = False
    used, fresh = set(), []
    for key, target in state.items():
        name = key if key in source else _ALIASES.get(key)
        if name is None or name not in source:
            fresh.append(key)
            continue
        weight = source[name]
        used.add(name)
        if tuple(weight.shape) == tuple(target.shape):
            state[key] = weight.to(target.dtype).clone()
        elif target.dim() >= 3 and _fits(weight, tuple(target.shape), axis):
            if not checked:
                _check_pooling(model, axis)
                checked = True
            state[key] = inflate_weight(weight.to(target.dtype), tuple(target.shape), axis)
        else:
            raise ConfigError(
                f"the weights {name} have shape {tuple(weight.shape)} but the model's {key} has "
                f"{tuple(target.shape)}: start from a run of the same backbone widths, rank and classes"
            )
    unused = [key for key in source if key not in used]
    return state, fresh, unused


def _fits(weight: Tensor, shape: tuple[int, ...], axis: int) -> bool:
    """Whether ``weight`` has ``shape`` but for the inflated spatial ``axis``, which it lacks."""
    where = axis % (len(shape) - 2)
    return weight.dim() + 1 == len(shape) and tuple(weight.shape) == shape[: 2 + where] + shape[3 + where :]


def _check_pooling(model: nn.Module, axis: int) -> None:
    """A U-Net that pools along the inflated axis mixes slices: it cannot start as the 2D network."""
    for module in model.modules():
        factors = getattr(module, "pool_factors", None)
        if factors is not None and factors[axis % len(factors)] != 1:
            keep = [2] * len(factors)
            keep[axis % len(factors)] = 1
            raise ConfigError(
                f"the U-Net pools along the axis to inflate ({axis % len(factors)}), so it cannot start as "
                f"the 2D network applied slice by slice: build it with --model-kwargs '{{pool: {keep}}}'"
            )
