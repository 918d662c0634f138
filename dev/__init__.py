"""Development tooling: the local Azurite, the sample data generator and the demo."""
