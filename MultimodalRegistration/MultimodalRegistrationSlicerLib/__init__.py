"""Slicer-side helpers of the MultimodalRegistration module (``MultimodalRegistration.py``).

The module itself holds only the template's classes (Module, ParameterNode, Widget, a thin Logic,
Test); what they use lives here. Two kinds of files:

* Slicer-free (standard library; numpy imported lazily), unit-tested with pytest outside Slicer:
  :mod:`.command` (the ``mmreg register`` command line and the panel's choices), :mod:`.process` (the
  non-blocking child process and its progress), :mod:`.results` (checks and summaries of a run's
  outputs, the self-test's metrics), :mod:`.labelmaps` (label maps on their image's grid),
  :mod:`.requirements` (the core's Python packages: which are missing), :mod:`.task` (one run's state);
* Slicer-side (import ``slicer``; run inside Slicer, or against Testing/slicer/fake_slicer.py):
  :mod:`.scene` (export of the inputs, import of the results), :mod:`.dependencies` (installing the
  packages), :mod:`.sampledata` (the bundled sample case in the Sample Data module).

The registration itself never runs in Slicer's process: the Logic starts the core
(``MultimodalRegistrationLib``) as ``PythonSlicer -m MultimodalRegistrationLib.cli register ...``. From
the core, this package imports only :mod:`MultimodalRegistrationLib.contract` (standard library).
This file imports nothing, so the Slicer-free modules import without Slicer.
"""
