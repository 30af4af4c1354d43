"""Optimizers against their formulas: a plain-NumPy twin of every update rule and common option.

The twin below is written from Keras 3's documented formulas, independently of the Numba kernels:
each optimizer takes several steps on a few parameters of different shapes with fresh random
gradients, and must land where the twin lands (float64: to rounding; float32: to float32 accuracy).
Then the options through a real model (``train_on_batch``), the moving average of the weights,
errors for bad hyperparameters, and save/load round trips that continue training bit for bit.
"""
import json
import math

import numpy as np
import pytest

import tinycnn
from tinycnn import optimizers
from tinycnn.layers import Dense
from tinycnn.models import Sequential, load_model
from tinycnn.optimizers import schedules

SHAPES = {"dense/kernel": (4, 3), "dense/bias": (3,), "conv2d/kernel": (3, 3, 2, 5)}


# --- the twin -------------------------------------------------------------------------------------

def twin_rule(kind, cfg, p, g, s, lr, t):
    """One update of the rule ``kind`` on flat float64 arrays; ``s`` is a dict of state arrays;
    ``t`` counts the steps made before this one."""
    if kind == "SGD":
        mu = cfg.get("momentum", 0.0)
        if mu == 0:
            return p - lr * g
        s["velocity"] = mu * s["velocity"] - lr * g
        if cfg.get("nesterov", False):
            return p + mu * s["velocity"] - lr * g
        return p + s["velocity"]
    if kind in ("Adam", "AdamW"):
        b1, b2, eps = cfg.get("beta_1", 0.9), cfg.get("beta_2", 0.999), cfg.get("epsilon", 1e-7)
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g ** 2
        s["v_hat"] = np.maximum(s["v_hat"], s["v"])
        v = s["v_hat"] if cfg.get("amsgrad") else s["v"]
        step = lr * math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))   # bias corrections folded in
        return p - step * s["m"] / (np.sqrt(v) + eps)
    if kind == "RMSprop":
        rho, mu, eps = cfg.get("rho", 0.9), cfg.get("momentum", 0.0), cfg.get("epsilon", 1e-7)
        s["velocity"] = rho * s["velocity"] + (1 - rho) * g ** 2
        denominator = s["velocity"] + eps
        if cfg.get("centered", False):
            s["average_gradient"] = rho * s["average_gradient"] + (1 - rho) * g
            denominator = denominator - s["average_gradient"] ** 2
        increment = lr * g / np.sqrt(denominator)
        if mu > 0:
            s["momentum"] = mu * s["momentum"] + increment
            return p - s["momentum"]
        return p - increment
    raise AssertionError(kind)


def twin_run(kind, cfg, params, grad_steps, exclude=()):
    """Apply ``len(grad_steps)`` steps of the whole Keras recipe to copies of ``params``.
    Returns ``(params, averages)``."""
    params = {k: v.astype(np.float64).ravel() for k, v in params.items()}
    state = {k: {name: np.zeros_like(v) for name in ("velocity", "m", "v", "v_hat", "momentum", "average_gradient")}
             for k, v in params.items()}
    averages = {k: v.copy() for k, v in params.items()}
    lr_arg = cfg.get("learning_rate", {"SGD": 0.01}.get(kind, 0.001))
    wd = cfg.get("weight_decay", 0.004 if kind == "AdamW" else None)
    for t, grads in enumerate(grad_steps):
        lr = lr_arg(t) if callable(lr_arg) else lr_arg
        grads = {k: g.astype(np.float64).ravel() for k, g in grads.items()}
        if cfg.get("clipnorm"):
            c = cfg["clipnorm"]
            grads = {k: g * c / max(np.linalg.norm(g), c) for k, g in grads.items()}
        if cfg.get("global_clipnorm"):
            c = cfg["global_clipnorm"]
            norm = math.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
            grads = {k: g * c / max(norm, c) for k, g in grads.items()}
        if cfg.get("clipvalue"):
            c = cfg["clipvalue"]
            grads = {k: np.minimum(np.maximum(g, -c), c) for k, g in grads.items()}
        for k in params:
            p = params[k]
            if wd and not any(e in k for e in exclude):
                p = p - p * wd * lr
            p = twin_rule(kind, cfg, p, grads[k], state[k], lr, t)
            if cfg.get("use_ema"):
                m = cfg.get("ema_momentum", 0.99) if t > 0 else 0.0
                averages[k] = m * averages[k] + (1 - m) * p
                freq = cfg.get("ema_overwrite_frequency")
                if freq and (t + 1) % freq == 0:
                    p = averages[k].copy()
            params[k] = p
    return params, averages


