"""The optimization service (`evo serve`): REST + WebSocket API, dashboard, keys, audit."""
