"""Thin Flower wiring: the ServerApp and ClientApp over fedpress's plain PyTorch task code."""
