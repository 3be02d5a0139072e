"""PyTorch support (skipped where torch is not installed): tensors of every torch dtype go in and
come back exactly, get_torch never hands out writable views of stored bytes, and load_into
fills a module."""

import numpy as np
import pytest

import neurstore

torch = pytest.importorskip("torch")

TORCH_DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.complex64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
] + [getattr(torch, n) for n in ("uint16", "uint32", "uint64", "float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)]


def sample(dtype, shape=(5, 7), seed=0):
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, generator=g, dtype=dtype)
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=g) * 4).to(dtype)
    info = torch.iinfo(dtype)
    low, high = max(info.min, -1000), min(info.max, 1000)
    return torch.randint(low, high, shape, generator=g, dtype=torch.int64).to(dtype)


def raw(t):
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def test_every_torch_dtype_round_trips(store):
    tensors = {str(d).replace("torch.", ""): sample(d, seed=i) for i, d in enumerate(TORCH_DTYPES)}
    store.put("m", tensors)
    got = store.get_torch("m")
    assert list(got) == list(tensors)
    for name, want in tensors.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, name
        assert raw(got[name]) == raw(want), name


def test_numpy_and_torch_inputs_dedup(store):
    t = torch.randn(32, 32)
    store.put("torch", {"w": t})
    report = store.put("numpy", {"w": t.numpy()})
    assert all(r["deduplicated"] for r in report["tensor_reports"])


def test_views_strides_and_special_tensors(store):
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    tensors = {
        "transposed": base.t(),
        "sliced": base[1:5:2, ::3],
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "conj": torch.randn(3, dtype=torch.complex64).conj(),
        "grad": torch.ones(3, requires_grad=True) * 2,
    }
    store.put("m", tensors)
    got = store.get_torch("m")
    for name, want in tensors.items():
        want = want.detach().resolve_conj() if want.is_complex() else want.detach()
        assert torch.equal(got[name], want), name


def test_get_torch_copies_stored_bytes(store):
    noise = torch.randint(0, 256, (1 << 14,), dtype=torch.uint8)
    store.put("m", {"noise": noise})
    assert store.info("m")["tensors"][0]["codec"] == "raw"
    got = store.get_torch("m")["noise"]
    got += 1  # writable: a copy, not the read-only mapping
    assert torch.equal(store.get_torch("m")["noise"], noise)


def test_load_into_a_module(store):
    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    store.put("mlp", source.state_dict())
    target = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    result = target.load_state_dict(target.state_dict())  # what "all keys matched" looks like
    assert store.load_into(target, "mlp") == result
    x = torch.randn(4, 16)
    assert torch.equal(source(x), target(x))
    # Loading did not alias the store's memory: the module's parameters are its own.
    with torch.no_grad():
        target[0].weight.add_(1)
    assert torch.equal(store.get_torch("mlp")["0.weight"], source[0].weight.detach())


def test_load_into_reports_key_mismatches(store):
    store.put("m", {"0.weight": torch.zeros(2, 2)})
    module = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError):
        store.load_into(module, "m")
    result = store.load_into(module, "m", strict=False)
    assert result.missing_keys == ["0.bias"]


def test_bounded_mode_from_torch(store):
    base = torch.randn(128, 128)
    store.put("base", {"w": base})
    tuned = base + 1e-3 * torch.randn(128, 128)
    store.put("tuned", {"w": tuned}, tolerance=1e-4)
    got = store.get_torch("tuned")["w"]
    assert (got - tuned).abs().max().item() <= 1e-4


def test_unsupported_torch_tensors(store):
    with pytest.raises(neurstore.InvalidInput, match="sparse"):
        store.put("m", {"w": torch.eye(3).to_sparse()})
    with pytest.raises(neurstore.InvalidInput, match="meta"):
        store.put("m", {"w": torch.empty(3, device="meta")})
    with pytest.raises(neurstore.InvalidInput, match="no safetensors equivalent"):
        store.put("m", {"w": torch.zeros(3, dtype=torch.complex128)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_tensors(store):
    t = torch.randn(64, 64, device="cuda")
    store.put("m", {"w": t})
    got = store.get_torch("m", device="cuda")["w"]
    assert got.device.type == "cuda" and torch.equal(got, t)
    module = torch.nn.Linear(64, 64).cuda()
    store.put("lin", module.state_dict())
    other = torch.nn.Linear(64, 64).cuda()
    store.load_into(other, "lin")
    assert torch.equal(other.weight, module.weight)


def test_numpy_view_of_torch_bf16_matches_ml_dtypes(store):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    t = torch.randn(10).to(torch.bfloat16)
    store.put("m", {"w": t})
    got = store.get("m")["w"]
    assert got.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got.astype(np.float32), t.float().numpy())
