# syntax=docker/dockerfile:1
# One image for the three lorafleet processes:
#   operator        lorafleet operator            (the default CMD)
#   installer       lorafleet-install ...         (install Jobs' command)
#   serving app     ray start ... + lorafleet_serving.app:build_app (RayService head/workers)
#
# Build:  docker build -t lorafleet/lorafleet:0.1.0 .
# The Python base is pinned to a patch release; both stages use the same one so the venv's
# interpreter path (/usr/local/bin/python3.11) exists in the final stage.
ARG PYTHON_VERSION=3.11.14

# ---- builder: compilers may be needed by sdists; none of this stage reaches the image.
FROM python:${PYTHON_VERSION}-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/lorafleet \
 && /opt/lorafleet/bin/python -m pip install --upgrade pip setuptools wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ ./operator/
COPY serving/ ./serving/
# The package's own install step (scripts/venv.sh installs the same dependency list); not
# editable, so the image does not need /src. torch from PyPI on linux/amd64 bundles CUDA.
RUN /opt/lorafleet/bin/python -m pip install . \
 && /opt/lorafleet/bin/lorafleet --help > /dev/null \
 && /opt/lorafleet/bin/lorafleet-install --help > /dev/null

# ---- final: the slim base, the venv, a non-root user; no compilers, no pip cache.
FROM python:${PYTHON_VERSION}-slim-bookworm
# wget: KubeRay's Ray head/worker probes run `bash -c "wget ... | grep success"`.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 lorafleet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/lorafleet --create-home \
      --shell /bin/bash lorafleet \
 && echo 'export PATH=/opt/lorafleet/bin:$PATH' > /etc/profile.d/lorafleet.sh
COPY --from=builder /opt/lorafleet /opt/lorafleet
ENV PATH=/opt/lorafleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/lorafleet
USER 10001:10001
WORKDIR /home/lorafleet
CMD ["lorafleet", "operator"]
