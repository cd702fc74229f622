"""The README's worked example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_probe_and_per_sample_grads_examples_run() -> None:
    blocks = _python_blocks()
    namespace: dict = {}
    exec(blocks[0], namespace)  # noqa: S102 - the README's first example, verbatim
    table = namespace["result"].table()
    assert "alpha_star_mean" in table.columns and "__all__" in table.index
    exec(blocks[1], namespace)  # noqa: S102
    assert tuple(namespace["grads"]["fc1.weight"].shape) == (512, 25, 64)


def test_alpha_svrg_example_runs() -> None:
    import torch
    import torch.nn.functional as F

    from gradvar.zoo import build_model, load_dataset

    x, y = load_dataset("digits", n=256).tensors
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    model = build_model("mlp2", in_features=64, num_classes=10, seed=0)
    namespace = {"model": model, "loader": loader, "epochs": 2, "torch": torch, "F": F}
    exec("import gradvar\n" + _python_blocks()[3], namespace)  # noqa: S102
    assert namespace["opt"].state_dict()["state"] is not None


def test_user_rule_example_runs_and_is_exact() -> None:
    import torch
    import torch.nn.functional as F

    from gradvar import Probe, per_sample_grads
    from gradvar.grads.rules._base import _USER

    class Scale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.s = torch.nn.Parameter(torch.linspace(0.5, 1.5, 4))

        def forward(self, x):
            return x * self.s

    block = next(b for b in _python_blocks() if "class ScaleRule" in b)
    try:
        exec(block, {"Scale": Scale})  # noqa: S102 - the README's rule example, verbatim
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), Scale(), torch.nn.Tanh(),
                                    torch.nn.Linear(4, 2)).double()  # fmt: skip
        x, y = torch.randn(9, 3, dtype=torch.float64), torch.randint(0, 2, (9,))
        result = Probe(model, F.cross_entropy).run((x, y))
        assert result.config["routes"]["1.s"] == "scale"
        rows = per_sample_grads(model, x, y, F.cross_entropy, rules=False)["1.s"]
        assert (
            abs(result.value("m2_total_variance", "1.s") - float(rows.var(0, False).sum())) < 1e-12
        )
    finally:
        _USER.clear()


def test_readme_metric_table_lists_every_recorded_metric() -> None:
    from gradvar.records import METRICS

    text = README.read_text()
    table = text[text.index("| metric | definition |") : text.index("Statistics are additive")]
    missing = [metric for metric in METRICS if f"`{metric}`" not in table]
    assert not missing, f"README metric table lacks {missing}"
