"""The model graph and its execution plan.

A model is a graph of nodes (``layers/node.py``): each node is one call of a layer on the outputs
of earlier nodes. Before the first batch, the graph is compiled once into a :class:`Plan`, an
ordered list of :class:`Step` objects:

* **order**: every node after the nodes it reads from (a topological order, the same on every run);
* **slots**: each value the forward pass produces gets a slot number; a step reads its input slots
  and writes its output slot. Inputs come first: slot ``i`` is the model's ``i``-th input;
* **shared layers**: a layer called at two places runs its second call through a *twin* (same
  weights, own buffers and saved activations, ``Layer.twin``); after backward the twin's gradients
  are added into the layer's, in step order;
* **gradients**: which steps must pass a gradient to their inputs (only those with something
  trainable upstream); where a value feeds several steps (a fork, e.g. a residual connection),
  their gradients are added in reverse step order, which is the same on every run;
* **fusion**: a Winograd ``Conv2D`` whose only reader is a 2x2 ``MaxPooling2D`` becomes one step
  that computes the pooled output directly (``Conv2D.forward_pooled``; bit-identical to the two
  layers one after the other, without storing the full-size output). This is a rewrite of the plan,
  decided here once, not at every call;
* **folding** (inference only): a ``BatchNormalization`` whose only input is a convolution step's
  output, read by nothing else, is in inference one per-channel affine map, ``x * scale + shift``.
  A prediction (``run(..., fold=True)``, which ``predict``, ``evaluate`` and ``model(x)`` ask for)
  then hands it to the convolution, whose output pass applies it after bias and ReLU (and after the
  pooling of a fused step) while the values are in cache, and skips the batch-norm step: the same
  float32 arithmetic, one pass over the output less (``tests/test_fusion.py``). The steps and slots
  stay as they are; training, Grad-CAM and gradient checks run every step.

Forward and backward are then plain loops over the steps.
"""


def topological_nodes(inputs, outputs, where):
    """The nodes that lead from ``inputs`` to ``outputs`` (lists of symbolic tensors), each listed
    after every node it reads from: a depth-first walk back from the outputs, inputs in order.

    Raises ValueError if an output depends on an input that is not in ``inputs``.
    """
    order, done = [], set()
    for out in outputs:
        stack = [(out.node, 0)]
        while stack:
            node, i = stack.pop()
            if id(node) in done:
                continue
            if i < len(node.inputs):
                stack.append((node, i + 1))
                child = node.inputs[i].node
                if id(child) not in done:
                    stack.append((child, 0))
            else:
                done.add(id(node))
                order.append(node)
    given = {id(t.node) for t in inputs}
    for node in order:
        if node.is_input and id(node) not in given:
            raise ValueError(f"{where}: the output depends on the input '{node.layer.name}', which is not among "
                             f"the model's `inputs` {[t.name for t in inputs]}")
    return order


