"""Timings compare raw grpc.aio with gz within 100 ms. A full collection of the cyclic garbage
collector in a long test process (everything the suite has made so far) takes about that long,
and it lands in whichever side allocates at that moment: so none runs during a comparison."""

import gc

import pytest


@pytest.fixture(autouse=True)
def no_garbage_collection_during_comparisons():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
