"""docs/settings.md lists every setting with its default: generated, and kept current."""

from __future__ import annotations

import dataclasses

from coordd.config import Settings
from tools import settings_doc


def test_the_settings_reference_is_current():
    assert settings_doc.OUT.read_text() == settings_doc.render(), "run: python3 tools/settings_doc.py"


def test_the_settings_reference_names_every_field_with_its_default():
    documented = {name: default for name, default, _ in settings_doc.rows()}
    fields = {f.name for f in dataclasses.fields(Settings) if f.init}
    assert fields <= set(documented), f"undocumented: {sorted(fields - set(documented))}"
