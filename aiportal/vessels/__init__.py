"""Vessel analysis: centrelines, cross-sections perpendicular to them, maximum diameters."""
