"""Build step for the one compiled piece: the inspector's one-read statistics kernel.

Everything else about the package lives in pyproject.toml. The extension is optional: without a C
compiler the install still succeeds and stats mode falls back to torch reductions (same numbers, about
three times the recording overhead; ``scripts/bench.py inspect`` prints both). Without OpenMP it builds
single-threaded.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

OPENMP = ["-fopenmp"]


class BuildExt(build_ext):
    """Build with OpenMP where the compiler has it (GCC does; Apple's clang does not), else without."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:
            if OPENMP[0] not in ext.extra_compile_args:
                raise
            print(f"warning: building {ext.name} without OpenMP (single-threaded statistics)")
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a not in OPENMP]
            ext.extra_link_args = [a for a in ext.extra_link_args if a not in OPENMP]
            super().build_extension(ext)


setup(
    ext_modules=[
        Extension("pipeline.probe._channel_stats", ["pipeline/probe/_channel_stats.c"], extra_compile_args=["-O3", *OPENMP],
                  extra_link_args=OPENMP, optional=True),
    ],
    cmdclass={"build_ext": BuildExt},
)
