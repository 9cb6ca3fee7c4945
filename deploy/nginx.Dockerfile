# nginx from Debian's packages with deploy/nginx.conf: the buffering proxy in front of the service
# (docs/service.md, "Slow clients: nginx in front"). deploy/compose.yaml builds and runs it beside the
# service, in the service's network namespace; by hand, from the repository root:
#
#   docker build -t ticket-classifier-nginx:0.1.0 -f deploy/nginx.Dockerfile deploy
#   docker run -d --name ticketclf -p 8000:8080 -v "$PWD/runs/model:/model:ro" ticket-classifier:0.1.0 \
#       ticketclf serve --host 127.0.0.1 --port 8000
#   docker run -d --name ticketclf-nginx --network container:ticketclf ticket-classifier-nginx:0.1.0
#
# Any Debian bookworm image will do as the base (a mirror on an internal registry, say).
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/*
COPY nginx.conf /etc/nginx/nginx.conf

EXPOSE 8080
# SIGQUIT: nginx's graceful stop (answers in flight finish); SIGTERM would drop them.
STOPSIGNAL SIGQUIT
# The master runs as root to open the logs and starts its worker as www-data (nginx.conf, `user`);
# /tmp is the only place it writes (pid, temporary files): the root filesystem may be read-only.
CMD ["nginx", "-p", "/tmp/", "-c", "/etc/nginx/nginx.conf"]