def random_problem(n_steps, dtype, seed=0, scale=1.0):
    gen = np.random.default_rng(seed)
    params = {k: gen.standard_normal(shape).astype(dtype) for k, shape in SHAPES.items()}
    grad_steps = [{k: (scale * gen.standard_normal(shape)).astype(dtype) for k, shape in SHAPES.items()}
                  for _ in range(n_steps)]
    return params, grad_steps


def run(optimizer, params, grad_steps):
    params = {k: v.copy() for k, v in params.items()}
    for grads in grad_steps:
        optimizer.apply([(k, params[k], grads[k]) for k in params])
    return params


CASES = [
    ("SGD", {"learning_rate": 0.1}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.5, "clipnorm": 1.5}),
    ("Adam", {}),
    ("Adam", {"learning_rate": 0.01, "beta_1": 0.5, "clipvalue": 0.3}),
    ("Adam", {"learning_rate": 0.05, "beta_2": 0.5, "amsgrad": True}),
    ("AdamW", {"learning_rate": 0.05}),
    ("AdamW", {"learning_rate": 0.05, "weight_decay": 0.1, "global_clipnorm": 2.0}),
    ("RMSprop", {}),
    ("RMSprop", {"learning_rate": 0.01, "momentum": 0.9}),
    ("RMSprop", {"learning_rate": 0.01, "centered": True}),
    ("RMSprop", {"learning_rate": 0.01, "rho": 0.5, "momentum": 0.5, "centered": True, "weight_decay": 0.01}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "use_ema": True, "ema_momentum": 0.8}),
    ("Adam", {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.5, "ema_overwrite_frequency": 2}),
]


def case_id(case):
    kind, cfg = case
    return kind + "-" + "-".join(f"{k}={v}" for k, v in cfg.items())


def some_cases(*indices):
    return [pytest.param(*CASES[i], id=case_id(CASES[i])) for i in indices]


