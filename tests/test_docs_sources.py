"""docs/sources.md cannot drift from the code: its event → state tables are exactly what the
adapters' own mappings generate, every built-in adapter has a section and a table, and every
`gateway send` line it shows names a sample that exists."""

from __future__ import annotations

import re

from click.testing import CliRunner

from adapters.registry import Registry, load_registry
from adapters.samples import find_sample
from adapters.tables import BEGIN, END, state_tables_markdown
from gateway.cli import main
from tests.servers import ROOT

DOC = (ROOT / "docs" / "sources.md").read_text()
#: the source names the page uses, by adapter
SOURCE_ADAPTERS = {"worker": "standard"}


def built_ins() -> Registry:
    full = load_registry()
    registry = Registry()
    registry.adapters = {n: c for n, c in full.adapters.items() if c.__module__.startswith("adapters.")}
    return registry


def test_the_state_tables_are_the_generated_ones() -> None:
    embedded = DOC[DOC.index(BEGIN):DOC.index(END) + len(END)]
    assert embedded == state_tables_markdown(built_ins()), "regenerate with `gateway adapters --markdown`"


def test_the_command_prints_what_the_page_holds() -> None:
    out = CliRunner().invoke(main, ["adapters", "--markdown"])
    assert out.exit_code == 0
    headings = re.findall(r"^#### .*$", DOC, re.M)
    assert headings and all(h in out.output.splitlines() for h in headings)
    assert BEGIN in out.output and END in out.output


def test_every_built_in_adapter_has_a_section_and_a_table() -> None:
    for name, cls in built_ins().adapters.items():
        assert f'(`adapter = "{name}"`)' in DOC, name
        assert f"#### `{name}`" in DOC and cls.state_table(), name


def test_every_send_line_names_a_sample() -> None:
    lines = re.findall(r"gateway send ([a-z-]+) ([\w.]+)", DOC)
    assert len(lines) >= 8
    for source, event in lines:
        find_sample(SOURCE_ADAPTERS.get(source, source), event)  # KeyError when the page is wrong


def test_a_changed_mapping_changes_the_table() -> None:
    from adapters import stripe

    before, original = state_tables_markdown(built_ins()), stripe.EVENT_STATES
    stripe.EVENT_STATES = {**original, "payment_intent.partially_funded": stripe.P}  # type: ignore[misc]
    try:
        assert "`payment_intent.partially_funded` | processing" in state_tables_markdown(built_ins()) != before
    finally:
        stripe.EVENT_STATES = original  # type: ignore[misc]
