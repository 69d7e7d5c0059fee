"""One module per method. Federated methods run inside the Flower ServerApp."""
