"""Azure Functions entry point (Python v2 model): triggers only; the work is in `remediate`."""

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
