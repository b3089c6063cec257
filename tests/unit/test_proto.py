"""proto/ must match the message structs: regenerate in memory and compare file by file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from libs.common.messages import WIRE_FAMILIES

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
FIX = "proto/ is out of date with libs/common/messages: run `python scripts/gen_proto.py`"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = load_generator()
EXPECTED: dict[str, str] = GEN.render()


def test_every_wire_family_has_a_schema_file_and_nothing_else_does() -> None:
    present = {p.name for p in PROTO.glob("*.schema.json")}
    wanted = {f"{family}.schema.json" for family in WIRE_FAMILIES}

    assert set(EXPECTED) == wanted
    assert not wanted - present, f"missing {sorted(wanted - present)}; {FIX}"
    assert not present - wanted, f"no such family: {sorted(present - wanted)}; {FIX}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_schema_file_matches_the_message_structs(name: str) -> None:
    path = PROTO / name

    assert path.is_file(), f"{name} missing; {FIX}"
    assert path.read_text() == EXPECTED[name], f"{name} differs; {FIX}"


def test_schemas_are_json_schema_2020_12_with_their_definitions() -> None:
    for family in WIRE_FAMILIES:
        doc = json.loads(EXPECTED[f"{family}.schema.json"])

        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert doc["title"] == family
        assert doc["$defs"], family
        assert doc["discriminator"]["propertyName"] == "type"
        refs = [alt["$ref"].removeprefix("#/$defs/") for alt in doc["anyOf"]]
        assert set(refs) <= set(doc["$defs"]), family


def test_money_is_a_decimal_string_on_the_wire() -> None:
    fill = json.loads(EXPECTED["execution_events.schema.json"])["$defs"]["Fill"]

    for field in ("qty", "price", "fee"):
        assert fill["properties"][field] == {"type": "string", "format": "decimal"}


def test_generator_check_mode_reports_a_stale_extra_and_missing_file(tmp_path: Path) -> None:
    GEN.write(tmp_path)
    assert GEN.stale(tmp_path) == []

    (tmp_path / "signals.schema.json").write_text("{}\n")
    (tmp_path / "control.schema.json").unlink()
    (tmp_path / "retired.schema.json").write_text("{}\n")

    assert set(GEN.stale(tmp_path)) == {
        "signals.schema.json",
        "control.schema.json",
        "retired.schema.json",
    }
    GEN.write(tmp_path)
    assert GEN.stale(tmp_path) == []
