"""Monitoring: alert rules evaluated as jobs start and end and by a monitor timer, and signed webhook
deliveries of those alerts to subscribers."""
