"""Reference models, datasets, augmentation and callable specs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradvar.errors import DataNotFoundError, InvalidArgumentError
from gradvar.zoo import (
    FASHION_MNIST_DEFAULT_DIR,
    FASHION_MNIST_ENV,
    MODELS,
    augment,
    build_model,
    load_dataset,
    mlp,
    mlp_widths,
    model_from_spec,
    resolve_callable,
)


def _linear_widths(model: nn.Module) -> list[int]:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return [linears[0].in_features] + [m.out_features for m in linears]


def test_mlp4_on_cifar_has_the_reference_widths() -> None:
    assert _linear_widths(build_model("mlp4", in_features=3072, num_classes=10)) == [
        3072, 733, 175, 41, 10,
    ]  # fmt: skip
    assert mlp_widths(4, 3072, 10) == [3072, 733, 175, 41, 10]


def test_mlp_depths_and_structure() -> None:
    logistic = build_model("mlp1", in_features=64, num_classes=10)
    assert _linear_widths(logistic) == [64, 10]
    assert not any(isinstance(m, nn.ReLU) for m in logistic.modules())
    mlp2 = build_model("mlp2", in_features=3072, num_classes=10)
    assert _linear_widths(mlp2) == [3072, 175, 10]
    assert sum(isinstance(m, nn.ReLU) for m in mlp2.modules()) == 1
    widths = mlp_widths(4, 784, 10)
    assert all(a > b for a, b in zip(widths, widths[1:]))  # strictly shrinking
    assert mlp(3, 8, 2, hidden=4).fc2.in_features == 4
    assert _linear_widths(mlp(3, 8, 2, hidden=[6, 5])) == [8, 6, 5, 2]
    with pytest.raises(InvalidArgumentError, match="2 hidden widths"):
        mlp(3, 8, 2, hidden=[6])


def test_mlp_dropout_keeps_parameter_names() -> None:
    plain, dropped = mlp(4, 64, 10), mlp(4, 64, 10, dropout=0.5)
    assert list(plain.state_dict()) == list(dropped.state_dict())
    assert sum(isinstance(m, nn.Dropout) for m in dropped.modules()) == 3
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    with pytest.raises(InvalidArgumentError, match="dropout"):
        mlp(2, 4, 2, dropout=1.0)


def test_build_model_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build_model("mlp2", seed=5, in_features=16, num_classes=3)
    b = build_model("mlp2", seed=5, in_features=16, num_classes=3)
    c = build_model("mlp2", seed=6, in_features=16, num_classes=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.fc1.weight, c.fc1.weight)
    spec = {"name": "mlp2", "seed": 5, "kwargs": {"in_features": 16, "num_classes": 3}}
    assert torch.equal(model_from_spec(spec).fc1.weight, a.fc1.weight)


def test_build_model_errors_name_the_problem() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown model 'mlp3'"):
        build_model("mlp3")
    with pytest.raises(InvalidArgumentError, match="in_feature"):
        build_model("mlp2", in_feature=3, num_classes=2)
    with pytest.raises(InvalidArgumentError, match="'name'"):
        model_from_spec({"kwargs": {}})


def test_small_cnn_and_batch_norm_flag() -> None:
    cnn = build_model("cnn", in_channels=1, num_classes=10, image_size=8)
    assert cnn(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in cnn.modules())
    bn = build_model("cnn", in_channels=1, num_classes=10, image_size=28, batch_norm=True)
    assert bn(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in bn.modules()) == 2


def _per_example_grads_match_loop(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        out = torch.func.functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0))

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for name, param in model.named_parameters():
            torch.testing.assert_close(grads[name][i], param.grad, rtol=1e-4, atol=1e-6)


def test_tiny_vit_forward_and_per_example_grads() -> None:
    vit = build_model("vit", seed=0, image_size=8, patch_size=4, dim=16, depth=1, heads=2)
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 3, 9])
    assert vit(x).shape == (3, 10)
    assert any(isinstance(m, nn.LayerNorm) for m in vit.modules())
    _per_example_grads_match_loop(vit, x, y)
    with pytest.raises(InvalidArgumentError, match="multiple of patch_size"):
        build_model("vit", image_size=8, patch_size=3)


def test_tiny_transformer_forward_and_per_example_grads() -> None:
    model = build_model("transformer", seed=0, vocab=11, seq_len=6, dim=8, classes=3, heads=2)
    tokens = torch.randint(11, (4, 6), generator=torch.Generator().manual_seed(0))
    assert model(tokens).shape == (4, 3)
    assert any(isinstance(m, nn.Embedding) for m in model.modules())
    _per_example_grads_match_loop(model, tokens, torch.tensor([0, 1, 2, 1]))
    assert set(MODELS) >= {"mlp1", "mlp2", "mlp4", "cnn", "vit"}


def test_resolve_callable_and_its_errors() -> None:
    assert resolve_callable("math:sqrt")(9.0) == 3.0
    assert resolve_callable("os.path:join")("a", "b") == str(Path("a") / "b")
    with pytest.raises(InvalidArgumentError, match="package.module:function"):
        resolve_callable("math.sqrt")
    with pytest.raises(InvalidArgumentError, match="cannot import module 'no_such_mod_x'"):
        resolve_callable("no_such_mod_x:f")
    with pytest.raises(InvalidArgumentError, match="no attribute 'sqrtt'.*sqrt"):
        resolve_callable("math:sqrtt")
    with pytest.raises(InvalidArgumentError, match="not callable"):
        resolve_callable("math:pi")


def test_digits_shape_range_split_and_determinism() -> None:
    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    x, y = train.tensors
    assert x.shape == (1500, 1, 8, 8) and test.tensors[0].shape == (297, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == 0.0 and x.max() == 1.0 and set(y.tolist()) == set(range(10))
    again = load_dataset("digits")
    assert torch.equal(again.tensors[0], x) and torch.equal(again.tensors[1], y)
    assert not torch.equal(x[:297], test.tensors[0])  # shuffled split, not the file order
    sub_a = load_dataset("digits", n=100, seed=1).tensors[0]
    sub_b = load_dataset("digits", n=100, seed=2).tensors[0]
    assert sub_a.shape == (100, 1, 8, 8) and not torch.equal(sub_a, sub_b)
    assert torch.equal(sub_a, load_dataset("digits", n=100, seed=1).tensors[0])
    with pytest.raises(InvalidArgumentError, match="split"):
        load_dataset("digits", split="val")
    with pytest.raises(InvalidArgumentError, match="n=5000"):
        load_dataset("digits", n=5000)


def _write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_parser_on_fake_idx_files(tmp_path, monkeypatch, compress: bool) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[1, 0, 0] = 0, 255
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images, compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels, compress)
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    x, y = load_dataset("fashion-mnist", split="test").tensors
    assert x.shape == (7, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    torch.testing.assert_close(x[:, 0], torch.from_numpy(images / 255.0).float())
    assert y.tolist() == labels.tolist() and x.min() == 0.0 and x.max() == 1.0
    assert load_dataset("fashion-mnist", n=3, seed=0).tensors[0].shape == (3, 1, 28, 28)


def test_fashion_mnist_missing_or_corrupt_says_how_to_fix(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(FASHION_MNIST_ENV, str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        load_dataset("fashion-mnist")
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert FASHION_MNIST_ENV in str(info.value) and str(tmp_path) in str(info.value)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
    with pytest.raises(DataNotFoundError, match="truncated"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(
    not (FASHION_MNIST_DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_mnist_from_the_debian_package(monkeypatch) -> None:
    monkeypatch.delenv(FASHION_MNIST_ENV, raising=False)
    x, y = load_dataset("fashion-mnist", split="test").tensors
    assert x.shape == (10000, 1, 28, 28) and torch.bincount(y).tolist() == [1000] * 10
    assert 0.0 <= x.min() and x.max() <= 1.0 and y[:5].tolist() == [9, 2, 1, 1, 6]


def test_synthetic_is_seeded() -> None:
    a = load_dataset("synthetic", seed=3, num_features=5, num_classes=3, size=200)
    b = load_dataset("synthetic", seed=3, num_features=5, num_classes=3, size=200)
    c = load_dataset("synthetic", seed=4, num_features=5, num_classes=3, size=200)
    test = load_dataset("synthetic", split="test", seed=3, num_features=5, num_classes=3, size=200)
    assert a.tensors[0].shape == (200, 5) and a.tensors[1].dtype == torch.int64
    assert set(a.tensors[1].tolist()) == {0, 1, 2}
    assert torch.equal(a.tensors[0], b.tensors[0]) and not torch.equal(a.tensors[0], c.tensors[0])
    assert not torch.equal(a.tensors[0], test.tensors[0])


def test_load_dataset_module_spec_and_errors(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_data_mod.py").write_text(
        "import torch\n"
        "def load(split, n, seed, size=4):\n"
        "    return torch.full((size, 2), float(seed)), torch.zeros(size, dtype=torch.long)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = load_dataset("my_data_mod:load", seed=2, size=3)
    assert len(data) == 3 and data[0][0].tolist() == [2.0, 2.0]
    with pytest.raises(InvalidArgumentError, match="unknown dataset 'digitz'"):
        load_dataset("digitz")


def test_augment_reproduces_with_the_same_seed() -> None:
    x = torch.rand(16, 3, 8, 8)
    one = augment(x, torch.Generator().manual_seed(7), flip=True)
    two = augment(x, torch.Generator().manual_seed(7), flip=True)
    other = augment(x, torch.Generator().manual_seed(8), flip=True)
    assert one.shape == x.shape and torch.equal(one, two) and not torch.equal(one, other)
    assert torch.equal(augment(x, torch.Generator(), max_shift=0), x)


def test_augment_shifts_by_at_most_max_shift() -> None:
    x = torch.zeros(64, 1, 9, 9)
    x[:, 0, 4, 4] = 1.0
    out = augment(x, torch.Generator().manual_seed(0), max_shift=2)
    assert torch.equal(out.sum(dim=(1, 2, 3)), torch.ones(64))  # the pixel stays in frame
    rows, cols = out[:, 0].nonzero()[:, 1], out[:, 0].nonzero()[:, 2]
    assert (rows - 4).abs().max() <= 2 and (cols - 4).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 5  # shifts actually vary
    flipped = augment(x[:, :, :, :], torch.Generator().manual_seed(0), max_shift=0, flip=True)
    moved = flipped[:, 0, 4].argmax(dim=1)
    assert set(moved.tolist()) == {4}  # the centre column is its own mirror image
    edge = torch.zeros(32, 1, 3, 3)
    edge[:, 0, 0, 0] = 1.0
    mirrored = augment(edge, torch.Generator().manual_seed(0), max_shift=0, flip=True)
    assert set(mirrored[:, 0, 0].argmax(dim=1).tolist()) == {0, 2}


def test_tiny_convnext_blocks_shapes_and_per_example_grads() -> None:
    from gradvar.recipe import param_groups
    from gradvar.zoo.convnext import ConvNeXtBlock

    net = build_model("convnext", seed=0, dims=(8, 16), depths=(1, 1), layer_scale=0.5)
    x, y = torch.rand(3, 1, 12, 12), torch.tensor([0, 3, 9])
    assert net(x).shape == (3, 10)
    assert "stages.1.blocks.0.dwconv.weight" in dict(net.named_parameters())
    dw = net.stages[1].blocks[0].dwconv
    assert dw.groups == 16 and dw.kernel_size == (7, 7)
    # the block is x + γ·MLP(LN(dwconv(x))) on channels-last: rebuild it by hand
    block = ConvNeXtBlock(4, layer_scale=0.3)
    z = torch.randn(2, 4, 5, 5)
    inner = torch.nn.functional.conv2d(z, block.dwconv.weight, block.dwconv.bias, padding=3,
                                       groups=4).permute(0, 2, 3, 1)  # fmt: skip
    mlp_out = block.fc2(torch.nn.functional.gelu(block.fc1(block.norm(inner))))
    assert torch.allclose(block(z), z + (0.3 * mlp_out).permute(0, 3, 1, 2), atol=1e-6)
    _per_example_grads_match_loop(net, x, y)
    # the official recipe decays only conv/linear weights (γ and norms are 1-D)
    decayed = param_groups(net, 0.05)[0]["param_names"]
    assert all(n.endswith(("conv.weight", "fc1.weight", "fc2.weight", "head.weight")) or
               n.endswith(".1.weight") for n in decayed)  # fmt: skip
    assert build_model("vit", image_size=8, patch_size=4, dim=8, heads=2).no_weight_decay() == {
        "pos"
    }
    with pytest.raises(InvalidArgumentError, match="too small"):
        build_model("convnext", image_size=8, stem=4, dims=(4, 4, 4), depths=(1, 1, 1))
