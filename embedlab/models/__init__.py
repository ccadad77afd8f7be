"""The embedding models: the contract around every backbone, smallnet, losses, saving, devices."""
