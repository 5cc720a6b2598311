"""The CPU cross-entropy that reuses the logits' memory for their gradient equals F.cross_entropy."""

import torch
import torch.nn.functional as F

from nextoken.training.objective import IGNORE_INDEX, next_token_loss


def test_in_place_cross_entropy_matches_torch_in_value_and_gradient():
    torch.manual_seed(0)
    w = torch.randn(16, 37, requires_grad=True)
    h = torch.randn(3, 5, 16)
    targets = torch.randint(0, 37, (3, 5))
    targets[2, 3:] = IGNORE_INDEX
    loss, ce = next_token_loss(h @ w, targets)
    (loss * 0.5).backward()
    grad, w.grad = w.grad.clone(), None
    ref = F.cross_entropy((h @ w).view(-1, 37), targets.view(-1), ignore_index=IGNORE_INDEX)
    (ref * 0.5).backward()
    assert torch.allclose(loss, ref, rtol=1e-6) and torch.allclose(ce, ref, rtol=1e-6)
    assert torch.allclose(grad, w.grad, rtol=1e-5, atol=1e-7)


def test_in_place_cross_entropy_is_stable_for_large_logits_and_matches_a_model_step():
    torch.manual_seed(1)
    w = (torch.randn(8, 50) * 200).requires_grad_()  # logits in the thousands: exp without the max would overflow
    h = torch.randn(4, 6, 8)
    targets = torch.randint(0, 50, (4, 6))
    loss, _ = next_token_loss(h @ w, targets)
    loss.backward()
    grad, w.grad = w.grad.clone(), None
    ref = F.cross_entropy((h @ w).view(-1, 50), targets.view(-1))
    ref.backward()
    assert torch.isfinite(loss) and torch.allclose(loss, ref, rtol=1e-5)
    assert torch.allclose(grad, w.grad, rtol=1e-4, atol=1e-5)
