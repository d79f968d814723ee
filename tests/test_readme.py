"""The README's library example, run exactly as written."""
import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def library_example():
    section = README.read_text().split("## As a library", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_library_example_trains_scores_saves_and_reloads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = library_example()
    assert "LayerwiseClassifier" in code and len(code.strip().splitlines()) <= 10
    exec(compile(code, str(README), "exec"), {})
    score, predictions = capsys.readouterr().out.strip().splitlines()
    assert float(score) > 0.98  # patch bags on MNIST
    assert (tmp_path / "mnist-patchbag.npz").is_file() and len(predictions.strip("[]").split()) == 5
