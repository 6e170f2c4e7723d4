"""The result of the QADG analysis: pruning groups and the slices they remove."""
from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass(frozen=True)
class MemberSlice:
    """Indices `indices` along `axis` of initializer `tensor` belong to a group.

    role: "out"   output channels of a layer (weight rows, bias, norm affine parameters,
                  embedding columns, per-channel Q/DQ scales of that layer)
          "in"    input channels of a consuming layer (weight columns)
          "state" non-trainable per-channel state (BatchNorm running statistics): sliced
                  when pruning, never zeroed
    """

    tensor: str
    axis: int
    indices: tuple[int, ...]
    role: str = "out"

    def to_dict(self) -> dict:
        return {"tensor": self.tensor, "axis": self.axis, "indices": list(self.indices), "role": self.role}


@dataclass
class PruneGroup:
    """Channels (or heads, or conv groups) that must be removed together.

    Zeroing every "out" and "in" member gives exactly the function of the network with
    the group physically removed (zero-invariance) when `prunable` is True.
    """

    id: int
    kind: str  # "channel" | "head" | "conv_group"
    size: int  # in units of `kind`: 1 channel, 1 head or 1 conv group (a channel tied
    #            across layers by residuals is still one channel)
    width: int  # channels the group removes from its widest source layer (a head: head_dim
    #             per projection, q+k+v rows for a fused projection)
    members: list[MemberSlice]
    sources: list[str] = field(default_factory=list)  # nodes whose OUTPUT channels the group holds
    params: int = 0  # weight elements removed with the group
    macs: int = 0  # MACs per sample removed with the group
    prunable: bool = True
    reason: str = ""  # why not prunable

    @property
    def tensors(self) -> set[str]:
        return {m.tensor for m in self.members}

    def to_dict(self) -> dict:
        """Plain fields, members as dicts (dataclasses.asdict's recursive copy took 2.6 s of
        inspect's 5.6 s on PP-OCRv5's recognizer: 24,000 groups)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["members"] = [m.to_dict() for m in self.members]
        d["sources"] = list(self.sources)
        return d
