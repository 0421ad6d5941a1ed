"""Below the graph layer: models as bytes (protobuf's 2 GiB cap), onnxruntime sessions on a named
provider, the inputs a model is fed and how they are batched into calls."""
