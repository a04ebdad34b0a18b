import pytest

from tests.csrc import emulator


@pytest.fixture(scope="session")
def emulate(tmp_path_factory):
    """The host emulation of the kernels, compiled afresh for this test session."""
    if emulator.compiler() is None:
        pytest.skip("no C++ compiler (g++/c++/clang++) on PATH")
    return emulator.Emulator(emulator.build(tmp_path_factory.mktemp("emulate")))
