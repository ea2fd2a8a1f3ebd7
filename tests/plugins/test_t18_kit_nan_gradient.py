"""The kit's ``gradients`` property names the type and the parameter / input whose gradient is NaN or inf."""

import torch

from canvas_core.testing import check_attention_type


class _NanParamGrad(torch.nn.Module):
    """Finite output; ``gain`` gets an inf gradient (sqrt at 0)."""

    def __init__(self, d_model, n_heads, dropout=0.0):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.zeros(d_model))

    def forward(self, q, k, v):  # (B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)
        return q + self.gain.sqrt() + v.mean(1, keepdim=True)


class _NanKeyGrad(torch.nn.Module):
    """Finite output; the keys get an inf gradient (sqrt at 0)."""

    def __init__(self, d_model, n_heads, dropout=0.0):
        super().__init__()

    def forward(self, q, k, v):  # (B, Nq, D), (B, Nk, D), (B, Nk, D) -> (B, Nq, D)
        return q + (k - k.detach()).sqrt().mean(1, keepdim=True) + v.mean(1, keepdim=True)


def test_nan_parameter_gradient_names_type_and_parameter():
    report = check_attention_type(_NanParamGrad, raise_on_failure=False)
    msg = report.failed["gradients"]
    assert "'_NanParamGrad'" in msg and "'gain'" in msg


def test_nan_input_gradient_names_type_and_input():
    report = check_attention_type(_NanKeyGrad, raise_on_failure=False)
    msg = report.failed["gradients"]
    assert "'_NanKeyGrad'" in msg and "keys" in msg
