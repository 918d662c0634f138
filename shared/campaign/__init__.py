"""The simulated Campaign: the consumer of the Data Landing Zone."""
