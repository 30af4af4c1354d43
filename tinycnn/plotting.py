"""Training curves as a PNG: ``plot_history(history, 'curves.png')``.

matplotlib is an optional extra (``pip install "tinycnn[plot]"``); it is imported only when a plot
is drawn. The figure is drawn with matplotlib's object-oriented API on an Agg canvas: no window
opens, it works on a machine without a display, and the pyplot state (the backend an interactive
session chose, its open figures) is left untouched.
"""
import math
import os

_INSTALL_HINT = ('plot_history needs matplotlib, an optional extra of tinycnn. Install it with '
                 '`pip install "tinycnn[plot]"` or `pip install matplotlib`')


def _matplotlib():
    """``(Figure, FigureCanvasAgg)``, or an ImportError that says how to get matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return Figure, FigureCanvasAgg


def _curves(history):
    """``(epochs, {name: values})`` from a History or its ``.history`` dict, checked."""
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise TypeError(f"plot_history: `history` must be the History returned by fit (or its .history dict), "
                        f"received {type(history).__name__}")
    curves = {str(key): [float(v) for v in values] for key, values in logs.items()}
    if not curves or not any(curves.values()):
        raise ValueError("plot_history: `history` holds no epochs; train first: history = model.fit(...)")
    n = max(len(values) for values in curves.values())
    epochs = getattr(history, "epoch", None)
    if not epochs or len(epochs) != n:
        epochs = range(n)
    return [e + 1 for e in epochs], curves


def plot_history(history, path, title=None):
    """Plot loss and every metric per epoch, training beside validation, and save a PNG.

    Parameters
    ----------
    history : History or dict
        What ``model.fit`` returns, or its ``history.history`` dict ``{name: [value per epoch]}``.
    path : str or os.PathLike
        Where to write the PNG.
    title : str, optional
        A title over the whole figure.

    Returns
    -------
    str
        ``path``.

    Notes
    -----
    One panel per quantity: ``loss`` first, then each metric in the order logged, with its
    ``val_`` twin drawn in the same panel as a dashed line. ``learning_rate`` (from
    ``ReduceLROnPlateau``) gets its own panel on a log scale. Epochs are counted from 1, as the
    progress display prints them. An undefined value (NaN, e.g. the AUC of a batch with one class)
    leaves a gap in its line.

    Raises
    ------
    ImportError
        If matplotlib is not installed; the message says how to install it.
    """
    epochs, curves = _curves(history)
    path = os.fspath(path)
    Figure, FigureCanvasAgg = _matplotlib()

    names = [key for key in curves if not key.startswith("val_")]
    names += [key[4:] for key in curves if key.startswith("val_") and key[4:] not in curves]  # val_ only
    names.sort(key=lambda key: (key != "loss", key == "learning_rate"))  # loss first, learning rate last
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows), layout="constrained")
    FigureCanvasAgg(figure)
    for i, name in enumerate(names):
        axes = figure.add_subplot(rows, columns, i + 1)
        if name in curves:
            label = "learning rate" if name == "learning_rate" else "training"
            axes.plot(epochs[:len(curves[name])], curves[name], marker="o", markersize=3, label=label)
        if f"val_{name}" in curves:
            values = curves[f"val_{name}"]
            axes.plot(epochs[:len(values)], values, marker="o", markersize=3, linestyle="--", label="validation")
        if name == "learning_rate":
            axes.set_yscale("log")
        axes.set_title(name.replace("_", " "))
        axes.set_xlabel("epoch")
        axes.grid(True, alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
        if name != "learning_rate":
            axes.legend()
    if title:
        figure.suptitle(title)
    figure.savefig(path, format="png", dpi=100)
    return path
