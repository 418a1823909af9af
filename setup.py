"""The one compiled part, skbtracer_lib/events/_rows (the text rows in C; the
rest is in setup.cfg). Optional: without a compiler or Python's headers the
install goes on and skbtracer makes the same rows in Python."""

from setuptools import Extension, setup

_ROWS = ["skbtracer_lib/events/_rows.c", "skbtracer_lib/events/_rows_spec.c",
         "skbtracer_lib/events/_rows_text.c"]

setup(ext_modules=[Extension("skbtracer_lib.events._rows", _ROWS,
                             depends=["skbtracer_lib/events/_rows.h"], optional=True)])
