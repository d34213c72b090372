"""Where the GPU path puts things, checked without a GPU."""

from learner.train import rank_device


def test_each_nccl_rank_trains_on_its_own_gpu():
    assert str(rank_device("nccl", {"LOCAL_RANK": "3"})) == "cuda:3"
    assert str(rank_device("nccl", {})) == "cuda:0"
    assert str(rank_device("gloo", {"LOCAL_RANK": "3"})) == "cpu"
