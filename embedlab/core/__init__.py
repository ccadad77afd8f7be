"""The foundation every stage reads: params and their schema, the backbone registry, the file layout, errors,
atomic writes, how TensorFlow runs."""
