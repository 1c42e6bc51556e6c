"""lorafleet serving: installer and Ray Serve app (engine, adapter cache, batching, HTTP API)."""