@pytest.mark.parametrize("kind, cfg", CASES, ids=[case_id(c) for c in CASES])
def test_update_rules_match_the_numpy_twin_float64(kind, cfg):
    params, grad_steps = random_problem(5, np.float64, scale=2.0)
    optimizer = optimizers.OPTIMIZER_CLASSES[kind](**cfg)
    got = run(optimizer, params, grad_steps)
    want, averages = twin_run(kind, cfg, params, grad_steps)
    for k in params:
        np.testing.assert_allclose(got[k].ravel(), want[k], rtol=1e-12, atol=1e-13, err_msg=k)
        assert not np.allclose(got[k], params[k])  # the parameters really moved
    assert optimizer.iterations == 5
    if cfg.get("use_ema"):
        for k in params:
            np.testing.assert_allclose(optimizer.slots[k][-1], averages[k], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind, cfg", some_cases(2, 5, 6, 8, 12, 13))
def test_update_rules_in_float32(kind, cfg):
    params, grad_steps = random_problem(4, np.float32)
    optimizer = optimizers.OPTIMIZER_CLASSES[kind](**cfg)
    got = run(optimizer, params, grad_steps)
    want, _ = twin_run(kind, cfg, params, grad_steps)
    for k in params:
        assert got[k].dtype == np.float32
        assert optimizer.slots[k][0].dtype == np.float32
        np.testing.assert_allclose(got[k].ravel(), want[k], rtol=2e-5, atol=2e-5, err_msg=k)


def test_schedule_gives_the_rate_of_each_step():
    """Plain SGD with a schedule: step t moves by schedule(t) * g, t counted from 0 as in Keras."""
    schedule = schedules.PiecewiseConstantDecay([1, 2], [0.5, 0.25, 0.125])
    optimizer = optimizers.SGD(learning_rate=schedule)
    p = np.zeros(2)
    moves = []
    for _ in range(4):
        before = p.copy()
        assert optimizer.learning_rate == schedule(optimizer.iterations)
        optimizer.apply([("w", p, np.ones(2))])
        moves.append(float(before[0] - p[0]))
    assert moves == [0.5, 0.5, 0.25, 0.125]


def test_weight_decay_exclusions_by_name_and_by_array():
    params, grad_steps = random_problem(3, np.float64)
    cfg = {"learning_rate": 0.05, "weight_decay": 0.2}
    by_name = optimizers.AdamW(**cfg)
    by_name.exclude_from_weight_decay(var_names=["bias"])
    got = run(by_name, params, grad_steps)
    want, _ = twin_run("AdamW", cfg, params, grad_steps, exclude=("bias",))
    for k in params:
        np.testing.assert_allclose(got[k].ravel(), want[k], rtol=1e-12, atol=1e-13)
    undecayed, _ = twin_run("AdamW", cfg, params, grad_steps)
    assert not np.allclose(want["dense/bias"], undecayed["dense/bias"])

    # By the array itself: resolved to its exact name at the first step, so it is saved.
    by_array = optimizers.AdamW(**cfg)
    copies = {k: v.copy() for k, v in params.items()}
    by_array.exclude_from_weight_decay(var_list=[copies["dense/bias"]])
    for grads in grad_steps:
        by_array.apply([(k, copies[k], grads[k]) for k in copies])
    for k in params:
        np.testing.assert_allclose(copies[k].ravel(), want[k], rtol=1e-12, atol=1e-13)
    assert by_array.get_config()["exclude_from_weight_decay"] == ["/dense/bias"]
    rebuilt = optimizers.AdamW(**by_array.get_config())
    assert not rebuilt._use_weight_decay("dense/bias", None)
    assert rebuilt._use_weight_decay("dense/kernel", None) and rebuilt._use_weight_decay("my_dense/bias", None)
    # Plain text, not regular expressions (they come from files)
    assert optimizers.AdamW(exclude_from_weight_decay=["b.as"])._use_weight_decay("dense/bias", None)


def test_clipping_limits_norms_and_values():
    g = np.array([3.0, 4.0])                      # norm 5
    small = np.array([0.3, 0.4])                  # norm 0.5
    assert optimizers.SGD(clipnorm=1.0)._clip([g, small])[0] == pytest.approx([0.6, 0.8])
    assert optimizers.SGD(clipnorm=1.0)._clip([g, small])[1] is small         # under the limit: untouched
    clipped = optimizers.SGD(global_clipnorm=2.5)._clip([g, np.zeros(3)])     # global norm 5 -> halved
    assert clipped[0] == pytest.approx([1.5, 2.0])
    assert optimizers.SGD(clipvalue=3.5)._clip([g])[0] == pytest.approx([3.0, 3.5])
    assert np.isnan(optimizers.SGD(global_clipnorm=1.0)._clip([np.array([np.inf, 1.0])])[0]).all()


# --- the moving average of the weights -------------------------------------------------------------

def test_finalize_puts_the_average_in_place_and_swap_is_reversible():
    params, grad_steps = random_problem(4, np.float64)
    cfg = {"learning_rate": 0.1, "momentum": 0.9, "use_ema": True, "ema_momentum": 0.7}
    optimizer = optimizers.SGD(**cfg)
    got = run(optimizer, params, grad_steps)
    raw, averages = twin_run("SGD", cfg, params, grad_steps)
    triples = [(k, got[k], None) for k in got]

    optimizer.swap_average_weights(triples)
    assert optimizer.average_swapped
    for k in got:
        np.testing.assert_allclose(got[k].ravel(), averages[k], rtol=1e-12)
        np.testing.assert_allclose(optimizer.get_state()[f"{k}/average"], averages[k], rtol=1e-12)
    optimizer.swap_average_weights(triples)
    for k in got:
        np.testing.assert_allclose(got[k].ravel(), raw[k], rtol=1e-12)

    optimizer.swap_average_weights(triples)        # finalize from the swapped state too
    optimizer.finalize_variable_values(triples)
    assert not optimizer.average_swapped
    for k in got:
        np.testing.assert_allclose(got[k].ravel(), averages[k], rtol=1e-12)


def test_apply_swaps_the_raw_weights_back_before_stepping():
    params, grad_steps = random_problem(3, np.float64)
    cfg = {"learning_rate": 0.1, "use_ema": True, "ema_momentum": 0.5}
    plain = run(optimizers.SGD(**cfg), params, grad_steps)
    optimizer = optimizers.SGD(**cfg)
    copies = {k: v.copy() for k, v in params.items()}
    for i, grads in enumerate(grad_steps):
        if i == 2:
            optimizer.swap_average_weights([(k, copies[k], None) for k in copies])
        optimizer.apply([(k, copies[k], grads[k]) for k in copies])
    for k in params:
        np.testing.assert_array_equal(copies[k], plain[k])


def test_fit_ends_with_the_averaged_weights():
    x, y = data()
    a = model(optimizers.SGD(0.1, momentum=0.9, use_ema=True, ema_momentum=0.9))
    seen = []

    class Keep(tinycnn.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(self.model.optimizer.slots["dense_out/kernel"][-1].copy())

    a.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[Keep()])
    np.testing.assert_array_equal(a.layers[-1].params["kernel"].ravel(), seen[-1])
    b = model(optimizers.SGD(0.1, momentum=0.9))
    b.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert not np.allclose(a.layers[-1].params["kernel"], b.layers[-1].params["kernel"])


# --- errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, message", [
    (lambda: optimizers.SGD(weight_decay=-1e-4),
     "SGD: invalid value for argument `weight_decay`: expected None or a float >= 0.0, received -0.0001"),
    (lambda: optimizers.Adam(clipnorm=0),
     "Adam: invalid value for argument `clipnorm`: expected None or a float > 0.0, received 0"),
    (lambda: optimizers.RMSprop(clipvalue=-1), "RMSprop: invalid value for argument `clipvalue`"),
    (lambda: optimizers.SGD(clipnorm=1.0, global_clipnorm=1.0),
     "SGD: only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set"),
    (lambda: optimizers.RMSprop(rho=1.0), "RMSprop: invalid value for argument `rho`: expected a float in [0, 1)"),
    (lambda: optimizers.RMSprop(momentum=-0.1), "RMSprop: invalid value for argument `momentum`"),
    (lambda: optimizers.RMSprop(epsilon=0), "RMSprop: invalid value for argument `epsilon`: expected a float > 0"),
    (lambda: optimizers.RMSprop(centered=1), "RMSprop: invalid value for argument `centered`: expected a bool"),
    (lambda: optimizers.AdamW(weight_decay=None), "AdamW: invalid value for argument `weight_decay`"),
    (lambda: optimizers.Adam(ema_momentum=1.5, use_ema=True),
     "Adam: invalid value for argument `ema_momentum`: expected a float in [0, 1], received 1.5"),
    (lambda: optimizers.Adam(use_ema=True, ema_overwrite_frequency=0),
     "Adam: invalid value for argument `ema_overwrite_frequency`: expected None or an int >= 1, received 0"),
    (lambda: optimizers.SGD(learning_rate={"class_name": "Nope", "config": {}}),
     "Invalid learning-rate schedule"),
    (lambda: optimizers.get("adagrad"), "Invalid value for argument `optimizer`: expected one of ['adam', 'adamw', "
                                        "'rmsprop', 'sgd']"),
    (lambda: optimizers.SGD(use_ema=False).swap_average_weights([]), "SGD: swapping in the moving average"),
    (lambda: optimizers.SGD(exclude_from_weight_decay="bias"),
     "SGD.exclude_from_weight_decay: invalid value for argument `var_names`: expected a list of str, received 'bias'"),
    (lambda: optimizers.SGD().exclude_from_weight_decay(var_list=np.zeros(3)),
     "SGD.exclude_from_weight_decay: invalid value for argument `var_list`: expected a list of parameter arrays"),
])
def test_bad_hyperparameters_name_optimizer_argument_and_value(make, message):
    with pytest.raises(ValueError) as info:
        make()
    assert message in str(info.value), str(info.value)


