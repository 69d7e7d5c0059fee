"""fedpress: federated fine-tuning of LLMs with little communication and client memory."""

__version__ = "0.1.0"
