"""nnfuse.passes: the pass manager and the passes (importing this registers them)."""
from .manager import PASSES, PIPELINES, PassContext, PassError, Report, optimize, pipeline, register_pass, run_passes  # noqa: F401
from . import canonicalize, cleanup, fold_bn, fusion, recognize  # noqa: F401,E402  (register the passes)
from . import drop_attention, ffn_fusion, skip_layers  # noqa: F401,E402  (approximate, opt-in only)
from . import pipelines  # noqa: F401,E402  (O1-O3 presets of the passes above)
from . import quant  # noqa: F401,E402  (quantization passes; compile(quantize=...) hooks them in)
from . import precision  # noqa: F401,E402  (bf16/fp16 policy; compile(precision=...) hooks it in)
