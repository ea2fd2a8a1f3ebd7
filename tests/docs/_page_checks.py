"""Per-page output checks of the docs runner: where a page shows what its example prints or
computes (a ``# value`` comment after a ``print``, a ```text block of a report, a sentence), the
check compares it with what the run of the page's blocks actually printed and built.

A check is ``check(run)`` with a :class:`PageRun`; it is called after every block of the page ran.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

PRINT_COMMENT = re.compile(r"^[ \t]*print\(.*\)[ \t]+# (.*)$", re.M)


@dataclass
class PageRun:
    text: str                   # the page's markdown
    blocks: List[str]           # its python blocks, in order
    outputs: List[str]          # what each block printed
    ns: Dict[str, Any]          # the page namespace after the last block

    def shown(self, index: int) -> List[str]:
        """The ``# comment`` of each ``print(...)  # comment`` line of block ``index``."""
        return [c.strip() for c in PRINT_COMMENT.findall(self.blocks[index])]

    def block_with(self, needle: str) -> int:
        (index,) = [i for i, b in enumerate(self.blocks) if needle in b]
        return index


def _normalize_report(report: str) -> str:
    report = re.sub(r"/\S*/memory\.safetensors", "<path>/memory.safetensors", report)
    report = re.sub(r"built in [0-9.]+ ms", "built in <t> ms", report)
    # column widths depend on the path length: compare cell contents, not padding
    lines = [re.sub(r"-{2,}", "-", re.sub(r" {2,}", "  ", line.rstrip())) for line in report.splitlines()]
    return "\n".join(lines).strip()


def compiler(run: PageRun) -> None:
    # the first example's printed values are the ones its comments show
    expected = [c for c in run.shown(0) if "report below" not in c]
    assert run.outputs[0].splitlines()[: len(expected)] == expected
    assert "memory True" in run.outputs[run.block_with("schema_hash")]
    kernels = run.block_with("inference.plan.resolutions")
    assert eval(run.outputs[kernels]) == eval(run.shown(kernels)[0])
    # the report printed on the page is a real run (same installed backends, CPU only)
    import torch

    if (importlib.util.find_spec("canvas_backend_flex") and importlib.util.find_spec("canvas_backend_xformers")
            and not importlib.util.find_spec("xformers") and not torch.cuda.is_available()):
        shown = re.search(r"```text\n(CompiledProgram for .*?)```", run.text, flags=re.S).group(1)
        assert _normalize_report(str(run.ns["compiled"])) == _normalize_report(shown)


def programs(run: PageRun) -> None:
    # first example: the two printed values, then the connections listed in the comment below it
    listed = [line[2:] for line in run.blocks[0].splitlines() if line.startswith("# ")]
    assert run.outputs[0].splitlines() == run.shown(0) + listed
    check = run.block_with("validate_constraints(program))")
    listed = [line[2:] for line in run.blocks[check].splitlines() if line.startswith("# ")]
    assert eval(run.outputs[check]) == eval("".join(listed))


def quickstart(run: PageRun) -> None:
    assert len(run.blocks) >= 7
    assert all("canvas_engineering" not in b for b in run.blocks)
    betas = run.block_with("schedule.betas()")
    assert run.outputs[betas].splitlines()[0] == run.shown(betas)[0]
    import torch

    assert run.ns["masked"].shape == run.ns["before"].shape
    assert not torch.allclose(run.ns["masked"], run.ns["unmasked"])  # the topology changed the math
    assert tuple(run.ns["actions"].shape) == (2, 4)


def identity(run: PageRun) -> None:
    step = run.ns["step"]
    assert tuple(step.slots.shape) == (2, 5, 32) and tuple(step.alive.shape) == (2, 5)  # as the comment says
    report = run.block_with("compiled.identity")
    assert run.outputs[report].splitlines()[0] == run.shown(report)[0]


def world_models(run: PageRun) -> None:
    slide = run.block_with('slide="recompute"')
    assert run.outputs[slide].split() == run.shown(slide)[0].split()


def backbones(run: PageRun) -> None:
    kernels = run.block_with("describe_kernels()")
    assert eval(run.outputs[kernels].splitlines()[0]) == eval(run.shown(kernels)[0])


CHECKS: Dict[str, Callable[[PageRun], None]] = {
    "compiler.md": compiler,
    "programs.md": programs,
    "quickstart.md": quickstart,
    "identity.md": identity,
    "world_models.md": world_models,
    "backbones.md": backbones,
}
