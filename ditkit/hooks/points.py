"""Named hook points: the one mechanism by which recipes change a model, with one owner per point and one restore
path.

Every change a method makes to a model is an attribute set through :class:`HookPoints`:

    stack                      ``model.run_stack``: the block stack (caching methods)
    attention.L.heads          ``attn.backend`` of softmax attention layer L, owned per head (attention methods;
                               two methods may split one layer's heads)
    attention.L.observer       ``attn.observer(q, k)``, called before each attention call of layer L (ToCa's scores)
    linear.NAME                the ``nn.Linear`` module NAME, swapped for a quantized layer
    quantization               ``model.quantization``, the description of the quantized layers

A point already owned by another method is refused here, with one message naming both; :meth:`HookPoints.release`
puts back exactly what an owner changed, and the registry leaves the model when its last owner is gone.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..models.attention import HeadSplit

KEY = "_ditkit_hooks"
_ABSENT = object()


class HookPoints:
    """The hook points of one model; get it with :meth:`of`."""

    def __init__(self, model):
        self.model = model
        self.owners: dict[str, Any] = {}                        # point -> owner (a method; its .name is shown)
        self.patches: list[tuple[Any, str, Any, str, Any]] = []  # (owner, point, obj, attr, previous value)
        self.heads: dict[int, dict] = {}                        # id(attn) -> {"attn", "original", "claims"}

    @classmethod
    def of(cls, model) -> "HookPoints":
        points = model.__dict__.get(KEY)
        if points is None:
            points = model.__dict__[KEY] = cls(model)
        return points

    def claim(self, point: str, owner) -> None:
        """Take ``point`` for ``owner``; refused if another owner has it."""
        held = self.owners.get(point)
        if held is not None and held is not owner:
            raise ValueError(f"{owner.name} cannot be combined with {held.name}: both need the hook point "
                             f"'{point}' of the model ({_WHAT.get(point.split('.')[0], 'one attribute')})")
        self.owners[point] = owner

    def set(self, point: str, owner, obj, attr: str, value) -> None:
        """Claim ``point`` and set ``obj.attr = value`` (an instance attribute or a submodule)."""
        self.claim(point, owner)
        previous = obj.__dict__.get(attr, _ABSENT) if attr not in getattr(obj, "_modules", {}) else obj._modules[attr]
        setattr(obj, attr, value)
        self.patches.append((owner, point, obj, attr, previous))

    def set_backend(self, layer: int, attn, owner, heads: Sequence[int], backend) -> None:
        """Give ``heads`` of attention layer ``layer`` to ``backend`` (the other heads keep theirs)."""
        for h in heads:
            self.claim(f"attention.{layer}.heads.{h}", owner)
        entry = self.heads.setdefault(id(attn), {"attn": attn, "original": attn.backend, "claims": []})
        entry["claims"].append((owner, list(heads), backend))
        self._compose(entry)

    def _compose(self, entry: dict) -> None:
        attn, claims = entry["attn"], entry["claims"]
        taken = {h for _, heads, _ in claims for h in heads}
        rest = [h for h in range(attn.num_heads) if h not in taken]
        groups = [(heads, fn) for _, heads, fn in claims] + ([(rest, entry["original"])] if rest else [])
        attn.backend = groups[0][1] if len(groups) == 1 else HeadSplit(groups)

    def release(self, owner) -> None:
        """Undo everything ``owner`` changed, in reverse order."""
        for patch in reversed([p for p in self.patches if p[0] is owner]):
            _, _, obj, attr, previous = patch
            if previous is _ABSENT:
                delattr(obj, attr)
            else:
                setattr(obj, attr, previous)
        self.patches = [p for p in self.patches if p[0] is not owner]
        for key, entry in list(self.heads.items()):
            if any(o is owner for o, _, _ in entry["claims"]):
                entry["claims"] = [c for c in entry["claims"] if c[0] is not owner]
                if entry["claims"]:
                    self._compose(entry)
                else:
                    entry["attn"].backend = entry["original"]
                    del self.heads[key]
        self.owners = {p: o for p, o in self.owners.items() if o is not owner}
        if not self.owners:
            self.model.__dict__.pop(KEY, None)


_WHAT = {"stack": "each replaces the transformer block stack: use one caching method per recipe",
         "attention": "the same heads of one attention layer: select disjoint heads= or layers=",
         "linear": "the same linear layer: use one quantization method per recipe",
         "quantization": "use one quantization method per recipe"}
