"""verify_structure with a make_input drawing integer token ids: a CanvasTypeError saying how to verify
such a model (from its embeddings), and that way works."""

import pytest
import torch
from torch import nn

import canvas_core
from canvas_core import CanvasAttention, CanvasLayout, CanvasTopology, Connection
from canvas_core.errors import CanvasTypeError

LAYOUT = CanvasLayout(T=2, spatial_shape=(2, 2), d_model=8,
                      regions={"a": (0, 2, 0, 1, 0, 2), "b": (0, 2, 1, 2, 0, 2)})
TOPO = CanvasTopology(connections=[Connection("a", "a"), Connection("b", "a"), Connection("b", "b")])


class _TokenModel(nn.Module):
    """Token ids (B, N) -> embeddings (B, N, 8) -> one canvas layer."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.att = CanvasAttention(TOPO, LAYOUT)

    def forward(self, ids):
        return self.att(self.emb(ids))


def test_token_make_input_refused_with_the_way_to_verify():
    torch.manual_seed(0)
    model = _TokenModel()
    n = LAYOUT.num_positions
    with pytest.raises(CanvasTypeError) as exc:
        canvas_core.verify_structure(model, LAYOUT, TOPO,
                                     make_input=lambda b, g: torch.randint(0, 11, (b, n), generator=g))
    msg = str(exc.value)
    assert "make_input" in msg and "int64" in msg and "embedding" in msg
    # the way the message gives: the model after its embedding, fed embeddings
    report = canvas_core.verify_structure(
        model.att, make_input=lambda b, g: model.emb(torch.randint(0, 11, (b, n), generator=g)).detach())
    assert report.ok
