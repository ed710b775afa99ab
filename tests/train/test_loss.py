"""Chunked cross-entropy: value and gradients equal the full-logits F.cross_entropy; nothing
of the logits' size is kept for the backward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from homellm.train.loss import IGNORE_INDEX, chunked_cross_entropy, logits_bytes

B, T, H, V = 3, 37, 16, 101      # 111 positions: chunks of 16 leave a ragged last one


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen, dtype=torch.float64).float()
    weight = (torch.randn(V, H, generator=gen, dtype=torch.float64) * 0.3).float()
    targets = torch.randint(0, V, (B, T), generator=gen)
    mask = torch.rand(B, T, generator=gen) > 0.3
    return hidden, weight, targets, mask


def _grads(fn, hidden: torch.Tensor, weight: torch.Tensor):
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss_sum, n_tokens = fn(h, w)
    (loss_sum / n_tokens).backward()
    return loss_sum.detach(), int(n_tokens), h.grad, w.grad


def _reference(targets: torch.Tensor, mask: torch.Tensor | None):
    def fn(h: torch.Tensor, w: torch.Tensor):
        t = targets if mask is None else targets.masked_fill(~mask, IGNORE_INDEX)
        logits = (h @ w.T).reshape(-1, V)
        loss = F.cross_entropy(logits, t.reshape(-1), ignore_index=IGNORE_INDEX,
                               reduction="sum")
        return loss, (t != IGNORE_INDEX).sum()
    return fn


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("chunk", [16, 111, 4096])
def test_value_and_gradients_match_full_logits(use_mask: bool, chunk: int) -> None:
    hidden, weight, targets, mask = _inputs()
    targets[0, :5] = IGNORE_INDEX
    m = mask if use_mask else None
    ref = _grads(_reference(targets, m), hidden, weight)
    got = _grads(lambda h, w: chunked_cross_entropy(h, w, targets, m, chunk_tokens=chunk),
                 hidden, weight)
    assert got[1] == ref[1]
    expected_n = int(((targets != IGNORE_INDEX) & (mask if use_mask else True)).sum())
    assert got[1] == expected_n
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[3], ref[3], rtol=1e-5, atol=1e-5)


def test_mean_is_sum_over_count_and_matches_mean_reduction() -> None:
    hidden, weight, targets, mask = _inputs(1)
    loss_sum, n_tokens = chunked_cross_entropy(hidden, weight, targets, mask, chunk_tokens=7)
    t = targets.masked_fill(~mask, IGNORE_INDEX).reshape(-1)
    mean = F.cross_entropy((hidden @ weight.T).reshape(-1, V), t)   # ignore_index -100
    torch.testing.assert_close(loss_sum / n_tokens, mean, rtol=1e-5, atol=1e-6)
    assert n_tokens.dtype == torch.int64


def test_integer_mask_and_all_masked() -> None:
    hidden, weight, targets, mask = _inputs(2)
    as_int = chunked_cross_entropy(hidden, weight, targets, mask.long())
    as_bool = chunked_cross_entropy(hidden, weight, targets, mask)
    torch.testing.assert_close(as_int[0], as_bool[0])
    loss_sum, n_tokens = chunked_cross_entropy(hidden, weight, targets,
                                               torch.zeros(B, T, dtype=torch.bool))
    assert float(loss_sum) == 0.0 and int(n_tokens) == 0


def test_bf16_inputs_give_fp32_loss_and_input_dtype_grads() -> None:
    hidden, weight, targets, _ = _inputs(3)
    h = hidden.bfloat16().requires_grad_(True)
    w = weight.bfloat16().requires_grad_(True)
    loss_sum, _ = chunked_cross_entropy(h, w, targets, chunk_tokens=32)
    ref = F.cross_entropy((h.float() @ w.float().T).reshape(-1, V), targets.reshape(-1),
                          reduction="sum")
    assert loss_sum.dtype == torch.float32
    torch.testing.assert_close(loss_sum, ref, rtol=1e-5, atol=1e-4)
    loss_sum.backward()
    assert h.grad is not None and h.grad.dtype == torch.bfloat16
    assert w.grad is not None and w.grad.dtype == torch.bfloat16


def test_only_inputs_are_kept_for_backward() -> None:
    """Every float tensor autograd saves shares storage with hidden or the weight, except the
    last chunk's logits (the backward needs them first, so keeping them adds no peak); the rest
    are chunks of targets. No other chunk's logits outlive it; the full path saves them all."""
    hidden, weight, targets, mask = _inputs(4)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    saved: list[torch.Tensor] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved.append(x)
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        loss_sum, n = chunked_cross_entropy(h, w, targets, mask, chunk_tokens=16)
    inputs = {x.untyped_storage().data_ptr() for x in (h, w)}
    floats = [x for x in saved if x.is_floating_point()]
    others = [x for x in floats if x.untyped_storage().data_ptr() not in inputs]
    last_rows = B * T - 16 * ((B * T - 1) // 16)
    assert floats and others
    assert all(x.numel() <= last_rows * max(V, H) for x in others), [x.shape for x in others]
    assert all(x.dtype == torch.int64 and x.numel() <= 16 for x in saved
               if not x.is_floating_point())
    (loss_sum / n).backward()                       # recomputation works after the hooks

    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        F.cross_entropy((h @ w.T).reshape(-1, V), targets.reshape(-1))
    assert any(x.numel() == B * T * V for x in saved)


def test_no_grad_path_and_logits_bytes() -> None:
    hidden, weight, targets, _ = _inputs(5)
    with torch.no_grad():
        loss_sum, _ = chunked_cross_entropy(hidden, weight, targets, chunk_tokens=10)
    ref = F.cross_entropy((hidden @ weight.T).reshape(-1, V), targets.reshape(-1),
                          reduction="sum")
    torch.testing.assert_close(loss_sum, ref, rtol=1e-5, atol=1e-5)
    # 64Ki tokens x 32Ki vocab x 4 B = 8 GiB whole; 4096 x 32Ki x 4 B = 512 MiB per chunk
    assert logits_bytes(65536, 32768) == 8 * 2**30
    assert logits_bytes(65536, 32768, 4096) == 512 * 2**20
    assert logits_bytes(100, 32768, 4096) == 100 * 32768 * 4


@pytest.mark.parametrize("bad", ["hidden", "lm_head_weight", "mask", "chunk_tokens"])
def test_shape_errors(bad: str) -> None:
    hidden, weight, targets, mask = _inputs()
    args = {"hidden": hidden, "lm_head_weight": weight, "targets": targets, "mask": mask,
            "chunk_tokens": 8}
    wrong = {"hidden": hidden[0], "lm_head_weight": weight[:, :3], "mask": mask[:, :4],
             "chunk_tokens": 0}
    with pytest.raises(ValueError):
        chunked_cross_entropy(**{**args, bad: wrong[bad]})


def test_fp32_logits_under_bf16_autocast() -> None:
    hidden, weight, targets, _ = _inputs(6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_sum, _ = chunked_cross_entropy(hidden, weight, targets, chunk_tokens=32)
    ref = F.cross_entropy((hidden @ weight.T).reshape(-1, V), targets.reshape(-1),
                          reduction="sum")
    torch.testing.assert_close(loss_sum, ref, rtol=1e-5, atol=1e-5)
