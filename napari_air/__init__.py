"""napari plugin of the AIR toolkit (thin: every computation is a call to ``air_core``).

The npe2 manifest is ``napari.yaml`` at the repository root; ``napari_air/napari.yaml`` links to it
so that editable installs find it and wheels ship it as package data.
"""

__version__ = "0.1.0"
