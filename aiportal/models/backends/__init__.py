"""Built-in backends; each module declares its catalog entry next to its ``run``.

Importing a backend module loads no model library (torch, nnU-Net, MONAI...): those are imported
inside ``run``, in the child process of the model's environment (:mod:`aiportal.models.envs`).
"""

from __future__ import annotations

from aiportal.models.catalog import BackendRef, Catalog


def register_builtin_models(catalog: Catalog) -> None:
    from aiportal.models.backends import classic_ct, deepbet, monai_bundle

    catalog.register(classic_ct.ENTRY, classic_ct.ClassicCTBackend)
    catalog.register(deepbet.ENTRY, deepbet.DeepbetBackend)
    catalog.add_source("monai", lambda folder: (monai_bundle.entry_from_bundle(folder),
                                                BackendRef.of(monai_bundle.MonaiBundleBackend, folder)),
                       "a MONAI bundle folder (configs/inference.json, models/model.pt)")
