"""Parameter groups: route labelled subtrees of the params to different transformations."""
from typing import Any, Callable, Hashable, NamedTuple, Union

import jax
import numpy as np

from adaptx._src.validate import path_name
from adaptx._src.base import FusedTransformation, GradientTransformation, apply_updates, one_pass, update_then_apply

# A pytree shaped like the params (or a prefix of them), or a function of the params returning one.
TreeOrFunction = Union[Any, Callable[[Any], Any]]


class MaskedNode(NamedTuple):
    """Stands where a group does not own a leaf: an empty pytree, so the group's state keeps no buffer there."""


class MaskedState(NamedTuple):
    inner_state: Any


class PartitionState(NamedTuple):
    inner_states: dict  # label -> state of that label's transformation

    def replace_group(self, label: Hashable, group_state: Any) -> "PartitionState":
        """This state with ``label``'s state replaced, e.g. by ``adaptx.set_hyperparams(...)`` of it."""
        if label not in self.inner_states:
            raise KeyError(f"no group {label!r}; the groups are {sorted(self.inner_states, key=repr)}")
        return self._replace(inner_states={**self.inner_states, label: group_state})


def _per_leaf(spec: TreeOrFunction, tree: Any, what: str) -> list:
    """One entry of ``spec`` for each leaf of ``tree``, a prefix ``spec`` covering whole subtrees."""
    spec = spec(tree) if callable(spec) else spec
    try:
        spread = jax.tree.map(lambda entry, subtree: jax.tree.map(lambda _: entry, subtree), spec, tree)
        return jax.tree.structure(tree).flatten_up_to(spread)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"the {what} must be a pytree with the params' structure (or a prefix of it), or a function"
            f" of the params returning one: {error}"
        ) from None


def _select(tree: Any, owned: list) -> Any:
    """``tree`` with the leaves not ``owned`` replaced by :class:`MaskedNode`."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef.unflatten([leaf if own else MaskedNode() for leaf, own in zip(leaves, owned)])


def _merge(like: Any, keys: list, sources: dict) -> Any:
    """A tree shaped like ``like`` whose leaf i is leaf i of ``sources[keys[i]]``."""
    treedef = jax.tree.structure(like)
    flat = {key: treedef.flatten_up_to(source) for key, source in sources.items()}
    return treedef.unflatten([flat[key][i] for i, key in enumerate(keys)])


def leaf_flags(mask: TreeOrFunction, tree: Any) -> list:
    """One bool per leaf of ``tree``: where :func:`masked` with this ``mask`` applies its transformation."""
    flags = _per_leaf(mask, tree, "mask")
    for flag in flags:
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"mask entries must be Python bools (they decide the state's structure), got {flag!r}")
    return flags


def masked(tx: GradientTransformation, mask: TreeOrFunction) -> GradientTransformation:
    """Apply ``tx`` to the leaves where ``mask`` is True; pass the others through unchanged.

        uᵢ = tx(g)ᵢ  where maskᵢ,    uᵢ = gᵢ  elsewhere

    ``mask`` is a pytree of bools shaped like the params (a prefix covers a whole
    subtree) or a function ``params -> mask``, called on the updates at update
    time (they share the params' structure). ``tx`` keeps state only for the
    masked-in leaves, and a global quantity it computes (a norm, say) covers
    only them. Typical use: ``masked(add_decayed_weights(λ), lambda p:
    jax.tree.map(lambda x: x.ndim > 1, p))`` decays matrices, not biases or norms.
    """
    def owned(tree):
        return leaf_flags(mask, tree)

    def init(params):
        return MaskedState(tx.init(_select(params, owned(params))))

    def update(updates, state, params=None, **extra_args):
        flags = owned(updates)
        inner_updates, inner = tx.update(
            _select(updates, flags), state.inner_state, None if params is None else _select(params, flags),
            **extra_args)
        return _merge(updates, flags, {True: inner_updates, False: updates}), MaskedState(inner)

    if one_pass(tx) is None:
        return GradientTransformation(init, update)

    def update_and_apply(grads, state, params):
        flags = owned(grads)
        stepped, inner = update_then_apply(tx, _select(grads, flags), state.inner_state, _select(params, flags))
        others = [not f for f in flags]
        passed = apply_updates(_select(params, others), _select(grads, others))  # uᵢ = gᵢ there
        return _merge(params, flags, {True: stepped, False: passed}), MaskedState(inner)

    return FusedTransformation(init, update, update_and_apply)


def partition(transforms: dict, labels: TreeOrFunction) -> GradientTransformation:
    """Apply ``transforms[label]`` to the leaves labelled ``label``.

        uᵢ = transforms[labelᵢ](g restricted to label labelᵢ)ᵢ

    ``labels`` is a pytree of labels shaped like the params (a prefix labels a
    whole subtree) or a function ``params -> labels``. Each transformation sees
    only its own leaves and keeps state only for them, so e.g.
    ``partition({"body": adamw(1e-3), "head": adamw(1e-2)}, {"body": "body",
    "head": "head"})`` gives the head a larger learning rate. Read or change one
    group's hyperparameters with ``adaptx.hyperparams(state.inner_states[label])``
    and ``state.replace_group(label, adaptx.set_hyperparams(...))``.
    """
    if not transforms:
        raise ValueError("partition needs at least one labelled transformation")

    def label_each(tree):
        found = _per_leaf(labels, tree, "labels")
        paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
        for path, label in zip(paths, found):
            if label not in transforms:
                raise ValueError(
                    f"the leaf at {path_name(path)} is labelled {label!r}, which has"
                    f" no transformation; give partition one for each of {sorted(set(found), key=repr)}"
                )
        return found

    def init(params):
        found = label_each(params)
        return PartitionState({label: tx.init(_select(params, [x == label for x in found]))
                               for label, tx in transforms.items()})

    def update(updates, state, params=None, **extra_args):
        found = label_each(updates)
        results, states = {}, {}
        for label, tx in transforms.items():
            owned = [x == label for x in found]
            sub_params = None if params is None else _select(params, owned)
            results[label], states[label] = tx.update(_select(updates, owned), state.inner_states[label], sub_params, **extra_args)
        return _merge(updates, found, results), PartitionState(states)

    if all(one_pass(tx) is None for tx in transforms.values()):
        return GradientTransformation(init, update)

    def update_and_apply(grads, state, params):
        found = label_each(grads)
        results, states = {}, {}
        for label, tx in transforms.items():
            owned = [x == label for x in found]
            results[label], states[label] = update_then_apply(
                tx, _select(grads, owned), state.inner_states[label], _select(params, owned))
        return _merge(params, found, results), PartitionState(states)

    return FusedTransformation(init, update, update_and_apply)
