"""Agentplane's Python client: start runs and follow them live.

    from agentplane import Client

    client = Client("https://api.example.com", api_key="agp_...")
    run = client.start_run(agent_id="...", input="What is 6*7?")
    with client.stream(run["id"]) as stream:
        for event in stream:
            if event.type == "message.delta":
                print(event.data["text"], end="", flush=True)
            elif event.type == "approval.requested":
                stream.approve()
            elif event.type == "run.finished":
                print("\\n", event.data["status"])

The stream reconnects by itself after a dropped connection and resumes from the last event it received:
no event is lost or repeated. The protocol is in docs/streaming.md.
"""

from agentplane.client import AgentplaneError, Client, Event, RunStream, SseStream

__all__ = ["AgentplaneError", "Client", "Event", "RunStream", "SseStream"]
