"""The Functions Blueprints, one module per area. Each trigger function is a thin adapter over `shared`."""