def test_unknown_argument_and_setting_a_scheduled_rate_are_type_errors():
    with pytest.raises(TypeError, match=r"RMSprop: unexpected keyword argument\(s\) \['amsgrad'\]"):
        optimizers.RMSprop(amsgrad=True)
    optimizer = optimizers.SGD(learning_rate=schedules.ExponentialDecay(0.1, 10, 0.5))
    with pytest.raises(TypeError, match="not settable"):
        optimizer.learning_rate = 0.01


def test_names_and_defaults_are_keras():
    assert isinstance(optimizers.get("RMSprop"), optimizers.RMSprop)
    rms = optimizers.get("rmsprop").get_config()
    assert (rms["learning_rate"], rms["rho"], rms["momentum"], rms["epsilon"], rms["centered"]) == \
        (0.001, 0.9, 0.0, 1e-7, False)
    adamw = optimizers.get("adamw").get_config()
    assert (adamw["learning_rate"], adamw["weight_decay"], adamw["beta_1"], adamw["beta_2"]) == \
        (0.001, 0.004, 0.9, 0.999)
    common = optimizers.get("sgd").get_config()
    assert {k: common[k] for k in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm", "use_ema",
                                   "ema_momentum", "ema_overwrite_frequency")} == {
        "weight_decay": None, "clipnorm": None, "clipvalue": None, "global_clipnorm": None, "use_ema": False,
        "ema_momentum": 0.99, "ema_overwrite_frequency": None}
    sgd = optimizers.get({"class_name": "SGD", "config": {"learning_rate": 0.2, "momentum": 0.5}})
    assert (sgd.learning_rate, sgd.momentum) == (0.2, 0.5)
    assert optimizers.RMSprop(centered=True).slot_names == ("velocity", "average_gradient")
    assert optimizers.RMSprop(momentum=0.9, use_ema=True).slot_names == ("velocity", "momentum", "average")


