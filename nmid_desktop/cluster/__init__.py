"""Work spread over a Ray cluster (optional extra ``cluster``): imported only when asked for."""
