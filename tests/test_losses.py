"""TinyBERT losses against values worked out by hand (see comments), not a re-implementation."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from tinyfast.distill.losses import (  # noqa: E402
    Internals,
    LossWeights,
    Projection,
    attention_mse,
    hidden_mse,
    intermediate_loss,
    parse_layer_map,
    prediction_loss,
    regression_mse,
    soft_cross_entropy,
    uniform_layer_map,
)
from tinyfast.errors import ConfigError  # noqa: E402

INF = float("inf")
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])  # B=2, L=3; the last token of row 1 is padding


def t(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----------------------------------------------------------------------------- hidden_mse


def hidden_pair(pad: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    student = t([[[1, 0], [0, 2], [1, 1]], [[3, 0], [0, 1], pad]])
    teacher = t([[[0.5, 0], [0, 0], [0, 0]], [[0, 0], [0, 0], [-7, 7]]])
    return student, teacher


def test_hidden_mse_hand_value_ignores_padding() -> None:
    # Row 0: 0.5^2 + 0 + 0 + 2^2 + 1 + 1 = 6.25; row 1 real tokens: 9 + 1 = 10.
    # 5 real tokens x 2 features -> 16.25 / 10.
    for pad in ([0.0, 0.0], [1e30, -INF], [math.nan, 1e9]):
        student, teacher = hidden_pair(pad)
        assert hidden_mse(student, teacher, MASK).item() == pytest.approx(1.625)


def test_hidden_mse_gradient_is_finite_and_zero_at_padding() -> None:
    student, teacher = hidden_pair([1e30, -INF])
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    hidden_mse(student, teacher, MASK).backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[1, 2].abs().sum().item() == 0.0
    # d/ds of (s - t)^2 / 10 at s=3, t=0 is 2 * 3 / 10.
    assert student.grad[1, 0, 0].item() == pytest.approx(0.6)
    assert teacher.grad is None


def test_hidden_mse_accepts_float_and_bool_masks_and_rejects_bad_shapes() -> None:
    student, teacher = hidden_pair([5.0, 5.0])
    for mask in (MASK.float(), MASK.bool()):
        assert hidden_mse(student, teacher, mask).item() == pytest.approx(1.625)
    with pytest.raises(ConfigError, match="project"):
        hidden_mse(student, teacher[..., :1], MASK)
    with pytest.raises(ConfigError, match="attention_mask"):
        hidden_mse(student, teacher, MASK[:, :2])


# ----------------------------------------------------------------------------- attention_mse


def attention_pair(student_pad: float, teacher_pad: float) -> tuple[torch.Tensor, torch.Tensor]:
    """B=2, H=2, L=3 scores: student 1 and teacher 0 on real pairs, except one 3.

    Row 1's padding (query 2 and key 2) holds the given garbage.
    """
    student = torch.ones(2, 2, 3, 3, dtype=torch.float64)
    teacher = torch.zeros(2, 2, 3, 3, dtype=torch.float64)
    student[1, 1, 0, 1] = 3.0
    student[1, :, 2, :] = student_pad
    student[1, :, :, 2] = student_pad
    teacher[1, :, 2, :] = teacher_pad
    teacher[1, :, :, 2] = teacher_pad
    return student, teacher


def test_attention_mse_hand_value_with_garbage_padding() -> None:
    # Real pairs: row 0 has 3*3, row 1 has 2*2 -> 13 per head, 26 over 2 heads.
    # Squared errors: 1 each, except (3 - 0)^2 = 9 once -> 26 + 8 = 34. Mean 34 / 26 = 17 / 13.
    for student_pad, teacher_pad in ((-INF, -INF), (1e9, -INF), (INF, 1e9), (math.nan, 0.0)):
        student, teacher = attention_pair(student_pad, teacher_pad)
        loss = attention_mse(student, teacher, MASK)
        assert math.isfinite(loss.item())
        assert loss.item() == pytest.approx(17 / 13)


def test_attention_mse_gradient_is_finite_with_inf_padding() -> None:
    student, teacher = attention_pair(-INF, -INF)
    student.requires_grad_(True)
    attention_mse(student, teacher, MASK).backward()
    assert torch.isfinite(student.grad).all()
    assert student.grad[1, :, 2, :].abs().sum().item() == 0.0
    assert student.grad[1, :, :, 2].abs().sum().item() == 0.0
    # d/ds (3 - 0)^2 / 26 = 6 / 26.
    assert student.grad[1, 1, 0, 1].item() == pytest.approx(6 / 26)


def test_attention_mse_differs_from_official_unmasked_mean() -> None:
    # What the official code sees: padded keys zeroed by its "<= -1e2" clamp, but the padded
    # query's scores against real keys are left in (here 2.0 for the student, 0 for the teacher).
    student, teacher = attention_pair(0.0, 0.0)
    student[1, :, 2, :2] = 2.0
    ours = attention_mse(student, teacher, MASK).item()
    official = ((student - teacher) ** 2).mean().item()
    assert ours == pytest.approx(17 / 13)
    # Official: (34 + 2 heads * 2 keys * 2^2) / (2*2*3*3) = 50 / 36.
    assert official == pytest.approx(50 / 36)
    assert ours != pytest.approx(official)


def test_attention_mse_head_count_mismatch() -> None:
    student = torch.zeros(2, 4, 3, 3)
    teacher = torch.zeros(2, 12, 3, 3)
    with pytest.raises(ConfigError, match="student has 4, teacher has 12"):
        attention_mse(student, teacher, MASK)
    with pytest.raises(ConfigError, match="differ in shape"):
        attention_mse(torch.zeros(2, 2, 3, 3), torch.zeros(2, 2, 4, 4), MASK)


# ----------------------------------------------------------------------------- prediction


def test_soft_cross_entropy_two_classes() -> None:
    # Teacher [0, 0] -> p = (1/2, 1/2); student [0, ln 3] -> q = (1/4, 3/4).
    # -(1/2 ln 1/4 + 1/2 ln 3/4) = 1/2 ln(16/3) = 0.836988...
    loss = soft_cross_entropy(t([[0.0, math.log(3)]]), t([[0.0, 0.0]]))
    assert loss.item() == pytest.approx(0.5 * math.log(16 / 3))
    assert loss.item() == pytest.approx(0.8369882167858358)


def test_soft_cross_entropy_batch_mean() -> None:
    # Row 0 as above; row 1: teacher [ln 3, 0] -> p = (3/4, 1/4), student uniform -> ln 2.
    student = t([[0.0, math.log(3)], [0.0, 0.0]])
    teacher = t([[0.0, 0.0], [math.log(3), 0.0]])
    expected = (0.5 * math.log(16 / 3) + math.log(2)) / 2
    assert soft_cross_entropy(student, teacher).item() == pytest.approx(expected)


def test_soft_cross_entropy_sums_over_classes() -> None:
    # Uniform vs uniform over 3 classes: the cross-entropy is the entropy, ln 3 = 1.0986.
    # The official code would give ln 3 / 3.
    loss = soft_cross_entropy(torch.zeros(4, 3), torch.zeros(4, 3))
    assert loss.item() == pytest.approx(math.log(3))


def test_soft_cross_entropy_temperature_and_t2() -> None:
    # T = 2: teacher [0, 2 ln 3] / 2 -> p = (1/4, 3/4); student [2 ln 3, 0] / 2 -> q = (3/4, 1/4).
    # -(1/4 ln 3/4 + 3/4 ln 1/4) = 1/4 ln(4/3) + 3/4 ln 4 = 1.111641...
    student = t([[2 * math.log(3), 0.0]])
    teacher = t([[0.0, 2 * math.log(3)]])
    expected = 0.25 * math.log(4 / 3) + 0.75 * math.log(4)
    assert soft_cross_entropy(student, teacher, 2.0).item() == pytest.approx(expected)
    assert soft_cross_entropy(student, teacher, 2.0).item() == pytest.approx(1.1116412)
    scaled = soft_cross_entropy(student, teacher, 2.0, scale_by_t2=True)
    assert scaled.item() == pytest.approx(4 * expected)
    with pytest.raises(ConfigError, match="temperature"):
        soft_cross_entropy(student, teacher, 0.0)


def test_soft_cross_entropy_gradient_only_to_student() -> None:
    # d/dz_S = (q - p) / B: q = (1/4, 3/4), p = (1/2, 1/2), B = 2 -> (-1/8, 1/8).
    student = t([[0.0, math.log(3)], [0.0, math.log(3)]]).requires_grad_(True)
    teacher = t([[0.0, 0.0], [0.0, 0.0]]).requires_grad_(True)
    soft_cross_entropy(student, teacher).backward()
    assert teacher.grad is None
    assert torch.allclose(student.grad, t([[-0.125, 0.125], [-0.125, 0.125]]))


def test_regression_mse_and_prediction_loss() -> None:
    # (1-1)^2 + (2-0)^2 + (3-6)^2 = 13, over 3.
    student = t([1.0, 2.0, 3.0])
    teacher = t([1.0, 0.0, 6.0])
    assert regression_mse(student, teacher).item() == pytest.approx(13 / 3)
    assert regression_mse(student[:, None], teacher[:, None]).item() == pytest.approx(13 / 3)
    assert regression_mse(student[:, None], teacher).item() == pytest.approx(13 / 3)
    assert prediction_loss(student, teacher, "regression").item() == pytest.approx(13 / 3)
    cls = prediction_loss(t([[0.0, math.log(3)]]), t([[0.0, 0.0]]), "classification")
    assert cls.item() == pytest.approx(0.5 * math.log(16 / 3))
    with pytest.raises(ConfigError, match="one output per example"):
        regression_mse(torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="3 outputs"):
        regression_mse(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ConfigError, match="unknown task"):
        prediction_loss(student, teacher, "ranking")


# ----------------------------------------------------------------------------- layer maps


def test_uniform_layer_map() -> None:
    assert uniform_layer_map(4, 12) == [3, 6, 9, 12]
    assert uniform_layer_map(3, 6) == [2, 4, 6]
    assert uniform_layer_map(4, 6) == [1, 3, 4, 6]  # floor(1.5)=1, 3, floor(4.5)=4, 6
    assert uniform_layer_map(6, 6) == [1, 2, 3, 4, 5, 6]
    with pytest.raises(ConfigError, match="more than the teacher"):
        uniform_layer_map(13, 12)
    with pytest.raises(ConfigError, match="at least one layer"):
        uniform_layer_map(0, 12)


def test_parse_layer_map() -> None:
    assert parse_layer_map("3,6,9,12", 4, 12) == [3, 6, 9, 12]
    assert parse_layer_map(" 2, 2 ,12", 3, 12) == [2, 2, 12]
    with pytest.raises(ConfigError, match="names 3 teacher layers but the student has 4"):
        parse_layer_map("3,6,9", 4, 12)
    with pytest.raises(ConfigError, match="out of range 1..12"):
        parse_layer_map("3,6,9,13", 4, 12)
    with pytest.raises(ConfigError, match="out of range"):
        parse_layer_map("0,6,9,12", 4, 12)
    for bad in ("a,b,c,d", "", "3,,9,12", "3.5,6,9,12"):
        with pytest.raises(ConfigError, match="not a layer number"):
            parse_layer_map(bad, 4, 12)


# ----------------------------------------------------------------------------- Projection


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_projection_shared_vs_per_layer() -> None:
    shared = Projection(3, 4, num_layers=2, shared=True)
    per_layer = Projection(3, 4, num_layers=2, shared=False)
    assert num_params(shared) == 3 * 4 + 4
    assert num_params(per_layer) == 3 * (3 * 4 + 4)  # embeddings + 2 layers
    x = torch.randn(2, 5, 3)
    assert shared(x, 2).shape == (2, 5, 4)
    assert torch.equal(shared(x, 0), shared(x, 2))
    assert not torch.allclose(per_layer(x, 0), per_layer(x, 2))
    with pytest.raises(IndexError):
        shared(x, 3)


def test_projection_equal_widths_and_identity() -> None:
    x = torch.randn(2, 5, 4)
    learned = Projection(4, 4, num_layers=2, shared=False)
    assert num_params(learned) == 3 * (4 * 4 + 4)
    for index in range(3):
        assert torch.allclose(learned(x, index), x)  # starts as the identity
    noop = Projection(4, 4, num_layers=2, identity=True)
    assert num_params(noop) == 0
    assert noop(x, 1) is x
    with pytest.raises(ConfigError, match="equal widths"):
        Projection(3, 4, num_layers=2, identity=True)


# ----------------------------------------------------------------------------- intermediate


def toy_internals(hidden: list[float], scores: list[float] | None, width: int = 2) -> Internals:
    """B=1, L=3 with the last token padded; each layer holds one constant on real positions."""
    states = []
    for value in hidden:
        h = torch.full((1, 3, width), value, dtype=torch.float64)
        h[0, 2] = 1e6  # padding garbage
        states.append(h)
    att = None
    if scores is not None:
        att = []
        for value in scores:
            s = torch.full((1, 1, 3, 3), value, dtype=torch.float64)
            s[0, 0, 2, :] = -INF
            s[0, 0, :, 2] = -INF
            att.append(s)
    return Internals(hidden_states=states, attention_scores=att)


TOY_MASK = torch.tensor([[1, 1, 0]])


def test_intermediate_loss_hand_value_with_custom_map() -> None:
    # Teacher: 3 layers, hidden_states[k] = k, scores of layer k = 10k. Student: 2 layers.
    # Map [2, 3]: emb (1-0)^2 = 1; hid (5-2)^2 + (1-3)^2 = 13; att (19-20)^2 + (32-30)^2 = 5.
    teacher = toy_internals([0, 1, 2, 3], [10, 20, 30])
    student = toy_internals([1, 5, 1], [19, 32])
    projection = Projection(2, 2, num_layers=2, identity=True)
    weights = LossWeights(embedding=2.0, hidden=3.0, attention=0.5)
    loss, logs = intermediate_loss(student, teacher, TOY_MASK, [2, 3], projection, weights)
    assert logs == pytest.approx({"emb": 1.0, "hid": 13.0, "att": 5.0})
    assert loss.item() == pytest.approx(2 * 1 + 3 * 13 + 0.5 * 5)
    # The uniform map for 2 of 3 is [1, 3]: hid (5-1)^2 + 4 = 20, att (19-10)^2 + 4 = 85.
    _, logs = intermediate_loss(student, teacher, TOY_MASK, [1, 3], projection, weights)
    assert logs == pytest.approx({"emb": 1.0, "hid": 20.0, "att": 85.0})


def test_intermediate_loss_without_attention() -> None:
    teacher = toy_internals([0, 1, 2, 3], None)
    student = toy_internals([1, 5, 1], None)
    projection = Projection(2, 2, num_layers=2, identity=True)
    weights = LossWeights(embedding=2.0, hidden=3.0, attention=0.5)
    loss, logs = intermediate_loss(
        student, teacher, TOY_MASK, [2, 3], projection, weights, use_attention=False
    )
    assert logs == pytest.approx({"emb": 1.0, "hid": 13.0, "att": 0.0})
    assert loss.item() == pytest.approx(2 * 1 + 3 * 13)
    with pytest.raises(ConfigError, match="pre-softmax scores"):
        intermediate_loss(student, teacher, TOY_MASK, [2, 3], projection, weights)


def test_intermediate_loss_trains_projection_and_checks_map() -> None:
    teacher = toy_internals([0, 1, 2, 3], [10, 20, 30], width=4)
    student = toy_internals([1, 5, 1], [19, 32], width=2)
    for state in student.hidden_states:
        state.requires_grad_(True)
    projection = Projection(2, 4, num_layers=2, shared=False).double()
    loss, _ = intermediate_loss(student, teacher, TOY_MASK, [2, 3], projection, LossWeights())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in projection.parameters())
    assert all(torch.isfinite(s.grad).all() for s in student.hidden_states)
    with pytest.raises(ConfigError, match="layer map has 3 entries"):
        intermediate_loss(student, teacher, TOY_MASK, [1, 2, 3], projection, LossWeights())
    with pytest.raises(ConfigError, match="teacher layer 4"):
        intermediate_loss(student, teacher, TOY_MASK, [2, 4], projection, LossWeights())
    with pytest.raises(ConfigError, match="projection covers 3"):
        intermediate_loss(
            student, teacher, TOY_MASK, [2, 3], Projection(2, 4, num_layers=3), LossWeights()
        )


def test_loss_weights_validation() -> None:
    with pytest.raises(ConfigError, match="hidden"):
        LossWeights(hidden=-1.0)