# --- through a model, and saved -------------------------------------------------------------------

def data(n=32, seed=0):
    gen = np.random.default_rng(seed)
    x = gen.standard_normal((n, 4))
    y = np.eye(2)[(x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)]
    return x, y


def model(optimizer, dtype="float64", seed=0):
    tinycnn.set_seed(seed)
    m = Sequential([Dense(6, activation="relu", input_shape=(4,), dtype=dtype, name="dense_in"),
                    Dense(2, activation="softmax", dtype=dtype, name="dense_out")])
    m.compile(optimizer=optimizer, loss="categorical_crossentropy")
    return m


@pytest.mark.parametrize("kind, cfg", some_cases(3, 6, 8, 12, 14))
def test_train_on_batch_follows_the_twin(kind, cfg):
    x, y = data()
    m = model(optimizers.OPTIMIZER_CLASSES[kind](**cfg))
    params = {key: value.copy() for key, value, _ in m._trainable()}
    grad_steps = []
    for i in range(3):
        xb, yb = x[8 * i:8 * i + 8], y[8 * i:8 * i + 8]
        m.compute_gradients(xb, yb)                 # the gradients train_on_batch will use
        grad_steps.append({key: grad.copy() for key, _, grad in m._trainable()})
        m.train_on_batch(xb, yb)
    want, _ = twin_run(kind, cfg, params, grad_steps)
    for key, value, _ in m._trainable():
        np.testing.assert_allclose(value.ravel(), want[key], rtol=1e-11, atol=1e-13, err_msg=key)


@pytest.mark.parametrize("make", [
    lambda: optimizers.RMSprop(0.01, momentum=0.5, centered=True, clipnorm=1.0),
    lambda: optimizers.AdamW(schedules.CosineDecay(0.0, 20, alpha=0.1, warmup_target=0.01, warmup_steps=4),
                             weight_decay=0.01, use_ema=True, ema_momentum=0.9),
    lambda: optimizers.SGD(schedules.CosineDecayRestarts(0.1, 3, m_mul=0.5), momentum=0.9, nesterov=True,
                           weight_decay=1e-3, global_clipnorm=1.0, use_ema=True, ema_overwrite_frequency=3),
    lambda: optimizers.Adam(schedules.PiecewiseConstantDecay([4, 8], [0.01, 0.005, 0.001]), clipvalue=0.5),
], ids=["rmsprop", "adamw-cosine-ema", "sgd-restarts-ema", "adam-piecewise"])
def test_saved_model_continues_training_exactly(make, tmp_path):
    x, y = data()
    a = model(make(), dtype="float32")
    if isinstance(a.optimizer, optimizers.AdamW):
        a.optimizer.exclude_from_weight_decay(var_names=["bias"])
    a.fit(x, y, batch_size=8, epochs=2, verbose=0)
    a.save(tmp_path / "m.npz")
    config = json.loads(bytes(np.load(tmp_path / "m.npz")["__config__"]).decode())
    assert config["compile"]["optimizer"]["config"] == a.optimizer.get_config()
    b = load_model(tmp_path / "m.npz")
    assert type(b.optimizer) is type(a.optimizer) and b.optimizer.get_config() == a.optimizer.get_config()
    assert b.optimizer.iterations == a.optimizer.iterations == 8
    assert b.optimizer.learning_rate == a.optimizer.learning_rate
    for m in (a, b):
        m.fit(x, y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    state_a, state_b = a.optimizer.get_state(), b.optimizer.get_state()
    assert sorted(state_a) == sorted(state_b)
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key])


def test_old_imports_still_work():
    from tinycnn.optimizers import OPTIMIZER_CLASSES, SGD, Adam, Optimizer, get  # noqa: F401
    import tinycnn.optimizers.schedules as S
    assert S is schedules and tinycnn.optimizers.schedules.CosineDecay is schedules.CosineDecay
    assert isinstance(get("adam"), Adam) and math.isclose(Adam().learning_rate, 1e-3)
