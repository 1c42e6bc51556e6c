# syntax=docker/dockerfile:1
# One image for the three lorafleet processes:
#   operator        lorafleet operator            (the default CMD)
#   installer       lorafleet-install ...         (install Jobs' command)
#   serving app     ray start ... + lorafleet_serving.ray_app:build_app (RayService head/workers)
#
# Build:  docker build -t lorafleet/lorafleet:0.1.0 .
# The Python bases are build arguments pinned to a patch release. The final stage's base must
# have the builder's interpreter at the same path, so the venv's python symlink resolves:
# python:X-bookworm and python:X-slim-bookworm both have /usr/local/bin/python3. Without Docker
# Hub, scripts/image.sh builds a local equivalent (Debian's python3.11, /usr/bin/python3) and
# passes it as both: --build-arg BASE_IMAGE=... --build-arg BUILDER_IMAGE=...
#
# Layers: the dependencies are one big layer keyed only by the `[project] dependencies` list
# (a change elsewhere in pyproject.toml or in the code reuses it from the build cache); the
# project's own code is the small last layer.
ARG BUILDER_IMAGE=python:3.11.14-bookworm
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- requirements: the dependency list alone, so the next stage's cache key is that list.
FROM ${BUILDER_IMAGE} AS requirements
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c 'import tomllib; deps = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(deps))' > /requirements.txt

# ---- deps: a venv with the dependencies (not the package). Compilers of the builder image may
# serve sdists; none of this stage but /opt/lorafleet reaches the image. No pip cache is kept
# (PIP_NO_CACHE_DIR): the layer cache is the cache, and any builder runs this file.
FROM ${BUILDER_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY --from=requirements /requirements.txt /opt/lorafleet/requirements.txt
# torch from PyPI on linux/amd64 bundles CUDA.
RUN python3 -m venv /opt/lorafleet \
 && /opt/lorafleet/bin/python -m pip install --upgrade pip setuptools wheel \
 && /opt/lorafleet/bin/python -m pip install --progress-bar off -r /opt/lorafleet/requirements.txt

# ---- package: the project's own code as a wheel, installed beside the dependencies under
# /package (pip --root), so the final stage copies just these files: the console scripts (the
# venv's python in their shebang), the two packages and their .pyc files. The wheel is also
# installed into this stage's venv to check that its commands start.
FROM deps AS package
COPY pyproject.toml README.md /src/
COPY operator/ /src/operator/
COPY serving/ /src/serving/
RUN /opt/lorafleet/bin/python -m pip wheel --no-deps --no-build-isolation -w /wheels /src \
 && /opt/lorafleet/bin/python -m pip install --no-deps --root /package /wheels/lorafleet-*.whl \
 && /opt/lorafleet/bin/python -m pip install --no-deps /wheels/lorafleet-*.whl \
 && /opt/lorafleet/bin/lorafleet --help > /dev/null \
 && /opt/lorafleet/bin/lorafleet-install --help > /dev/null

# ---- final: the slim base, a non-root user, the dependency venv (one big layer), the code
# (one small layer). No compilers, no pip cache; nothing written outside HOME and TMPDIR at
# run time (.pyc files are compiled at install), so a read-only root filesystem works.
FROM ${BASE_IMAGE}
# wget: KubeRay's Ray head/worker probes run `bash -c "wget ... | grep success"`.
RUN if ! command -v wget > /dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends wget \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --system --gid 10001 lorafleet \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/lorafleet --create-home \
      --shell /bin/bash lorafleet \
 && echo 'export PATH=/opt/lorafleet/bin:$PATH' > /etc/profile.d/lorafleet.sh
ENV PATH=/opt/lorafleet/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/lorafleet
USER 10001:10001
WORKDIR /home/lorafleet
CMD ["lorafleet", "operator"]
# Last, so a change to the code rebuilds only the last layer (COPY ignores USER: root-owned).
COPY --from=deps /opt/lorafleet /opt/lorafleet
COPY --from=package /package/ /
