"""infera's Kubernetes operator: reconciles InferenceService resources into serving infrastructure."""

__version__ = "0.1.0"
