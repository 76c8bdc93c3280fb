"""Model weights: install from the publisher, air-gapped bundles, verification, and the doctor."""
