"""Reading users' data: files in every format (files), images (images), batches (collators), blocks (packing)."""
