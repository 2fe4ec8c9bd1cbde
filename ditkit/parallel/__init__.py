"""Beyond one device: sequence parallelism (Ulysses, ring, USP), CFG and data parallelism for inference, on a
torch.distributed device mesh (gloo on CPU, nccl on CUDA)."""
