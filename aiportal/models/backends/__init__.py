"""Built-in backends; each module declares its catalog entry next to its ``run``.

Importing a backend module loads no model library (torch, nnU-Net, MONAI...): those are imported
inside ``run``, in the child process of the model's environment (:mod:`aiportal.models.envs`).
"""

from __future__ import annotations

from aiportal.errors import ModelError
from aiportal.models.catalog import BackendRef, Catalog


def register_builtin_models(catalog: Catalog) -> None:
    from aiportal.models.backends import (
        classic_ct,
        deepbet,
        hdbet,
        litemedsam,
        monai_bundle,
        nnunet,
        totalsegmentator,
    )

    catalog.register(classic_ct.ENTRY, classic_ct.ClassicCTBackend)
    catalog.register(litemedsam.ENTRY, litemedsam.LiteMedSAMBackend)
    catalog.register(deepbet.ENTRY, deepbet.DeepbetBackend)
    catalog.register(hdbet.ENTRY, hdbet.HdBetBackend)
    try:  # TotalSegmentator's label tables come from its installed package
        for entry, backend in totalsegmentator.entries():
            catalog.register(entry, backend)
    except (ImportError, ModelError):
        pass  # not installed: its models are not listed (`pip install TotalSegmentator` lists them)
    catalog.add_source(nnunet.SOURCE_PREFIX, nnunet.resolve_source,
                       "a trained nnU-Net v2 results folder (Dataset###_Name/Trainer__Plans__Configuration)")
    catalog.add_source("monai", lambda folder: (monai_bundle.entry_from_bundle(folder),
                                                BackendRef.of(monai_bundle.MonaiBundleBackend, folder)),
                       "a MONAI bundle folder (configs/inference.json, models/model.pt)")
