"""Reading users' data: files in every format (files), images (images), batches (collators), blocks (packing)."""

# Here rather than in collators.py, so that the chat format (which serve.py imports) can mark prompt tokens
# without importing the image collators, and with them PIL and datasets.
LABEL_PAD = -100  # ignored by the loss
