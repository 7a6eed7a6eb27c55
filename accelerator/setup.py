"""Build of the optional C accelerator of functions.validation (engagement_accel).

The extension is optional: where no C compiler or Python headers are at hand, the build
skips it with a warning, the package installs without it, and functions.validation takes
its pure-Python route, which gives the same answers (only slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "engagement_accel",
            sources=["engagement_accel.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ],
)
