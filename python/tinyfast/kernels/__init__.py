"""Fused kernels for distillation as ``torch.library`` custom ops (namespace ``tinyfast::``), one
module per op: the op, its Triton kernel and its pure-torch reference side by side. An op launches
its Triton kernel on CUDA (and on the CPU under Triton's interpreter, ``TRITON_INTERPRET=1``) and
runs torch code everywhere else (see ``_triton``).

- ``attention_distill_loss``: TinyBERT's attention MSE from queries and keys, tile by tile,
  never storing an L x L score tensor;
- ``soft_cross_entropy``: the prediction loss / FastBERT branch KL over many heads at once;
- ``exit_entropy``: softmax, normalized entropy and the exit decision per row.

Each op is imported from its module (``from tinyfast.kernels.exit_entropy import exit_entropy``);
the package re-exports nothing, since every op shares its module's name.
"""
