"""AIMeasure logic: RECIST 1.1 axes of segments and RECIST 1.1 response between studies."""
