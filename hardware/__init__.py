"""Ground floor: devices, model files, hardware profiles and the YAML loading they share."""
