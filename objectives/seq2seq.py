"""Task fine-tuning of the encoder-decoder: cross-entropy on every target token.

Batches are the encoder-decoder keys of models/encdec.py (`inputs*`, `targets*`), one example per
row (data/tasks.py); the decoder sees the targets shifted right within their segment. The loss is
span corruption's (objectives/span_corruption.py: nats per target token, EOS included; bits per
byte over the targets' text), only the data differ, so the two share one function.
"""

from objectives.span_corruption import make_loss_fn

__all__ = ["make_loss_fn"]
