"""AISegmentPortal's panels (one file per section), kept out of AISegmentPortal.py so the module file stays small."""
