"""dropens: is dropout a regularizer, or an ensemble of subnetworks? Measured.

Where each concept lives (see README "Map of the code"):

- ``dropens.masks``     mask distributions x structures x scaling (pure functions)
- ``dropens.layers``    the ``Dropout`` module (modes sample | member | off)
- ``dropens.control``   switch every dropout layer of a model (deterministic / mc / member)
- ``dropens.models``    backbones shared unchanged by every training method
- ``dropens.data``      LightningDataModules (offline-first)
- ``dropens.methods``   LightningModules: how a backbone is trained
- ``dropens.metrics``   calibration, diversity, magnitude, statistics over seeds
- ``dropens.results``   the run record on disk
- ``dropens.tracking``  W&B / CSV logger wiring
- ``dropens.cli``       ``dropens train | study | report``
"""

__version__ = "0.1.0"
