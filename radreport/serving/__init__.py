"""Running the model server: the CPU tritonserver launcher used by the local stack and tests."""
