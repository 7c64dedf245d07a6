# One CPU-only image for every Mycelium Net process: `mycelium registry` and `mycelium node`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1

WORKDIR /app

# torch first, pinned, from PyTorch's CPU index: the default index resolves torch to a
# multi-GB CUDA build. pyproject pins the same version, so the next step keeps this one.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

COPY pyproject.toml README.md ./
COPY mycelium mycelium
COPY registry registry
COPY node node
COPY viz viz
COPY sim sim
# `mycelium peer`, `mycelium gossip` and `mycelium node` read configs/base.yaml by default.
COPY configs configs
RUN pip install . && useradd --create-home --uid 1000 mycelium && mkdir /data \
    && chown mycelium /data

USER mycelium
# 8000: the registry's HTTP API; 7000: a node's Flower server while it hosts its group.
EXPOSE 8000 7000
CMD ["mycelium", "--help"]
