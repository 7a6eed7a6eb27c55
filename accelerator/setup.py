"""Build of the optional C accelerator of functions.validation (engagement_accel).

The extension is optional: where no C compiler or Python headers are at hand, the build
skips it with a warning, the package installs without it, and functions.validation takes
its pure-Python route, which gives the same answers (only slower).

The SHA-256 of the C source is compiled into the module (``engagement_accel.source_sha256``):
functions.validation uses the module only when it was built from the source beside it, so a
build left over from another version (a dependency cache, say) is never used.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "engagement_accel.c"
source_sha256 = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "engagement_accel",
            sources=[SOURCE],
            define_macros=[("SOURCE_SHA256", f'"{source_sha256}"')],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ],
)
