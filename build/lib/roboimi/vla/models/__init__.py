"""Policy networks: vision backbones (`backbones/`) and action heads (`heads/`)."""
