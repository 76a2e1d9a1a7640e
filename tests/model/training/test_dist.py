"""Picking the training device: 'cuda' without an index is this process's GPU (the local rank)."""
import pytest

torch = pytest.importorskip("torch", reason="needs the model extra: pip install 'x2i[model]'")

from x2i.model.training import dist as xdist  # noqa: E402


@pytest.mark.parametrize("local_rank", ["0", "3"])
def test_cuda_without_index_is_the_local_rank(monkeypatch, local_rank):
    """On the H200, `--set device=cuda` failed inside torch.cuda.set_device('cuda'): it needs an index. CUDA is
    faked here (the call is what matters), so this runs on CPU machines too."""
    chosen = []
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: chosen.append(torch.device(dev)))
    info = xdist.init_distributed("none", None, "cuda")
    assert chosen == [torch.device("cuda", int(local_rank))]
    assert info.device == torch.device("cuda", int(local_rank))
