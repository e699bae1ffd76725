"""The composition root: the ``crmsync`` command (``app``), process supervision (``processes``)
and the demo. The only code that imports ``producers``, ``workers`` or the emulator."""
