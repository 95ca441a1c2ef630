"""nnfuse.passes: the pass manager and the passes (importing this registers them)."""
from .manager import PASSES, PIPELINES, PassContext, PassError, Report, optimize, pipeline, register_pass, run_passes  # noqa: F401
