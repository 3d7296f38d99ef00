"""The hardware adapter: Loihi-2 fixed point, a bit-exact emulator, Lava processes, NIR.

Imports spikeprop; imports lava lazily and only in ``hardware.lava``.
"""
