"""A local Salesforce REST API emulator: HTTPS on loopback, real wire shapes.

Start it with ``python -m devstack.emulator serve`` or, from Python,
with :class:`devstack.emulator.process.EmulatorProcess`.
"""
