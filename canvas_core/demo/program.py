"""The demo's typed program (:class:`BlobWorld`) and its declaration on a backbone's token grid
(:func:`declare_program`), shared by the pipeline and the study."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from canvas_core.demo.backbones import DemoBackbone
from canvas_core.errors import BackboneError
from canvas_core.program import Field

__all__ = ["BlobWorld", "declare_program"]


@dataclass
class BlobWorld:
    """The demo's typed program: one ``Field`` per region, sized from the backbone's token grid.

    ``video`` (family ``observation``): the latent video frames; ``action`` (family ``action``):
    the velocity to output; ``reward`` (family ``state``): how long the blob stays in view (absent
    when the grid has no room for it, e.g. ViT's single CLS token).
    """

    video: Field
    action: Field
    reward: Optional[Field] = None


_FAMILIES = {"video": "observation", "action": "action", "reward": "state"}
_MEANING = {"video": "latent video of a moving blob", "action": "2-d velocity to follow the blob",
            "reward": "fraction of frames the blob is in view"}


def _field(name: str, box: tuple, T: int) -> Field:
    """A ``Field`` the size of ``box`` (bounds on the token grid, starting at frame 0)."""
    t0, t1, *spatial = box
    shape = tuple(spatial[2 * i + 1] - spatial[2 * i] for i in range(len(spatial) // 2))
    return Field(spatial_shape=shape, family=_FAMILIES[name], semantic_type=_MEANING[name],
                 temporal_extent=None if t1 - t0 == T else t1 - t0, is_output=name != "video",
                 loss_weight=2.0 if name == "action" else 1.0)


def declare_program(tokens: Any, recipe: DemoBackbone):
    """The demo's program on the backbone's token grid ``tokens.layout``.

    The typed fields of :class:`BlobWorld` are compiled with ``compile_program`` on the grid
    (shelf packing puts them exactly on the backbone's video and text/CLS tokens, which is
    checked); the dense default topology is then tailored: the video tokens keep reading the
    video only (same and previous frame), action and reward read everything.
    """
    import dataclasses

    from canvas_core import CanvasProgram, CanvasSchema, CanvasTopology, compile_program

    boxes = recipe.regions(tokens)
    grid = tokens.layout
    world = BlobWorld(**{name: _field(name, box, grid.T) for name, box in boxes.items()})
    _, program = compile_program(world, T=grid.T, spatial_shape=tuple(grid.spatial_shape), d_model=grid.d_model)
    placed = {name: program.schema.layout.region_spec(name).bounds for name in boxes}
    if placed != {name: tuple(box) for name, box in boxes.items()}:
        raise BackboneError(f"the demo's fields landed at {placed} on the {recipe.name} token grid, "
                            f"not on the backbone's tokens {boxes}")
    conns = []
    for c in program.schema.topology.connections:
        if c.src == "video" and c.dst != "video":
            continue  # the observation stream stays the backbone's own video attention
        if (c.src, c.dst) == ("video", "video") and grid.T > 1:  # causal in time
            conns += [dataclasses.replace(c, t_src=0, t_dst=0), dataclasses.replace(c, t_src=0, t_dst=-1)]
        else:
            conns.append(c)
    schema = CanvasSchema(layout=program.schema.layout, topology=CanvasTopology(conns),
                          metadata={"name": f"canvas-demo-{recipe.name}", "task": "moving blob"})
    connections = {k: v for k, v in program.connections.items() if k in {(c.src, c.dst) for c in conns}}
    return CanvasProgram(schema=schema, regions=program.regions, connections=connections)
