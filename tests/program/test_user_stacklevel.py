"""Warnings made deep inside canvas-core point at the first frame outside it, and a user module
whose name merely starts with "canvas_core" (canvas_core_exp) counts as outside."""

from __future__ import annotations

import warnings

from canvas_core.errors import user_stacklevel


def _run(library_name: str, user_name: str) -> str:
    lib = {"__name__": library_name, "warnings": warnings, "user_stacklevel": user_stacklevel}
    exec(compile("def warn():\n    warnings.warn('x', UserWarning, stacklevel=user_stacklevel())\n"
                 "def inner():\n    warn()\n", "library.py", "exec"), lib)
    user = {"__name__": user_name, "inner": lib["inner"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile("inner()\n", "user.py", "exec"), user)
    return caught[0].filename


def test_the_warning_points_at_the_user_frame() -> None:
    assert _run("canvas_core.fake", "my_project") == "user.py"


def test_a_user_module_named_like_the_package_is_outside_it() -> None:
    assert _run("canvas_core.fake", "canvas_core_exp") == "user.py"
