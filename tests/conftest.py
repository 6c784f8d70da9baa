import os

import pyro
import pytest
import torch
from torch.distributions import Distribution

# Keep the suite fast and deterministic on a 2-core machine.
torch.set_num_threads(int(os.environ.get("PYRO_FLOWS_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed_and_clean():
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    # torch.compile, `import zuko` and some benchmarks switch distribution validation off
    # process-wide, also from module-scoped fixtures that run before this one: every test
    # starts with it on (as `import pyro` leaves it), so the checks of bad input stay on.
    Distribution.set_default_validate_args(True)
    yield
    Distribution.set_default_validate_args(True)
    pyro.clear_param_store()


@pytest.fixture
def float64():
    """Tests of exact equalities run in float64; the default dtype is restored after."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
