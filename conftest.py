"""Doctest namespace: docstring examples may use ``torch``, ``pyro``, ``dist`` and
``pyro_flows`` without importing them, and run seeded."""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_flows


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    torch.manual_seed(0)
    doctest_namespace.update(torch=torch, pyro=pyro, dist=dist, pyro_flows=pyro_flows)
