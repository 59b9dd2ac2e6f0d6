"""The model card's quality bars, on the bundled models (slow: run with `python -m pytest -m slow`)."""
import pytest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["uci-digits", "mnist-5k"])
def test_teacher_accuracy_bar(name):
    from adaptive_dd.demo.quality import teacher_accuracy

    assert teacher_accuracy(name) >= 0.97


def test_backbone_pure_generation_bar():
    from adaptive_dd.backends import create_backend
    from adaptive_dd.demo.quality import pure_generation
    from adaptive_dd.fidelity import load_teacher

    assert max(pure_generation(create_backend("bundled"), load_teacher("mnist-5k"), 20, 50).values()) >= 0.95
