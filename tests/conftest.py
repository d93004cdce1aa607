"""Guards shared by the whole suite."""
import jax
import pytest


@pytest.fixture(autouse=True)
def x64_stays_off():
    """A test that needs float64 turns it on in ``with jax.enable_x64(True):``; it must not outlive the test.

    jax_enable_x64 changes the default dtype of every array, so a leak would
    silently turn the float32 tests after it into float64 ones.
    """
    assert not jax.config.jax_enable_x64, "jax_enable_x64 is on before this test: an earlier test leaked it"
    yield
    assert not jax.config.jax_enable_x64, (
        "this test left jax_enable_x64 on: switch it with `with jax.enable_x64(True):` so it is restored"
    )
