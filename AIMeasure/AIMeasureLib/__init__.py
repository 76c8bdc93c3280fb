"""AIMeasure's panels (one file per section), kept out of AIMeasure.py so the module file stays small."""
