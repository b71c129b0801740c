# execbus image: one image, three roles (worker, agent, CLI), chosen by the command.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /opt/execbus
COPY pyproject.toml README.md ./
COPY src ./src
# A fixed uid and gid (10001): the agent gives its Unix socket to this group
# (--socket-group 10001 --socket-mode 0660), so unprivileged workers can use it.
# /run/execbus (the socket's directory, a volume shared with the workers) is
# theirs, so an unprivileged agent can create the socket there.
RUN pip install ".[console]" \
 && groupadd --system --gid 10001 execbus \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin execbus \
 && install -d -m 0750 -o 10001 -g 10001 /run/execbus

# The worker needs no privileges.
FROM base AS worker
USER 10001:10001
ENTRYPOINT ["execbus"]
CMD ["worker"]

# The agent runs unprivileged too, unless asked: as root (`--user 0:0`, compose
# EXECBUS_AGENT_USER=0:0) it can run commands as other users and drive runc.
FROM base AS agent
RUN apt-get update \
 && apt-get install -y --no-install-recommends runc util-linux \
 && rm -rf /var/lib/apt/lists/*
USER 10001:10001
ENTRYPOINT ["execbus"]
CMD ["agent", "--listen", "unix:///run/execbus/agent.sock"]
