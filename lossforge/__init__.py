"""lossforge: discover robust loss functions by genetic programming."""
