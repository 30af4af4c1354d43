"""Learning-rate schedules against their closed forms at chosen steps (values worked out by hand),
their errors, and their serialised form."""
import json
import math

import pytest

from tinycnn.optimizers import schedules
from tinycnn.optimizers.schedules import (CosineDecay, CosineDecayRestarts, ExponentialDecay, InverseTimeDecay,
                                          PiecewiseConstantDecay)


@pytest.mark.parametrize("schedule, step, expected", [
    (ExponentialDecay(0.1, 10, 0.5), 0, 0.1),
    (ExponentialDecay(0.1, 10, 0.5), 10, 0.05),
    (ExponentialDecay(0.1, 10, 0.5), 25, 0.1 * 0.5 ** 2.5),
    (ExponentialDecay(0.1, 10, 0.5, staircase=True), 19, 0.05),
    (ExponentialDecay(0.1, 10, 0.5, staircase=True), 20, 0.025),
    (InverseTimeDecay(0.1, 10, 0.5), 0, 0.1),
    (InverseTimeDecay(0.1, 10, 0.5), 20, 0.05),                  # 0.1 / (1 + 0.5 * 2)
    (InverseTimeDecay(0.1, 10, 0.5), 5, 0.1 / 1.25),
    (InverseTimeDecay(0.1, 10, 0.5, staircase=True), 15, 0.1 / 1.5),
    (PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]), 0, 1.0),
    (PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]), 10, 1.0),   # boundaries belong to the left
    (PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]), 11, 0.5),
    (PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]), 20, 0.5),
    (PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]), 21, 0.1),
    (CosineDecay(0.1, 100), 0, 0.1),
    (CosineDecay(0.1, 100), 50, 0.05),
    (CosineDecay(0.1, 100), 25, 0.05 * (1 + math.sqrt(0.5))),
    (CosineDecay(0.1, 100), 100, 0.0),
    (CosineDecay(0.1, 100), 500, 0.0),                           # stays at the floor
    (CosineDecay(0.1, 100, alpha=0.2), 50, 0.1 * (0.8 * 0.5 + 0.2)),
    (CosineDecay(0.1, 100, alpha=0.2), 100, 0.02),
    (CosineDecay(0.0, 100, warmup_target=0.2, warmup_steps=10), 0, 0.0),
    (CosineDecay(0.0, 100, warmup_target=0.2, warmup_steps=10), 5, 0.1),     # half-way up the ramp
    (CosineDecay(0.0, 100, warmup_target=0.2, warmup_steps=10), 10, 0.2),    # peak
    (CosineDecay(0.0, 100, warmup_target=0.2, warmup_steps=10), 60, 0.1),    # half-way down
    (CosineDecay(0.0, 100, warmup_target=0.2, warmup_steps=10), 110, 0.0),
    (CosineDecay(0.01, 100, alpha=0.5, warmup_target=0.2, warmup_steps=10), 1, 0.01 + 0.19 / 10),
    (CosineDecay(0.01, 100, alpha=0.5, warmup_target=0.2, warmup_steps=10), 999, 0.1),
    (CosineDecayRestarts(0.1, 10), 0, 0.1),
    (CosineDecayRestarts(0.1, 10), 5, 0.05),
    (CosineDecayRestarts(0.1, 10), 10, 0.1),                     # restart; the next period is 20 steps
    (CosineDecayRestarts(0.1, 10), 20, 0.05),
    (CosineDecayRestarts(0.1, 10), 30, 0.1),                     # second restart (10 + 20)
    (CosineDecayRestarts(0.1, 10, m_mul=0.5), 30, 0.025),        # each restart at half the last peak
    (CosineDecayRestarts(0.1, 10, t_mul=1.0, m_mul=0.5), 15, 0.025),
    (CosineDecayRestarts(0.1, 10, t_mul=1.0, alpha=0.1), 25, 0.1 * (0.9 * 0.5 + 0.1)),
])
def test_closed_forms(schedule, step, expected):
    assert schedule(step) == pytest.approx(expected, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("make, message", [
    (lambda: ExponentialDecay(0.1, 0, 0.5),
     "ExponentialDecay: invalid value for argument `decay_steps`: expected a number > 0, received 0"),
    (lambda: InverseTimeDecay(0.1, -5, 0.5), "InverseTimeDecay: invalid value for argument `decay_steps`"),
    (lambda: CosineDecay(0.1, 0), "CosineDecay: invalid value for argument `decay_steps`: expected a number > 0"),
    (lambda: CosineDecay(-0.1, 10), "CosineDecay: invalid value for argument `initial_learning_rate`: expected a "
                                    "number >= 0, received -0.1"),
    (lambda: CosineDecay(0.0, 10, warmup_target=0.1, warmup_steps=2.5),
     "CosineDecay: invalid value for argument `warmup_steps`: expected an int >= 0, received 2.5"),
    (lambda: CosineDecay(0.1, 10, alpha=math.nan), "CosineDecay: invalid value for argument `alpha`"),
    (lambda: CosineDecayRestarts(0.1, 0), "CosineDecayRestarts: invalid value for argument `first_decay_steps`"),
    (lambda: CosineDecayRestarts(0.1, 10, t_mul=0), "CosineDecayRestarts: invalid value for argument `t_mul`"),
    (lambda: PiecewiseConstantDecay([10, 20], [1.0, 0.5]),
     "PiecewiseConstantDecay: invalid value for argument `values`: expected a list of len(boundaries) + 1 = 3"),
    (lambda: PiecewiseConstantDecay([20, 10], [1.0, 0.5, 0.1]),
     "PiecewiseConstantDecay: invalid value for argument `boundaries`: expected increasing steps"),
    (lambda: ExponentialDecay(0.1, 10, 0.5, staircase="yes"),
     "ExponentialDecay: invalid value for argument `staircase`: expected True or False"),
    (lambda: schedules.deserialize({"class_name": "LambdaDecay", "config": {}}), "Invalid learning-rate schedule"),
    (lambda: schedules.deserialize({"class_name": "CosineDecay", "config": {"decay_steps": 5}}),
     "Invalid learning-rate schedule CosineDecay"),
])
def test_bad_arguments_name_schedule_argument_and_value(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value), str(info.value)


@pytest.mark.parametrize("schedule", [
    ExponentialDecay(0.1, 10, 0.5, staircase=True, name="exp"),
    InverseTimeDecay(0.1, 10, 0.5),
    PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1]),
    CosineDecay(0.0, 100, alpha=0.1, warmup_target=0.2, warmup_steps=10),
    CosineDecayRestarts(0.1, 10, t_mul=1.5, m_mul=0.8, alpha=0.05),
])
def test_serialised_form_is_json_and_rebuilds_the_same_schedule(schedule):
    data = json.loads(json.dumps(schedules.serialize(schedule)))
    assert data["class_name"] == type(schedule).__name__
    rebuilt = schedules.deserialize(data)
    assert type(rebuilt) is type(schedule) and rebuilt.get_config() == schedule.get_config()
    assert [rebuilt(s) for s in (0, 7, 33, 150)] == [schedule(s) for s in (0, 7, 33, 150)]


def test_keras_default_names():
    assert CosineDecay(0.1, 10).name == "CosineDecay"
    assert CosineDecayRestarts(0.1, 10).name == "SGDRDecay"
    assert PiecewiseConstantDecay([1], [1.0, 0.5]).name == "PiecewiseConstant"
    assert (CosineDecayRestarts(0.1, 10).t_mul, CosineDecayRestarts(0.1, 10).m_mul) == (2.0, 1.0)
