"""The communication-volume model against the ZeRO paper's figures (2Ψ, 2Ψ, 2Ψ, 3Ψ)."""

import pytest

from eeg2im_scale.bench.comm import bytes_sent_per_rank, comm_seconds


@pytest.mark.parametrize("scheme, multiple", [("ddp", 2), ("zero1", 2), ("zero2", 2), ("zero3", 3)])
def test_volumes_match_the_zero_paper_in_the_large_world_limit(scheme, multiple):
    psi = 1_000_000 * 2  # one million bf16 parameters
    sent = bytes_sent_per_rank(1_000_000, scheme, world_size=10**6)
    assert sent == pytest.approx(multiple * psi, rel=1e-5)


def test_ring_factor_and_gradient_accumulation():
    assert bytes_sent_per_rank(1000, "ddp", world_size=1) == 0  # nothing to exchange alone
    assert bytes_sent_per_rank(1000, "ddp", world_size=4) == pytest.approx(2 * 2000 * 3 / 4)
    assert bytes_sent_per_rank(1000, "ddp", 4, grad_accum=8) == bytes_sent_per_rank(1000, "ddp", 4)
    assert bytes_sent_per_rank(1000, "zero2", 4, grad_accum=3) == pytest.approx((3 + 1) * 2000 * 3 / 4)
    assert bytes_sent_per_rank(1000, "zero3", 4, grad_accum=3) == pytest.approx(9 * 2000 * 3 / 4)
    assert comm_seconds(10**9, "ddp", 2, bandwidth_gbs=50) == pytest.approx(2 * 2e9 / 2 / 50e9)
    with pytest.raises(ValueError, match="zero3"):
        bytes_sent_per_rank(1, "fsdp", 2)
