"""Built-in backends; each module declares its catalog entry next to its ``run``."""

from __future__ import annotations

from aiportal.models.catalog import Catalog


def register_builtin_models(catalog: Catalog) -> None:
    from aiportal.models.backends import classic_ct

    catalog.register(classic_ct.ENTRY, classic_ct.ClassicCTBackend)
