"""The Functions app: one Blueprint per area, registered here and nothing else."""

import azure.functions as func

from functions import activation, campaign, catalog, ingestion, monitoring, openapi, segmentation

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(ingestion.bp)
app.register_functions(catalog.bp)
app.register_functions(segmentation.bp)
app.register_functions(activation.bp)
app.register_functions(campaign.bp)
app.register_functions(monitoring.bp)
app.register_functions(openapi.bp)
