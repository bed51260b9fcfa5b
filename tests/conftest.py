import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import jax  # noqa: E402

# bnmf's entry points run their JAX code under ``numerics`` (full-precision matrix products on
# every backend); tests that call internal functions directly get the same arithmetic. On a CPU
# this changes nothing; on a GPU JAX would otherwise round float32 matmul operands to TF32.
jax.config.update("jax_default_matmul_precision", "highest")

import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _fresh_compile_caches():
    """Each test module leaves JAX's and bnmf's program caches empty behind it. A worker that
    kept every program of the modules it ran grew to ~6 GB and XLA's CPU compiler segfaulted
    (three runs out of three, in test_protocol's float64 CAVI step, after ~11 min of modules);
    the compiled-once checks of test_speed_paths work within one test, so they keep working."""
    yield
    from bnmf.inference.driver import clear_compile_cache

    clear_compile_cache()
    gc.collect()
