"""A local Salesforce REST API emulator: HTTPS on loopback, real wire shapes.

Start it with ``python -m include.crm_export.emulator serve`` or, from Python,
with :class:`include.crm_export.emulator.process.EmulatorProcess`.
"""
