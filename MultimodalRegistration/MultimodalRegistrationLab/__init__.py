"""MultimodalRegistrationLab: what the team uses to build and judge the product (not shipped in the
Slicer extension). Training and its data, simulated cases with known ground truth, the evaluation
benchmarks and the wrappers of other registration tools. ``pip install -e .`` installs it for developers;
the product (``MultimodalRegistrationLib``) never imports it.
"""