class Step:
    """One step of a plan: ``values[output] = layer.forward(values[inputs])``.

    ``layer`` is the object that runs (the model's layer, or a twin of it for a second call);
    ``pool`` is the MaxPooling2D computed inside a fused convolution step, else None.
    """

    __slots__ = ("layer", "owner", "inputs", "output", "pool", "needs_input_grad", "has_params", "pooled_inside")

    def __init__(self, layer, owner, inputs, output, pool=None):
        self.layer, self.owner, self.inputs, self.output, self.pool = layer, owner, inputs, output, pool
        self.has_params = bool(owner.params)
        self.needs_input_grad = False
        self.pooled_inside = False  # whether the last forward computed the pooling inside the convolution

    def forward(self, values, training):
        if self.layer.multi_input:
            return self.layer.forward([values[i] for i in self.inputs], training=training)
        x = values[self.inputs[0]]
        if self.pool is not None:
            # The convolution may decline for this call (a small inference batch runs im2col, see
            # Conv2D._inference_implementation): then the two layers run one after the other.
            self.pooled_inside = self.layer.pools_inside(x.shape[0], training)
            if self.pooled_inside:
                return self.layer.forward_pooled(x, training=training)
            return self.pool.forward(self.layer.forward(x, training=training), training=training)
        return self.layer.forward(x, training=training)

    def forward_folded(self, values, affine):
        """Inference forward with a folded batch normalization's ``affine = (scale, shift)`` applied
        by the convolution's output pass, or None when this call cannot (its pooling would run after
        the convolution, and must come before the affine map, whose scale may be negative)."""
        x = values[self.inputs[0]]
        if self.pool is None:
            return self.layer.forward(x, training=False, affine=affine)
        self.pooled_inside = self.layer.pools_inside(x.shape[0], False)
        return self.layer.forward_pooled(x, training=False, affine=affine) if self.pooled_inside else None

    def backward(self, grad, from_logits=False):
        """Gradients with respect to the inputs (a list, one per input slot; None where not needed)."""
        self.layer.input_grad_needed = self.needs_input_grad
        if self.pool is not None and not self.pooled_inside:
            self.pool.input_grad_needed = True
            grads = self.layer.backward(self.pool.backward(grad))
        elif self.pool is not None:
            grads = self.layer.backward_pooled(grad)
        elif from_logits:
            grads = self.layer.backward_from_logits(grad)
        else:
            grads = self.layer.backward(grad)
        return grads if self.layer.multi_input else [grads]

    def describe(self):
        """``conv2d (Conv2D, winograd) + max_pooling2d (MaxPooling2D, fused)``: how summaries show it."""
        implementation = getattr(self.layer, "implementation", None)  # a convolution's Im2col, Winograd, ...
        how = f", {type(implementation).__name__}" if implementation is not None else ""
        text = f"{self.owner.name} ({type(self.owner).__name__}{how})"
        if self.pool is not None:
            text += f" + {self.pool.name} ({type(self.pool).__name__}, computed inside)"
        return text


