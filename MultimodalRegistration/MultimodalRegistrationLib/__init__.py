"""MultimodalRegistrationLib: the pure-Python core of the MultimodalRegistration extension.

Registers a coronal contrast-enhanced T1 stack to an axial T2 stack of the same patient and
carries label maps across. No Slicer, VTK or Qt imports live here: the Slicer module only
converts nodes to and from this package (see DESIGN.md).
"""

__version__ = "0.1.0"
