"""Sample data for napari's File > Open Sample menu: real photos shipped with scikit-image."""

from __future__ import annotations


def astronaut():
    """Return scikit-image's astronaut photo as an RGB image layer: [(data [512, 512, 3] uint8, kwargs)]."""
    from air_core.images import sample_image

    return [(sample_image("astronaut"), {"name": "astronaut", "rgb": True})]