class Plan:
    """The steps that compute ``output`` from ``inputs`` (see the module docstring).

    Parameters
    ----------
    inputs : list of SymbolicTensor
        The model's inputs; their values fill slots ``0 .. len(inputs) - 1``.
    output : SymbolicTensor
    fuse : bool
        Apply the convolution + pooling rewrite where it is exact.
    observe : collection of Node
        Nodes whose outputs must exist as values (Grad-CAM reads one): never fused away.
    """

    def __init__(self, inputs, output, fuse=True, observe=()):
        nodes = topological_nodes(inputs, [output], "Plan")
        readers = {}
        for node in nodes:
            for t in node.inputs:
                readers.setdefault(id(t.node), []).append(node)
        observed = {id(n) for n in observe} | {id(output.node)}
        self.slot_of = {id(t.node): i for i, t in enumerate(inputs)}
        self.n_inputs = len(inputs)
        self.steps, self.twins = [], []
        seen_layers, absorbed = set(), set()
        for node in nodes:
            if node.is_input or id(node) in absorbed:
                continue
            pool = None
            after = readers.get(id(node), [])
            if (fuse and len(after) == 1 and id(node) not in observed and id(after[0]) != id(output.node)
                    and hasattr(node.layer, "fuses_with") and node.layer.fuses_with(after[0].layer)):
                pool = after[0]
                absorbed.add(id(pool))
            layer = node.layer
            if id(layer) in seen_layers:  # a second call of a shared layer runs through a twin
                runner = layer.twin()
                self.twins.append((layer, runner))
            else:
                runner = layer
                seen_layers.add(id(layer))
            out_node = pool if pool is not None else node
            self.slot_of[id(out_node)] = len(self.slot_of)
            # a fused pooling layer never runs itself: the convolution computes its output
            self.steps.append(Step(runner, layer, [self.slot_of[id(t.node)] for t in node.inputs],
                                   self.slot_of[id(out_node)], None if pool is None else pool.layer))
        self.n_slots = len(self.slot_of)
        self.output = self.slot_of[id(output.node)]
        self.folds = self._foldable(observed) if fuse else {}
        self._folded = False  # whether the last run folded a batch normalization (then no backward)
        # A slot needs a gradient if something trainable produced it or lies upstream of it.
        needs = [False] * self.n_slots
        for step in self.steps:
            step.needs_input_grad = any(needs[i] for i in step.inputs)
            needs[step.output] = step.has_params or step.needs_input_grad
        self.needs_grad = needs

    def _foldable(self, observed):
        """``{k: j}``: step ``j`` is a batch normalization that step ``k``, a convolution, can apply in
        an inference call (see the module docstring): j reads only k's output, and nothing else reads
        it; neither value is the model's output or observed."""
        readers = {}
        for j, step in enumerate(self.steps):
            for i in step.inputs:
                readers.setdefault(i, []).append(j)
        kept = {self.slot_of[i] for i in observed if i in self.slot_of} | {self.output}
        folds = {}
        for k, step in enumerate(self.steps):
            after = readers.get(step.output, [])
            if len(after) != 1 or not hasattr(step.layer, "folds_norm") or step.output in kept:
                continue
            norm = self.steps[after[0]]
            if norm.inputs == [step.output] and norm.output not in kept and step.layer.folds_norm(norm.layer):
                folds[k] = after[0]
        return folds

    @property
    def head(self):
        """The step that produces the output."""
        return self.steps[-1]

    def run(self, xs, training, until=None, start=0, values=None, fold=False):
        """Forward through steps ``start`` to ``until`` (not included): all slot values.

        From the beginning, ``xs`` fills the input slots; to go on from step ``start``, pass the
        ``values`` an earlier run left there instead (see :meth:`live_values`). ``fold`` (inference
        only, a whole run): fold batch normalizations into the convolutions before them (module
        docstring); a folded slot then holds the normalized values, and no backward pass may follow.
        """
        if values is None:
            values = [None] * self.n_slots
            values[:self.n_inputs] = xs
        end = len(self.steps) if until is None else until
        fold = fold and not training and start == 0 and end == len(self.steps)
        skipped = set()
        for k in range(start, end):
            step = self.steps[k]
            if k in skipped:  # its convolution applied it: the value passes through
                values[step.output] = values[step.inputs[0]]
                continue
            if fold and k in self.folds:
                out = step.forward_folded(values, self.steps[self.folds[k]].layer.inference_affine())
                if out is not None:
                    values[step.output] = out
                    skipped.add(self.folds[k])
                    continue
            values[step.output] = step.forward(values, training)
        self._folded = bool(skipped)
        return values

    def live_values(self, values, position):
        """Copies of the values that steps from ``position`` on still read (others None): what a
        later :meth:`run` needs to go on from there. Copies, because a step writes its output into
        a buffer that its next call overwrites."""
        needed = {i for step in self.steps[position:] for i in step.inputs} | {self.output}
        return [v.copy() if v is not None and i in needed else None for i, v in enumerate(values)]

    def forward(self, xs, training, fold=False):
        """The output for the list of input batches ``xs`` (``fold``: see :meth:`run`)."""
        return self.run(xs, training, fold=fold)[self.output]

    def backward(self, grad, from_logits=False, keep=()):
        """Backward from ``grad`` (the gradient of the output, or of the head's logits when
        ``from_logits``); every step stores its parameter gradients in its layer's ``grads``.
        Returns ``{slot: gradient}`` for the slots in ``keep`` (and the inputs that need one)."""
        if self._folded:
            raise RuntimeError("Plan.backward: the last forward pass folded batch normalizations into convolutions "
                               "(an inference call); run the forward pass again without fold=True")
        grads = [None] * self.n_slots
        grads[self.output] = grad
        last = len(self.steps) - 1
        for k in range(last, -1, -1):
            step = self.steps[k]
            g = grads[step.output]
            if g is None or not (step.has_params or step.needs_input_grad):
                continue
            if step.output not in keep:
                grads[step.output] = None
            for slot, gi in zip(step.inputs, step.backward(g, from_logits and k == last)):
                if gi is None or not self.needs_grad[slot] and slot not in keep:
                    continue
                grads[slot] = gi if grads[slot] is None else grads[slot] + gi
        for layer, twin in self.twins:  # in step order: the same sum on every run
            for key, value in twin.grads.items():
                layer.grads[key] += value
        return {slot: grads[slot] for slot in keep}

    def describe(self):
        """One line per step: ``step  inputs -> output  what runs``."""
        lines = []
        folded_into = {j: k for k, j in self.folds.items()}
        for k, step in enumerate(self.steps):
            reads = ", ".join(f"#{i}" for i in step.inputs)
            folded = f"  (folded into step {folded_into[k]} in inference)" if k in folded_into else ""
            lines.append(f"{k:>4}  {reads:>12} -> #{step.output:<4} {step.describe()}{folded}")
        return lines
