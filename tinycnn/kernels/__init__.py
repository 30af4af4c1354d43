"""Floor 1: Numba kernels on arrays.

Every function here is a plain ``@njit(cache=True)`` function on NumPy arrays: no classes, no state.
They are generic over float32 and float64 (Numba compiles one version per dtype on first call) and
trust their inputs: shapes and dtypes are checked once, one floor up, in the layers.

They are serial loops that release the GIL (``nogil=True``). Threads are added from outside:
``_util.by_rows`` runs a row-wise kernel on one slice of rows per thread, ``_util.sum_blocks`` a
sum over rows in fixed blocks, and the convolutions split the batch (``_threads.split_batch``).
None uses Numba's ``parallel=True`` (``_threads.py`` says why).

Reading order for a learner:

* ``conv.py``          im2col / col2im: how a convolution becomes one matrix product
* ``activations.py``   ReLU (fused with the bias), softmax, sigmoid, tanh, dropout
* ``pooling.py``       max pooling with argmax, average pooling
* ``normalization.py`` batch-norm moments and the per-channel affine map
* ``losses.py``        cross-entropy and focal loss from logits (log-sum-exp) and from probabilities
* ``optimizers.py``    Adam, AMSGrad, SGD and RMSprop updates, decoupled weight decay, weight averages, in place
* ``augment.py``       flips, bilinear resampling (rotation, translation) and contrast, with adjoints
* ``reference.py``     the same operations as plain textbook loops, for reading and for tests

The fast and the reference versions must agree; ``tests/test_kernels.py`` checks that they do.
"""
