"""The emulator stands alone: it imports nothing from the rest of batchpipe, and its own
price table (batchpipe/emulator/catalog.py) agrees with batchpipe's (prices.yaml) on the
published examples and on every model. Fast: no processes."""

from __future__ import annotations

import ast
import itertools
from dataclasses import astuple
from pathlib import Path

import pytest

import batchpipe.emulator
from batchpipe import models, pricing
from batchpipe.emulator import catalog, ledger
from batchpipe.emulator.models import MODELS as SERVED

EMULATOR_DIR = Path(batchpipe.emulator.__file__).parent
PRICE_FIELDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")


def _outside_imports(source: str, depth: int = 0) -> list[str]:
    """Modules of batchpipe outside batchpipe.emulator that this source imports: at the
    top, inside functions (lazy imports), relatively, or through import_module/__import__.
    `depth` is how many packages below batchpipe.emulator the file sits."""
    found: list[str] = []

    def check(name: str) -> None:
        if name.split(".")[0] == "batchpipe" and not (
            name == "batchpipe.emulator" or name.startswith("batchpipe.emulator.")
        ):
            found.append(name)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                check(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from batchpipe.emulator (plus depth) upward
                package = ["batchpipe", "emulator", *["sub"] * depth]
                if node.level > len(package) - 1:
                    found.append("." * node.level + (node.module or ""))
                    continue
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "batchpipe":  # from batchpipe import x: x is the module
                for alias in node.names:
                    check(f"batchpipe.{alias.name}")
            else:
                check(module)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if (
                name in {"import_module", "__import__", "files"}
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                check(first.value)
    return found


def test_the_import_check_catches_what_it_should() -> None:
    assert _outside_imports("from batchpipe import pricing") == ["batchpipe.pricing"]
    assert _outside_imports("def f():\n    import batchpipe.warehouse\n") == ["batchpipe.warehouse"]
    assert _outside_imports("from ..errors import BatchApiError") == ["..errors"]
    assert _outside_imports("resources.files('batchpipe')") == ["batchpipe"]
    assert _outside_imports("importlib.import_module('batchpipe.models')") == ["batchpipe.models"]
    assert _outside_imports("from batchpipe.emulator import catalog\nfrom . import wire") == []
    assert _outside_imports("from batchpipe import emulator") == []


def test_the_emulator_imports_nothing_from_the_rest_of_batchpipe() -> None:
    files = sorted(EMULATOR_DIR.rglob("*.py"))
    assert len(files) > 10
    outside = {
        str(path.relative_to(EMULATOR_DIR)): found
        for path in files
        if (
            found := _outside_imports(
                path.read_text(encoding="utf-8"), len(path.relative_to(EMULATOR_DIR).parts) - 1
            )
        )
    }
    assert outside == {}


# The batch guide's example: a Haiku 4.5 job that costs $95 at standard prices costs
# $47.50 as a batch. The research notes do not keep its token counts, so these are ones
# that cost exactly $95 at Haiku 4.5's list prices ($1 in / $5 out per million).
HAIKU_4_5_JOB = {"input_tokens": 20_000_000, "output_tokens": 15_000_000}
PUBLISHED = [
    pytest.param("claude-haiku-4-5", HAIKU_4_5_JOB, 95.00, 47.50, id="haiku-4-5-$95"),
    pytest.param("claude-haiku-4-5-20251001", HAIKU_4_5_JOB, 95.00, 47.50, id="haiku-dated"),
    pytest.param("claude-sonnet-4-6", {"input_tokens": 1_000_000}, 3.00, 1.50, id="sonnet-in"),
    pytest.param("claude-sonnet-4-6", {"output_tokens": 1_000_000}, 15.00, 7.50, id="sonnet-out"),
    pytest.param(
        "claude-sonnet-4-6",
        {"input_tokens": 2_000_000, "output_tokens": 400_000},
        12.00,
        6.00,
        id="sonnet-mixed",
    ),
]


@pytest.mark.parametrize(("model_id", "usage", "standard", "batch"), PUBLISHED)
def test_published_examples_in_both_tables(
    model_id: str, usage: dict, standard: float, batch: float
) -> None:
    assert ledger.cost_usd(model_id, usage, batch=False) == pytest.approx(standard, abs=1e-9)
    assert ledger.cost_usd(model_id, usage, batch=True) == pytest.approx(batch, abs=1e-9)
    assert ledger.line_cost(model_id, usage) == pytest.approx(batch, abs=1e-9)
    assert pricing.cost_usd(model_id, usage, batch=False) == pytest.approx(standard, abs=1e-9)
    assert pricing.cost_usd(model_id, usage, batch=True) == pytest.approx(batch, abs=1e-9)


def test_published_list_prices_and_batch_discount() -> None:
    assert catalog.BATCH_DISCOUNT == pricing.price_list().batch_discount == 0.5
    for model_id, (per_in, per_out) in {
        "claude-haiku-4-5": (1.00, 5.00),
        "claude-sonnet-4-6": (3.00, 15.00),
    }.items():
        mine = catalog.price_for(model_id, 0)
        theirs = pricing.price(model_id)
        assert mine is not None
        assert (mine.input, mine.output) == (theirs.input, theirs.output) == (per_in, per_out)


def test_both_tables_cover_the_same_models_at_the_same_prices() -> None:
    table = models.catalog()
    assert set(catalog.MODELS) == set(table.models)
    assert set(table.retired) == catalog.RETIRED
    assert table.aliases == catalog.ALIASES
    for model_id, entry in catalog.MODELS.items():
        info = table.models[model_id]
        assert astuple(entry.price) == tuple(getattr(info.prices, f) for f in PRICE_FIELDS)
        assert [(t.above_prompt_tokens, *astuple(t.price)) for t in entry.tiers] == [
            (t.above_prompt_tokens, *(getattr(t, f) for f in PRICE_FIELDS)) for t in info.tiers
        ], model_id
        # the limits the emulator enforces, as batchpipe validate checks them
        assert entry.max_output == info.max_output, model_id
        assert entry.output_300k == (info.max_output_batch_beta is not None), model_id
        assert entry.always_thinks == info.always_thinks, model_id
        assert entry.adaptive_only == ("manual_thinking" in info.refuses), model_id
    # every priced id and alias is served, and everything served is priced or retired
    assert set(SERVED) == set(catalog.MODELS) | set(catalog.ALIASES) | catalog.RETIRED


def _usages() -> list[dict]:
    """Usage records across tier bounds, cache splits and missing fields."""
    usages: list[dict] = [{}]
    for inp, out, writes, reads, hour in itertools.product(
        [0, 7, 99_999, 100_000, 150_001],
        [0, 13, 5_000],
        [None, 300, 2_000_000],
        [None, 17],
        [0, 100],
    ):
        usage: dict = {"input_tokens": inp, "output_tokens": out, "cache_read_input_tokens": reads}
        if writes is not None:
            usage["cache_creation_input_tokens"] = writes
            usage["cache_creation"] = {"ephemeral_1h_input_tokens": hour}
        usages.append(usage)
    usages.append(
        {"input_tokens": 10, "ephemeral_1h_input_tokens": 5, "cache_creation_input_tokens": 9}
    )
    usages.append(
        {"cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 2}}
    )
    return usages


@pytest.mark.parametrize("model_id", sorted(SERVED))
def test_both_arithmetics_bill_every_model_alike(model_id: str) -> None:
    for usage, batch in itertools.product(_usages(), (True, False)):
        try:
            theirs: float | None = pricing.cost_usd(model_id, usage, batch=batch)
        except ValueError:  # retired: batchpipe refuses it, the ledger does not charge it
            theirs = None
        assert ledger.cost_usd(model_id, usage, batch=batch) == theirs, (usage, batch)
