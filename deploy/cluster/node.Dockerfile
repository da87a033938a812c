# A Swarm node for the multi-node cluster on one machine (docs/multinode.md):
# Debian's Docker engine on a debootstrap bookworm minbase, built from nothing
# by deploy/cluster/build-node-image.sh.
ARG NODE_BASE=inferno-node-base:bookworm
FROM ${NODE_BASE}
COPY deploy/cluster/node-entrypoint.sh /usr/local/bin/inferno-node
RUN chmod 0755 /usr/local/bin/inferno-node
VOLUME /var/lib/docker
ENTRYPOINT ["/usr/local/bin/inferno-node"]
CMD []
