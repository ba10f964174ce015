"""medpt: domain-adaptive continued pretraining of causal LLMs on medical text with LoRA."""

__version__ = "0.1.0"

import logging as _logging

# bitsandbytes (imported by transformers when installed) tries to fetch a CPU kernel from the hub at import and
# logs a warning when it cannot; medpt never downloads code at run time, so that warning is noise.
_logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(_logging.ERROR)
