"""The bundled offline models: training scripts and the quality check that backs the model card."""
