"""Local mode: ``lorafleet up`` and ``lorafleet status`` on one machine, without Kubernetes.

The same manifests, the same installer (``lorafleet-install``, run as a subprocess) and the same
serving app (deployed to a local Ray through the dashboard's REST API, as KubeRay does) as on a
cluster. Modules:

- :mod:`.manifests`: read and validate BaseModel/LoraAdapter manifests from a folder.
- :mod:`.install`: run the installer for one object and read its report.
- :mod:`.ray_head`: start and stop a local Ray head (only the processes it started; every
  listener on 127.0.0.1, token authentication on).
- :mod:`.ray_token`: the Ray token of a head: made per start, a private file, a Bearer header.
- :mod:`.serve_rest`: the Ray dashboard's Serve REST API (deploy a config, wait for RUNNING).
- :mod:`.state`: ``HOME/state.json``, what ``lorafleet status`` prints.
- :mod:`.up` / :mod:`.status`: the two subcommands.

Nothing here imports torch, transformers or peft.
"""
