"""The cache key: same computation, same key; anything that runs differently, not."""

from __future__ import annotations

import copy
from typing import Any

import nbformat

from noteburst.domain.cache import cache_key


def make(*sources: str) -> dict[str, Any]:
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# Title")]
        + [nbformat.v4.new_code_cell(source) for source in sources]
    )
    data: dict[str, Any] = nbformat.from_dict(nb)
    return data


def key(nb: dict[str, Any], **overrides: Any) -> str:
    options: dict[str, Any] = {
        "parameters": {"a": 1, "b": [1, 2]},
        "kernel_name": "python3",
        "environment": "w_2026_47",
        "owner": "alice",
    }
    options.update(overrides)
    return cache_key(nb, **options)


def test_what_does_not_run_does_not_matter() -> None:
    nb = make("x = 1", "print(x)")
    resaved = copy.deepcopy(nb)
    resaved["cells"][0]["source"] = "# Another title"
    resaved["cells"][1]["id"] = "other-id"
    resaved["cells"][1]["outputs"] = [
        {"output_type": "stream", "name": "stdout", "text": "1"}
    ]
    resaved["cells"][2]["source"] = ["print", "(x)"]  # lines on disk
    resaved["metadata"]["author"] = "someone"
    assert key(resaved) == key(nb)
    assert key(nb, parameters={"b": [1, 2], "a": 1}) == key(nb)  # order
    assert key(nb, parameters=None) == key(nb, parameters={})


def test_what_runs_differently_does() -> None:
    nb = make("x = 1", "print(x)")
    base = key(nb)
    assert key(make("x = 2", "print(x)")) != base
    assert key(make("print(x)", "x = 1")) != base  # order of cells
    assert key(nb, parameters={"a": 1.0, "b": [1, 2]}) != base  # 1 vs 1.0
    assert key(nb, parameters={"a": "1", "b": [1, 2]}) != base
    assert key(nb, kernel_name="python3.12") != base
    assert key(nb, environment="w_2026_48") != base
    assert key(nb, owner="bob") != base  # each user has a cache of their own
    assert len(base) == 64
