"""Each loss against values computed by hand."""

import math

import torch

from hskd import losses


def test_soft_label_loss_has_t_squared_and_matches_hand_kl():
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[0.0, 2.0]])
    T = 2.0

    def softmax(z):
        e = [math.exp(v / T) for v in z]
        return [v / sum(e) for v in e]

    p, q = softmax([0.0, 2.0]), softmax([1.0, 0.0])
    kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert math.isclose(losses.soft_label_loss(s, t, T).item(), T * T * kl, rel_tol=1e-5)
    # without T² the value would be 4x smaller: guard against the classic omission
    assert not math.isclose(losses.soft_label_loss(s, t, T).item(), kl, rel_tol=1e-2)


def test_soft_label_loss_is_batch_mean_and_zero_for_equal_logits():
    z = torch.randn(5, 3)
    assert losses.soft_label_loss(z, z, 4.0).item() < 1e-6
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    both = losses.soft_label_loss(a, b, 1.0)
    each = (losses.soft_label_loss(a[:1], b[:1], 1.0) + losses.soft_label_loss(a[1:], b[1:], 1.0)) / 2
    assert torch.allclose(both, each, atol=1e-6)


def test_soft_label_loss_regression_is_mse_to_teacher():
    s, t = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [1.0]])
    assert math.isclose(losses.soft_label_loss(s, t, 10.0).item(), (1 + 4) / 2)


def test_task_loss_ce_and_regression():
    logits = torch.tensor([[2.0, 0.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1))
    assert math.isclose(losses.task_loss(logits, torch.tensor([0])).item(), expected, rel_tol=1e-6)
    assert math.isclose(losses.task_loss(torch.tensor([[0.5]]), torch.tensor([1.5])).item(), 1.0)


def test_hidden_mse_excludes_padding_and_sums_layers():
    s = torch.zeros(1, 2, 3, 2)
    t = torch.zeros(1, 2, 3, 2)
    t[0, 0, 0] = torch.tensor([1.0, 1.0])  # layer 0, token 0: squared error 2 over 2 dims
    t[0, 1, 1] = torch.tensor([2.0, 0.0])  # layer 1, token 1: squared error 4
    t[0, :, 2] = 100.0  # padding: must not count
    mask = torch.tensor([[[True, True, False], [True, True, False]]])
    # layer 0: 2 / (2 tokens * 2 dims) = 0.5; layer 1: 4 / 4 = 1.0; summed = 1.5
    assert math.isclose(losses.hidden_mse(s, t, mask).item(), 1.5)


def test_pkd_loss_normalises_before_mse():
    s = torch.tensor([[[3.0, 0.0]]])
    t = torch.tensor([[[0.0, 5.0]]])
    # unit vectors (1,0) and (0,1): mean squared difference over 2 dims = (1 + 1) / 2
    assert math.isclose(losses.pkd_loss(s, t).item(), 1.0)
    assert losses.pkd_loss(s, 7 * s).item() < 1e-9  # scale-free


def test_cosine_loss():
    s = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    t = torch.tensor([[[0.0, 1.0], [2.0, 2.0]]])
    # pair 0: 1 - 0; pair 1: 1 - 1; summed over pairs
    assert math.isclose(losses.cosine_loss(s, t).item(), 1.0, abs_tol=1e-6)


def test_attention_kl_uses_probabilities_as_given_with_padding_masked():
    # one example, one pair, one head, two query rows, three keys; key 2 and row 1 are padding
    t = torch.tensor([0.5, 0.5, 0.0])
    s = torch.tensor([0.25, 0.75, 0.0])
    teacher = torch.stack([t, torch.tensor([0.1, 0.1, 0.8])])[None, None, None]
    student = torch.stack([s, torch.tensor([0.8, 0.1, 0.1])])[None, None, None]
    row_mask = torch.tensor([[[True, False]]])
    key_mask = torch.tensor([[True, True, False]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    got = losses.attention_kl(student, teacher, row_mask, key_mask).item()
    assert math.isclose(got, expected, rel_tol=1e-4)
    # softmax applied again would change the value: make sure we did not
    resoftmaxed = losses.attention_kl(student.softmax(-1), teacher.softmax(-1), row_mask, key_mask).item()
    assert not math.isclose(resoftmaxed, expected, rel_tol=1e-2)


def test_attention_kl_averages_heads_when_counts_differ():
    t = torch.tensor([[0.5, 0.5], [0.9, 0.1]])  # two teacher heads, one row each
    s = torch.tensor([[0.7, 0.3]])  # one student head = the teacher's head average
    teacher = t[None, None, :, None, :]
    student = s[None, None, :, None, :]
    got = losses.attention_kl(student, teacher, torch.ones(1, 1, 1, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))
    assert got.item() < 1e-6
