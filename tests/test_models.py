"""LeNet-5: exact parameter counts, shapes, and C3's connection table checked map by map."""

from __future__ import annotations

import pytest
import torch

from shared.models import build_model, count_parameters
from shared.models.lenet import C3_TABLE, LeNet5


def test_parameter_counts_match_the_paper_layer_by_layer():
    model = LeNet5()
    per_layer = {name: count_parameters(module) for name, module in model.named_children()}
    # C1 6*(25+1); C3 Table I: 6*(3*25+1) + 9*(4*25+1) + (6*25+1); C5 120*(16*25+1); F6 84*121; out 10*85.
    assert per_layer == {"c1": 156, "c3": 1516, "c5": 48120, "f6": 10164, "output": 850}
    assert per_layer["c1"] + per_layer["c3"] + per_layer["c5"] + per_layer["f6"] + 12 + 32 == 60000  # + S2, S4
    assert count_parameters(build_model("lenet5", num_classes=10, in_channels=1)) == 60806


def test_shapes_forward_backward_and_input_check():
    model = LeNet5(num_classes=7, in_channels=3)
    logits = model(torch.randn(4, 3, 32, 32))
    assert logits.shape == (4, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="LeNet-5 reads 32x32 images, got \\(28, 28\\)"):
        model(torch.randn(1, 3, 28, 28))


def test_c3_table_is_the_papers():
    assert [len(row) for row in C3_TABLE] == [3] * 6 + [4] * 9 + [6]
    # Table I, read by rows (S2 map -> C3 maps that read it).
    rows = {s: [m for m, inputs in enumerate(C3_TABLE) if s in inputs] for s in range(6)}
    assert rows[0] == [0, 4, 5, 6, 9, 10, 11, 12, 14, 15]
    assert rows[1] == [0, 1, 5, 6, 7, 10, 11, 12, 13, 15]
    assert rows[2] == [0, 1, 2, 6, 7, 8, 11, 13, 14, 15]
    assert rows[3] == [1, 2, 3, 6, 7, 8, 9, 12, 14, 15]
    assert rows[4] == [2, 3, 4, 7, 8, 9, 10, 12, 13, 15]
    assert rows[5] == [3, 4, 5, 8, 9, 10, 11, 13, 14, 15]


def test_each_c3_map_depends_exactly_on_its_table_inputs_and_a_5x5_window():
    c3 = LeNet5().c3
    s2 = torch.randn(1, 6, 14, 14, requires_grad=True)
    out = c3(s2)
    assert out.shape == (1, 16, 10, 10)
    for m, inputs in enumerate(C3_TABLE):
        (grad,) = torch.autograd.grad(out[0, m, 4, 6], s2, retain_graph=True)
        reached = grad[0].abs() > 0  # (6, 14, 14)
        assert sorted(torch.nonzero(reached.any(-1).any(-1)).flatten().tolist()) == sorted(inputs)
        window = torch.zeros(14, 14, dtype=torch.bool)
        window[4:9, 6:11] = True  # output pixel (4, 6) reads input rows 4-8, columns 6-10
        for s in inputs:
            assert torch.equal(reached[s], window)
