"""The one compiled part, skbtracer_lib/events/_rows.c (the text rows in C; the
rest is in setup.cfg). Optional: without a compiler or Python's headers the
install goes on and skbtracer makes the same rows in Python."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("skbtracer_lib.events._rows", ["skbtracer_lib/events/_rows.c"], optional=True)])
