import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402

# bnmf's entry points run their JAX code under ``numerics`` (full-precision matrix products on
# every backend); tests that call internal functions directly get the same arithmetic. On a CPU
# this changes nothing; on a GPU JAX would otherwise round float32 matmul operands to TF32.
jax.config.update("jax_default_matmul_precision", "highest")
