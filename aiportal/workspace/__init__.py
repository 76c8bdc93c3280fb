"""The browser workspace: trame-slicer's viewer and segment editor plus AI Segment, review and export.

A thin face. Loading is :func:`aiportal.io.volumes.load_volume`, AI runs are
:class:`aiportal.segment.SegmentationJob` (polled from the server's event loop), review decisions
are :func:`aiportal.review.review_segment`, statistics and exports come from
:mod:`aiportal.export`; the page only collects input and shows results.

Start it with ``aiportal workspace`` (or ``python -m aiportal.workspace``); it listens on
127.0.0.1 by default. Rendering runs on the server; without a display VTK uses EGL with Mesa's
software renderer (llvmpipe), so no GPU is needed.
"""
