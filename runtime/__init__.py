"""Galaxy runtime: shipped inside every bundle; depends only on torch and safetensors."""
