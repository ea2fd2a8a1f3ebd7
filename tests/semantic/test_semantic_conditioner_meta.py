"""SemanticConditioner builds on the meta device (shape inference) and keeps its dtypes."""

import torch

from canvas_core.runtime.semantic_conditioner import SemanticConditioner

torch.set_num_threads(1)


def test_builds_under_the_meta_device():
    with torch.device("meta"):
        c = SemanticConditioner(8, 4, {"a": [1.0, 2.0, 3.0, 4.0], "b": [0.0, 1.0, 0.0, 1.0]})
    assert c._embeddings.device.type == "meta"
    assert c.get_all_conditioning().shape == (2, 8)


def test_nan_embedding_still_refused_on_cpu():
    import pytest

    from canvas_core.errors import SchemaError

    with pytest.raises(SchemaError, match="'a'"):
        SemanticConditioner(8, 2, {"a": [float("nan"), 1.0]})
