"""napari plugin of the AIR toolkit (thin: every computation is a call to ``air_core``).

The npe2 manifest is ``napari.yaml`` at the repository root; ``napari_air/napari.yaml`` links to it
so that editable installs find it and wheels ship it as package data.

Modules:

* ``_widgets``: the dock widgets (Layers > Filter: "Reconstruct with AIR", "Fit Gaussians";
  Layers > Transform: "Render at scale", "Upsample with JBU"; all also under Plugins). Long work runs in
  napari ``thread_worker`` generators with progress in the activity dock and a Cancel button.
* ``_io``: reader (``.npz`` Gaussian files, ``.air`` bitstreams) and writers (both formats).
* ``_layers``: the 2D plane a job works on, the geometry outputs copy, results as layer data.
* ``_sample_data``: File > Open Sample.
"""

__version__ = "0.1.0"
