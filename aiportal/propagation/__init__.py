"""Propagation of box-prompted 2D models to 3D, slice by slice (see :mod:`aiportal.propagation.propagate`)."""
