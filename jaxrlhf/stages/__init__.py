"""Training stages: each turns a config into a trained model in its output_dir."""
