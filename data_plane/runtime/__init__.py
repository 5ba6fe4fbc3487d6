"""The agent runtime: a pure core (``core``) and the adapters that give it IO (``adapters``)."""
